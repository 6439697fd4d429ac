"""Shared mnist1d data, model and training loop of the example scripts.

Used by ``examples/lrg_mnist1d.py`` (the LRG-Adam vs Adam experiment) and
``examples/compare_optimizers.py`` (the optimizer comparison). Everything here is
plain JAX / Flax Linen / optax; the dataset is generated offline with
``mnist1d.data.make_dataset`` (never downloaded).
"""

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

# 3000 samples with train_split = 2/3 give the README's 2000 train / 1000 test split.
DEFAULT_NUM_SAMPLES = 3000
DEFAULT_TRAIN_SPLIT = 2 / 3
DEFAULT_DATA_SEED = 42


@dataclasses.dataclass(frozen=True)
class Mnist1d:
    """mnist1d arrays (float32 inputs, int32 labels) and the arguments that built them."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    args: dict[str, Any]


def load_mnist1d(
    num_samples: int = DEFAULT_NUM_SAMPLES,
    train_split: float = DEFAULT_TRAIN_SPLIT,
    seed: int = DEFAULT_DATA_SEED,
) -> Mnist1d:
    """Generates mnist1d offline with ``make_dataset`` (deterministic for a given seed).

    ``num_samples`` must be a multiple of 10 (samples per class = num_samples // 10).
    """
    if num_samples % 10 or num_samples < 20:
        raise ValueError(f"num_samples must be a multiple of 10 and >= 20, got {num_samples}")
    from mnist1d.data import get_dataset_args, make_dataset  # imports requests at load

    args = get_dataset_args()
    args.num_samples = num_samples
    args.train_split = train_split
    args.seed = seed
    data = make_dataset(args)
    recorded = {k: v for k, v in get_dataset_args(as_dict=True).items() if k != "url"}
    recorded.update(num_samples=num_samples, train_split=train_split, seed=seed)
    recorded.update(
        generator="mnist1d.data.make_dataset (offline, no download)",
        n_train=int(len(data["y"])),
        n_test=int(len(data["y_test"])),
        test_class_counts=np.bincount(data["y_test"], minlength=10).tolist(),
    )
    return Mnist1d(
        x=np.asarray(data["x"], np.float32),
        y=np.asarray(data["y"], np.int32),
        x_test=np.asarray(data["x_test"], np.float32),
        y_test=np.asarray(data["y_test"], np.int32),
        args=recorded,
    )


def _torch_uniform(fan_in: int) -> Callable[..., jax.Array]:
    """torch.nn.Linear's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for W and b."""
    bound = 1.0 / np.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class MLP(nn.Module):
    """40 -> 128 -> ReLU -> 64 -> ReLU -> 10 (14,154 parameters), torch-like init."""

    hidden: Sequence[int] = (128, 64)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        widths = (*self.hidden, self.num_classes)
        for i, width in enumerate(widths):
            fan_in = x.shape[-1]
            x = nn.Dense(
                width, kernel_init=_torch_uniform(fan_in), bias_init=_torch_uniform(fan_in)
            )(x)
            if i < len(widths) - 1:
                x = nn.relu(x)
        return x


MODEL = MLP()


def init_params(seed: int, input_dim: int = 40) -> Any:
    """Initial MLP parameters for ``seed`` (a Flax ``{'Dense_i': {'bias', 'kernel'}}`` dict)."""
    return MODEL.init(jax.random.key(seed), jnp.zeros((1, input_dim), jnp.float32))["params"]


def torch_order_flatten(params: Any) -> tuple[jax.Array, Callable[[jax.Array], Any]]:
    """Flattens Dense params in torch order and layout (``flatten_fn`` for ``lowrank.lrg``).

    torch's ``nn.Sequential`` registers ``weight`` (out, in) then ``bias`` for each
    layer in order; Flax sorts keys (``bias`` first) and stores kernels as (in, out).
    """
    names = sorted(params, key=lambda name: int(name.rsplit("_", 1)[-1]))
    parts = []
    for name in names:
        parts.append(params[name]["kernel"].T.reshape(-1))
        parts.append(params[name]["bias"].reshape(-1))
    vector = jnp.concatenate(parts)

    def unflatten(v: jax.Array) -> Any:
        out, start = {}, 0
        for name in names:
            fan_in, fan_out = params[name]["kernel"].shape
            kernel = v[start : start + fan_in * fan_out].reshape(fan_out, fan_in).T
            start += fan_in * fan_out
            out[name] = {"bias": v[start : start + fan_out], "kernel": kernel}
            start += fan_out
        return out

    return vector, unflatten


def batch_loss(params: Any, x: jax.Array, y: jax.Array, w: jax.Array) -> jax.Array:
    """Mean cross-entropy over the samples with weight 1 (padding rows have weight 0)."""
    logits = MODEL.apply({"params": params}, x)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)


def batch_indices(n: int, batch_size: int, order: np.ndarray | None = None) -> np.ndarray:
    """Index matrix (num_batches, batch_size); the last batch is padded with -1.

    Like a torch ``DataLoader`` with ``drop_last=False``: the final batch is partial.
    """
    order = np.arange(n) if order is None else np.asarray(order)
    num_batches = -(-n // batch_size)
    padded = np.full(num_batches * batch_size, -1, np.int32)
    padded[:n] = order
    return padded.reshape(num_batches, batch_size)


@functools.partial(jax.jit, static_argnames=("batch_size",))
def evaluate(params: Any, x: jax.Array, y: jax.Array, batch_size: int) -> dict[str, jax.Array]:
    """Loss as the mean of per-batch mean losses (torch-style loader loop) and accuracy."""
    idx = jnp.asarray(batch_indices(x.shape[0], batch_size))
    valid = (idx >= 0).astype(jnp.float32)
    safe = jnp.maximum(idx, 0)
    logits = MODEL.apply({"params": params}, x[safe])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y[safe])
    per_batch = jnp.sum(ce * valid, axis=1) / jnp.sum(valid, axis=1)
    correct = (jnp.argmax(logits, axis=-1) == y[safe]).astype(jnp.float32) * valid
    return {"loss": jnp.mean(per_batch), "accuracy": jnp.sum(correct) / x.shape[0]}


MakeTx = Callable[[dict[str, jax.Array]], optax.GradientTransformation]


def make_train_step(make_tx: MakeTx, *, extra_args: bool = False) -> Callable[..., Any]:
    """A jitted SGD step; params and optimizer state are donated.

    ``make_tx(hparams)`` is called inside the jitted function, so numeric
    hyperparameters passed in ``hparams`` (e.g. the learning rate during tuning)
    are traced and never trigger a recompilation. With ``extra_args`` the
    optimizer also receives ``value_fn`` / ``grad_fn`` closures over the minibatch
    (what ``lowrank.lorenza`` needs).
    """

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, hparams, x, y, batch_idx):
        valid = (batch_idx >= 0).astype(jnp.float32)
        safe = jnp.maximum(batch_idx, 0)
        xb, yb = x[safe], y[safe]

        def loss(p):
            return batch_loss(p, xb, yb, valid)

        value, grads = jax.value_and_grad(loss)(params)
        kwargs = {"value_fn": loss, "grad_fn": jax.grad(loss)} if extra_args else {}
        updates, opt_state = make_tx(hparams).update(grads, opt_state, params, **kwargs)
        return optax.apply_updates(params, updates), opt_state, value

    return step


@dataclasses.dataclass
class History:
    """Per-epoch evaluation results of one training run."""

    evals: dict[str, dict[str, list[float]]]  # set name -> metric -> per-epoch values
    train_batch_loss: list[float]  # mean minibatch loss seen during each epoch
    wall_time_s: float
    step_times_ms: list[float]
    opt_state_bytes: int
    params: Any = None


def tree_bytes(tree: Any) -> int:
    return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree)))


def train(
    make_tx: MakeTx,
    params0: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    shuffle_seed: int,
    eval_sets: dict[str, tuple[np.ndarray, np.ndarray, int]],
    hparams: dict[str, Any] | None = None,
    extra_args: bool = False,
    time_steps: bool = False,
    warmup_steps: int = 5,
    on_epoch: Callable[[int, dict[str, dict[str, float]]], None] | None = None,
    step_fn: Callable[..., Any] | None = None,
) -> History:
    """Trains from ``params0`` and evaluates every ``eval_sets`` entry after each epoch.

    ``eval_sets`` maps a name to ``(x, y, eval_batch_size)``. Data are reshuffled
    every epoch with ``jax.random.permutation(fold_in(key(shuffle_seed), epoch))``.
    With ``time_steps`` every step is synchronised and timed (``step_times_ms``
    excludes the first ``warmup_steps`` steps, which include compilation).
    """
    hparams = {k: jnp.asarray(v, jnp.float32) for k, v in (hparams or {}).items()}
    step = step_fn if step_fn is not None else make_train_step(make_tx, extra_args=extra_args)
    params = jax.tree.map(jnp.array, params0)  # private copy: the step donates its inputs
    opt_state = make_tx(hparams).init(params)
    state_bytes = tree_bytes(opt_state)
    xd, yd = jnp.asarray(x), jnp.asarray(y)
    evals_dev = {k: (jnp.asarray(a), jnp.asarray(b), bs) for k, (a, b, bs) in eval_sets.items()}
    key = jax.random.key(shuffle_seed)
    evals: dict[str, dict[str, list[float]]] = {k: {"loss": [], "accuracy": []} for k in eval_sets}
    batch_losses: list[float] = []
    step_times: list[float] = []
    n = x.shape[0]
    start = time.perf_counter()
    for epoch in range(epochs):
        order = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), n))
        idx = jnp.asarray(batch_indices(n, batch_size, order))
        losses = []
        for b in range(idx.shape[0]):
            t0 = time.perf_counter()
            params, opt_state, value = step(params, opt_state, hparams, xd, yd, idx[b])
            if time_steps:
                jax.block_until_ready((params, opt_state))
                step_times.append((time.perf_counter() - t0) * 1e3)
            losses.append(value)
        batch_losses.append(float(jnp.mean(jnp.stack(losses))))
        current = {}
        for name, (ex, ey, bs) in evals_dev.items():
            metrics = {k: float(v) for k, v in evaluate(params, ex, ey, bs).items()}
            current[name] = metrics
            for k, v in metrics.items():
                evals[name][k].append(v)
        if on_epoch is not None:
            on_epoch(epoch, current)
    jax.block_until_ready(params)
    return History(
        evals=evals,
        train_batch_loss=batch_losses,
        wall_time_s=time.perf_counter() - start,
        # Drop the warm-up steps (compilation); keep at least the last step.
        step_times_ms=step_times[min(warmup_steps, max(len(step_times) - 1, 0)) :],
        opt_state_bytes=state_bytes,
        params=params,
    )
