"""Train the LLaMA-style byte-level LM with AdamW, GaLore or LORENZA; plot and save the results.

The model (``llama_lm.py``) stacks its decoder layers and runs them with
``jax.lax.scan``; GaLore sees each stacked kernel through
``lowrank.DimensionNumbers`` whose layer axis is a batch axis (one basis per
layer). The text is the documentation shipped with the running Python
(``llama_lm.load_corpus``: no download), with a held-out validation split.

Run::

    python examples/train_lm.py --quick      # ~1 min of CPU time on 2 cores
    python examples/train_lm.py --config bench --steps 600 \\
        --optimizers adamw,galore_adamw,lorenza --out-dir /tmp/lm

It prints the corpus's SHA-256, a progress bar per run, the final validation
loss, the optimizer-state bytes (:func:`lowrank.memory_report`) and the median
step time; ``--out-dir`` receives ``train_lm.json`` and ``train_lm.png``
(validation-loss curves).

The learning rate follows GaLore's recipe (linear warm-up over the first 10 %
of the steps, cosine decay to 10 % of the peak) and is applied **outside** the
optimizer: each optimizer is built with ``learning_rate=1.0`` and the step
multiplies its update by the scheduled rate. With no weight decay (GaLore's
LM runs use none) every optimizer here ends in ``scale_by_learning_rate``, so
this is exactly the optimizer built with the schedule, and one compiled step
serves every learning rate and seed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
import optax.contrib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import llama_lm as lm  # noqa: E402

import lowrank_optax as lowrank  # noqa: E402

OPTIMIZERS = (
    "adamw",
    "adamw_scaled",
    "galore_adamw",
    "galore_adamw_randomized",
    "optax_galore",
    "lorenza",
    "adamw_8bit",
    "galore_adamw_8bit",
)
# The best peak learning rates of benchmarks/lm.py's sweep on the bench model
# (600 steps, batch 16 x 128, rank 48, scale 0.25; docs/guides/lm.rst).
DEFAULT_LR = {
    "adamw": 1e-3,
    "adamw_scaled": 4e-3,
    "galore_adamw": 1.6e-2,
    "galore_adamw_randomized": 1.6e-2,
    "optax_galore": 1.6e-2,
    "lorenza": 1.6e-2,
    # 8-bit state, not retuned: the fp32 versions' rates (Dettmers et al.'s protocol).
    "adamw_8bit": 1e-3,
    "galore_adamw_8bit": 1.6e-2,
}
DESCRIPTIONS = {
    "adamw": "optax.adamw",
    "adamw_scaled": "AdamW, block-matrix updates scaled by `scale` (GaLore's step-size control)",
    "galore_adamw": "lowrank.galore_adamw, SVD projector",
    "galore_adamw_randomized": "lowrank.galore_adamw, randomized projector",
    "optax_galore": "optax.contrib.galore (per-layer slices; no batch axes)",
    "lorenza": "lowrank.lorenza (zeroth-order SAM in the randomized subspace)",
    "adamw_8bit": "lowrank.quantize_state(optax.adamw): 8-bit AdamW state",
    "galore_adamw_8bit": "lowrank.galore_adamw(state_bits=8): 8-bit GaLore, SVD projector",
}


# --- optimizers ----------------------------------------------------------------


def unstack_blocks(tree: dict[str, Any]) -> dict[str, Any]:
    """``tree['blocks']`` (stacked ``(L, ...)`` leaves) as a list of ``L`` per-layer dicts."""
    blocks = tree["blocks"]
    n = jax.tree.leaves(blocks)[0].shape[0]
    layers = [jax.tree.map(lambda x, i=i: x[i], blocks) for i in range(n)]
    return {**tree, "blocks": layers}


def stack_blocks(tree: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`unstack_blocks`."""
    return {**tree, "blocks": jax.tree.map(lambda *xs: jnp.stack(xs), *tree["blocks"])}


def on_unstacked_blocks(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """Runs ``tx`` on per-layer slices of the stacked blocks (for optimizers without batch axes).

    ``optax.contrib.galore`` views every leaf as one matrix (all axes must be
    named), so a stacked ``(L, d, F)`` kernel would get one basis for all
    layers; given per-layer slices it projects each layer on its own, like
    ``lowrank.galore_adamw`` with a batch axis does.
    """

    def init_fn(params: Any) -> Any:
        return tx.init(unstack_blocks(params))

    def update_fn(updates: Any, state: Any, params: Any = None, **extra: Any) -> Any:
        p = None if params is None else unstack_blocks(params)
        out, state = tx.update(unstack_blocks(updates), state, p, **extra)
        return stack_blocks(out), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _contrib_galore_dims() -> dict[str, Any]:
    dn = optax.contrib.GaLoreDimensionNumbers
    layer = {
        "attn_norm": None,
        "mlp_norm": None,
        "wq": dn(0, (1, 2)),
        "wk": dn(0, (1, 2)),
        "wv": dn(0, (1, 2)),
        "wo": dn((0, 1), 2),
        "w_gate": dn(0, 1),
        "w_up": dn(0, 1),
        "w_down": dn(0, 1),
    }
    return layer


def make_optimizer(
    name: str,
    params: lm.Params,
    *,
    learning_rate: float = 1.0,
    rank: int,
    update_proj_gap: int = 200,
    scale: float = 0.25,
    seed: int = 0,
) -> optax.GradientTransformation:
    """One of :data:`OPTIMIZERS` for the LM's ``params`` (no weight decay).

    The low-rank optimizers project the block matrices only (per layer: the
    layer axis is a batch axis) and give the embedding, head and norms
    full-size Adam, as the GaLore paper does. ``adamw_scaled`` is AdamW whose
    block-matrix updates are multiplied by ``scale``: the per-group step-size
    control GaLore's ``scale`` amounts to, so AdamW gets the same tuning knob.
    ``adamw_8bit`` and ``galore_adamw_8bit`` store their moments in 8 bits
    (:func:`lowrank.quantize_state`, default block size and ``min_size``).
    """
    dims = lm.dimension_numbers(params)
    if name == "adamw":
        return optax.adamw(learning_rate, weight_decay=0.0)
    if name == "adamw_8bit":
        return lowrank.quantize_state(optax.adamw(learning_rate, weight_decay=0.0))
    if name == "adamw_scaled":
        return optax.chain(
            optax.scale_by_adam(),
            optax.masked(optax.scale(scale), lm.projected_mask(params)),
            optax.scale_by_learning_rate(learning_rate),
        )
    if name in ("galore_adamw", "galore_adamw_randomized", "galore_adamw_8bit"):
        return lowrank.galore_adamw(
            learning_rate,
            rank=rank,
            update_proj_gap=update_proj_gap,
            scale=scale,
            projector="randomized" if name.endswith("randomized") else "svd",
            dimension_numbers=dims,
            state_bits=8 if name.endswith("8bit") else None,
        )
    if name == "optax_galore":
        layer_dims = _contrib_galore_dims()
        n_layers = jax.tree.leaves(params["blocks"])[0].shape[0]
        tree_dims = {
            "embed": None,
            "blocks": [layer_dims] * n_layers,
            "final_norm": None,
            "head": None,
        }
        return on_unstacked_blocks(
            optax.contrib.galore(
                learning_rate,
                rank=rank,
                update_proj_gap=update_proj_gap,
                scale=scale,
                weight_dimension_numbers=tree_dims,
            )
        )
    if name == "lorenza":
        return lowrank.lorenza(
            learning_rate,
            rank=rank,
            update_proj_gap=update_proj_gap,
            scale=scale,
            dimension_numbers=dims,
            seed=seed,
        )
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")


# --- steps ---------------------------------------------------------------------


def make_train_step(
    tx: optax.GradientTransformation,
    name: str,
    *,
    update_proj_gap: int = 200,
    loss: Callable[[lm.Params, jax.Array], jax.Array] = lm.loss_fn,
    with_loss: bool = True,
) -> Callable[..., Any]:
    """The jitted step ``(params, state, batch, lr, t) -> (params, state, loss)``.

    ``params`` and ``state`` are donated. ``lr`` is the scheduled learning rate
    (the optimizer is built with ``learning_rate=1.0``), ``t`` the step index.
    LORENZA consumes the gradient at the current point only at refresh steps
    (``t % update_proj_gap == 0``), so it is computed under a ``lax.cond``;
    its other steps evaluate the loss only if ``with_loss`` (one forward pass,
    for the training curve; the benchmark's timed steps leave it out and
    return NaN).
    """
    zo = name == "lorenza"

    def step(params: Any, state: Any, batch: jax.Array, lr: jax.Array, t: jax.Array) -> Any:
        value = lambda p: loss(p, batch)  # noqa: E731
        if zo:

            def refresh() -> tuple[jax.Array, Any]:
                return jax.value_and_grad(value)(params)

            def normal() -> tuple[jax.Array, Any]:
                val = value(params) if with_loss else jnp.full((), jnp.nan, jnp.float32)
                return val, jax.tree.map(jnp.zeros_like, params)

            val, grads = jax.lax.cond(t % update_proj_gap == 0, refresh, normal)
            updates, state = tx.update(grads, state, params, value_fn=value)
        else:
            val, grads = jax.value_and_grad(value)(params)
            updates, state = tx.update(grads, state, params)
        updates = jax.tree.map(lambda u: (lr * u).astype(u.dtype), updates)
        return optax.apply_updates(params, updates), state, val

    return jax.jit(step, donate_argnums=(0, 1))


def make_eval_fn(loss: Callable[..., jax.Array] = lm.loss_fn) -> Callable[..., jax.Array]:
    """Jitted mean loss over stacked batches ``(n, B, T+1)``."""

    @jax.jit
    def evaluate(params: Any, batches: jax.Array) -> jax.Array:
        return jnp.mean(jax.lax.map(lambda b: loss(params, b), batches))

    return evaluate


evaluate = make_eval_fn()  # shared by every Trainer: compiled once per shape


def lr_at(step: int, peak: float, steps: int, warmup: float = 0.1, final: float = 0.1) -> float:
    """GaLore's schedule: linear warm-up over ``warmup·steps``, cosine to ``final·peak``."""
    n_warm = max(1, int(warmup * steps))
    if step < n_warm:
        return peak * (step + 1) / n_warm
    progress = (step - n_warm) / max(1, steps - n_warm)
    return peak * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


class Trainer:
    """One optimizer on one model config: the compiled step and evaluation, reused across runs.

    Args:
      config: the model's :class:`llama_lm.LlamaConfig`.
      name: one of :data:`OPTIMIZERS`.
      rank, update_proj_gap, scale, opt_seed: the optimizer's settings.
      batch_size, seq_len: training batch shape.
    """

    def __init__(
        self,
        config: lm.LlamaConfig,
        name: str,
        *,
        rank: int,
        update_proj_gap: int = 200,
        scale: float = 0.25,
        opt_seed: int = 0,
        batch_size: int = 16,
        seq_len: int | None = None,
    ):
        self.config, self.name = config, name
        self.batch_size = batch_size
        self.seq_len = seq_len or config.seq_len
        self.update_proj_gap = update_proj_gap
        abstract = lm.abstract_params(config)
        kwargs = dict(rank=rank, update_proj_gap=update_proj_gap, scale=scale, seed=opt_seed)
        self.tx = make_optimizer(name, abstract, **kwargs)
        self.step = make_train_step(self.tx, name, update_proj_gap=update_proj_gap)
        self.evaluate = evaluate
        batch = jax.ShapeDtypeStruct((batch_size, self.seq_len + 1), jnp.uint8)
        scalar = jax.ShapeDtypeStruct((), jnp.float32)
        t = jax.ShapeDtypeStruct((), jnp.int32)
        state = jax.eval_shape(self.tx.init, abstract)
        self.memory = lowrank.memory_report(
            self.tx, abstract, step_fn=self.step, step_args=(abstract, state, batch, scalar, t)
        )

    def run(
        self,
        corpus: lm.Corpus,
        *,
        lr: float,
        steps: int,
        seed: int = 0,
        eval_every: int = 100,
        eval_batches: int = 16,
        progress: bool = True,
    ) -> dict[str, Any]:
        """Trains from a fresh init (``seed``: init and data order); returns the results dict."""
        params = lm.init_params(self.config, jax.random.key(seed))
        state = jax.jit(self.tx.init)(params)
        val = jnp.asarray(lm.eval_batches(corpus.val, self.batch_size, self.seq_len, eval_batches))
        data = lm.train_batches(corpus.train, self.batch_size, self.seq_len, seed)
        curve: list[tuple[int, float]] = []
        train_curve: list[tuple[int, float]] = []
        times: list[float] = []
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, desc=f"{self.name} lr={lr:g} seed={seed}", leave=False)
        diverged = False
        for t in range(steps):
            if eval_every and t % eval_every == 0:
                curve.append((t, float(self.evaluate(params, val))))
            batch = jnp.asarray(next(data))
            t0 = time.perf_counter()
            params, state, loss = self.step(
                params, state, batch, jnp.float32(lr_at(t, lr, steps)), jnp.int32(t)
            )
            loss = float(loss)  # waits for the step
            times.append(time.perf_counter() - t0)
            train_curve.append((t, loss))
            if bar is not None:
                bar.update(1)
                if t % 10 == 0:
                    bar.set_postfix(loss=f"{loss:.3f}")
            if not math.isfinite(loss):
                diverged = True
                break
        if bar is not None:
            bar.close()
        final = float(self.evaluate(params, val))
        if not math.isfinite(final):
            diverged = True
        curve.append((steps, final))
        gap = self.update_proj_gap
        # The first step compiles; refresh steps (t % gap == 0) do extra work.
        normal = [x for t, x in enumerate(times) if t > 0 and t % gap != 0]
        refresh = [x for t, x in enumerate(times) if t > 0 and t % gap == 0]
        return {
            "optimizer": self.name,
            "lr": lr,
            "seed": seed,
            "steps": steps,
            "final_val_loss": final,
            "diverged": diverged,
            "val_curve": curve,
            "train_curve": train_curve,
            "median_step_s": statistics.median(normal) if normal else None,
            "median_refresh_step_s": statistics.median(refresh) if refresh else None,
            "wall_s": sum(times),
        }


# --- CLI -----------------------------------------------------------------------


def plot(results: list[dict[str, Any]], path: str, title: str) -> None:
    """Validation-loss curves of ``results`` (one line per run) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        steps, losses = zip(*r["val_curve"], strict=True)
        ax.plot(steps, losses, marker="o", ms=3, label=f"{r['optimizer']} (lr {r['lr']:g})")
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats/byte)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small model, 300 steps (~2 min on CPU)")
    ap.add_argument("--config", default="bench", choices=["tiny", "small", "bench"])
    ap.add_argument("--optimizers", default="adamw,galore_adamw", help=",".join(OPTIMIZERS))
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default: per opt)")
    ap.add_argument("--rank", type=int, default=None, help="default d_model // 4")
    ap.add_argument("--update-proj-gap", type=int, default=200)
    ap.add_argument("--scale", type=float, default=0.25)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=None, help="default: the config's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-batches", type=int, default=16)
    ap.add_argument("--corpus", default=None, help=".npz saved with --save-corpus")
    ap.add_argument("--save-corpus", default=None, help="write the corpus to this .npz")
    ap.add_argument("--out-dir", default=None, help="write train_lm.json and train_lm.png here")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.config, args.steps, args.eval_every, args.eval_batches = "small", 300, 50, 8
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    config = lm.CONFIGS[args.config]
    rank = args.rank or config.d_model // 4
    corpus = lm.load_corpus(args.corpus)
    print(corpus.describe())
    if args.save_corpus:
        lm.save_corpus(corpus, args.save_corpus)
    n_params = config.num_params()
    print(f"model {args.config}: {n_params:,} parameters, {config.n_layers} stacked layers")
    results = []
    for name in args.optimizers.split(","):
        trainer = Trainer(
            config,
            name,
            rank=rank,
            update_proj_gap=args.update_proj_gap,
            scale=args.scale,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
        )
        lr = args.lr if args.lr is not None else DEFAULT_LR[name]
        r = trainer.run(
            corpus,
            lr=lr,
            steps=args.steps,
            seed=args.seed,
            eval_every=args.eval_every,
            eval_batches=args.eval_batches,
            progress=not args.no_progress,
        )
        r["state_bytes"] = trainer.memory["state_bytes"]
        r["compiled_peak_bytes"] = (trainer.memory["compiled"] or {}).get("peak_bytes")
        r["rank"] = rank
        results.append(r)
        step_ms = 1e3 * (r["median_step_s"] or float("nan"))
        print(
            f"{name:<24} lr {lr:<8g} val loss {r['final_val_loss']:.4f}  "
            f"state {r['state_bytes'] / 2**20:7.3f} MiB  step {step_ms:7.1f} ms"
        )
    adamw = next((r for r in results if r["optimizer"] == "adamw"), None)
    if adamw is not None:
        for r in results:
            print(
                f"{r['optimizer']:<24} loss {r['final_val_loss'] / adamw['final_val_loss']:.3f}x "
                f"AdamW's, state {r['state_bytes'] / adamw['state_bytes']:.3f}x"
            )
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        meta = {
            "config": args.config,
            "num_params": n_params,
            "corpus": corpus.describe(),
            "args": vars(args),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
        }
        with open(os.path.join(args.out_dir, "train_lm.json"), "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
        title = f"{args.config} LM ({n_params / 1e6:.2f} M params), {args.steps} steps"
        plot(results, os.path.join(args.out_dir, "train_lm.png"), title)
        print(f"wrote {args.out_dir}/train_lm.json and train_lm.png")
    return results


if __name__ == "__main__":
    main()
