"""Train a small Flax MLP with LORENZA and with GaLore (same rank) on MNIST-1D.

LORENZA needs the loss itself (``value_fn``) and the gradient at the perturbed
point (``grad_fn``) as extra arguments of ``update``; both close over the current
minibatch. This script shows the pattern for Flax NNX (``nnx.Optimizer.update``
forwards keyword arguments) and for Flax Linen (``TrainState.apply_gradients``
forwards none, so the step calls ``tx.update`` itself).

LORENZA only reads the gradient at the current weights at basis refreshes (every
``update_proj_gap`` steps). With ``--refresh-only-grads`` the step computes it
under ``jax.lax.cond`` only at those steps and passes zeros otherwise, so a step
costs ``2 * num_probes`` forward passes plus one gradient.

Usage::

    python examples/lorenza_flax.py --steps 300 --api nnx
    python examples/lorenza_flax.py --steps 300 --api linen --refresh-only-grads

Data: MNIST-1D (``pip install mnist1d``; generated locally, no download); without
the package a synthetic 10-class problem of the same shape is used.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lowrank_optax as lowrank


def load_data(num_samples: int, seed: int) -> tuple[np.ndarray, ...]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:  # synthetic stand-in: a random teacher network
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(num_samples, 40)).astype(np.float32)
        teacher = rng.normal(size=(40, 10))
        y = np.argmax(np.tanh(x @ teacher) + 0.3 * rng.normal(size=(num_samples, 10)), axis=1)
        split = int(0.8 * num_samples)
        return x[:split], y[:split], x[split:], y[split:]
    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    data = make_dataset(args)
    x, x_test = data["x"].astype(np.float32), data["x_test"].astype(np.float32)
    mean, std = x.mean(), x.std()
    return (x - mean) / std, data["y"], (x_test - mean) / std, data["y_test"]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


# --- Flax NNX ------------------------------------------------------------------


def train_nnx(tx: optax.GradientTransformation, data: tuple, args: argparse.Namespace) -> dict:
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.l1 = nnx.Linear(40, args.width, rngs=rngs)
            self.l2 = nnx.Linear(args.width, args.width, rngs=rngs)
            self.l3 = nnx.Linear(args.width, 10, rngs=rngs)

        def __call__(self, x: jax.Array) -> jax.Array:
            return self.l3(nnx.relu(self.l2(nnx.relu(self.l1(x)))))

    def loss_fn(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
        return cross_entropy(model(x), y)

    model = MLP(nnx.Rngs(args.seed))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    needs_loss = args.current == "lorenza"

    @nnx.jit
    def step(model: MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> None:
        if not needs_loss:  # GaLore / AdamW: a plain gradient step
            optimizer.update(model, nnx.grad(loss_fn)(model, x, y))
            return
        fns = lowrank.make_nnx_value_and_grad_fns(loss_fn, model, x, y)
        if args.refresh_only_grads:
            # The gradient at W is only read at refreshes: compute it there only.
            template = nnx.state(model, nnx.Param)
            refresh = optimizer.step[...] % args.update_proj_gap == 0
            pure = jax.lax.cond(
                refresh,
                fns["grad_fn"],
                lambda p: jax.tree.map(jnp.zeros_like, p),
                nnx.as_pure(template),
            )
            grads = jax.tree.unflatten(jax.tree.structure(template), jax.tree.leaves(pure))
        else:
            grads = nnx.grad(loss_fn)(model, x, y)
        optimizer.update(model, grads, **fns)

    @nnx.jit
    def evaluate(model: MLP, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = model(x)
        return cross_entropy(logits, y), jnp.mean(jnp.argmax(logits, -1) == y)

    return run_loop(
        lambda x, y: step(model, optimizer, x, y), lambda x, y: evaluate(model, x, y), data, args
    )


# --- Flax Linen ----------------------------------------------------------------


def train_linen(tx: optax.GradientTransformation, data: tuple, args: argparse.Namespace) -> dict:
    from flax import linen as nn
    from flax.training import train_state

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            x = nn.relu(nn.Dense(args.width)(x))
            x = nn.relu(nn.Dense(args.width)(x))
            return nn.Dense(10)(x)

    model = MLP()
    params = model.init(jax.random.PRNGKey(args.seed), jnp.zeros((1, 40)))["params"]
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    def loss_fn(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        return cross_entropy(model.apply({"params": params}, x), y)

    needs_loss = args.current == "lorenza"

    @jax.jit
    def step(state: train_state.TrainState, x: jax.Array, y: jax.Array):
        if not needs_loss:
            return state.apply_gradients(grads=jax.grad(loss_fn)(state.params, x, y))
        fns = lowrank.make_value_and_grad_fns(loss_fn, x, y)
        if args.refresh_only_grads:
            grads = jax.lax.cond(
                state.step % args.update_proj_gap == 0,
                fns["grad_fn"],
                lambda p: jax.tree.map(jnp.zeros_like, p),
                state.params,
            )
        else:
            grads = fns["grad_fn"](state.params)
        # TrainState.apply_gradients forwards no extra arguments: call tx.update.
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params, **fns)
        params = optax.apply_updates(state.params, updates)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state)

    @jax.jit
    def evaluate(params: Any, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = model.apply({"params": params}, x)
        return cross_entropy(logits, y), jnp.mean(jnp.argmax(logits, -1) == y)

    holder = {"state": state}

    def do_step(x: jax.Array, y: jax.Array) -> None:
        holder["state"] = step(holder["state"], x, y)

    return run_loop(do_step, lambda x, y: evaluate(holder["state"].params, x, y), data, args)


# --- shared loop ---------------------------------------------------------------


def run_loop(step: Callable, evaluate: Callable, data: tuple, args: argparse.Namespace) -> dict:
    x, y, x_test, y_test = (jnp.asarray(a) for a in data)
    rng = np.random.default_rng(args.seed)
    start = None
    for i in range(args.steps):
        idx = rng.integers(0, x.shape[0], args.batch_size)
        step(x[idx], y[idx])
        if i == 0:  # exclude compilation from the timing
            jax.block_until_ready(evaluate(x[:1], y[:1]))
            start = time.perf_counter()
    jax.block_until_ready(evaluate(x[:1], y[:1]))  # already compiled: waits for the steps
    elapsed = time.perf_counter() - start
    train_loss, _ = evaluate(x, y)
    test_loss, test_acc = evaluate(x_test, y_test)
    return {
        "train_loss": float(train_loss),
        "test_loss": float(test_loss),
        "test_acc": float(test_acc),
        "ms_per_step": 1e3 * elapsed / max(args.steps - 1, 1),
    }


def optimizers(args: argparse.Namespace) -> dict[str, optax.GradientTransformation]:
    common = dict(rank=args.rank, update_proj_gap=args.update_proj_gap)
    return {
        "lorenza": lowrank.lorenza(args.lr, rho=args.rho, num_probes=args.num_probes, **common),
        "galore_adamw": lowrank.galore_adamw(args.lr, **common),
        "adamw": optax.adamw(args.lr, weight_decay=0.0),
    }


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--api", choices=("nnx", "linen"), default="nnx")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--update-proj-gap", type=int, default=50)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument("--num-probes", type=int, default=1)
    parser.add_argument("--refresh-only-grads", action="store_true")
    parser.add_argument("--num-samples", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--optimizers", default="lorenza,galore_adamw,adamw", help="comma-separated subset"
    )
    args = parser.parse_args(argv)

    data = load_data(args.num_samples, args.seed)
    train = train_nnx if args.api == "nnx" else train_linen
    print(f"{args.api}: {args.steps} steps, rank {args.rank}, width {args.width}")
    print(f"{'optimizer':<14}{'train loss':>11}{'test loss':>11}{'test acc':>10}{'ms/step':>9}")
    results = {}
    for name, tx in optimizers(args).items():
        if name not in args.optimizers.split(","):
            continue
        args.current = name
        r = results[name] = train(tx, data, args)
        print(
            f"{name:<14}{r['train_loss']:>11.4f}{r['test_loss']:>11.4f}"
            f"{r['test_acc']:>10.3f}{r['ms_per_step']:>9.2f}"
        )
    return results


if __name__ == "__main__":
    main()
