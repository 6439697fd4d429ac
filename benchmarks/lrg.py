"""LRG-Adam's whole training step, exact SVD vs randomized, against AdamW.

Two models, each trained by a jitted whole step (loss, gradient, optimizer update;
params and state donated):

* ``mlp``: the mnist1d MLP of the main job (40 -> 128 -> 64 -> 10, 14,154
  parameters, so the filter's matrix is 119 x 119), batch 64;
* ``lm``: the ~1.7 M-parameter byte-level LLaMA-style LM of ``examples/llama_lm.py``
  (its ``bench`` config: 1,722,048 parameters, a 1313 x 1313 matrix), batch 8 x 128
  bytes.

For each model, ``optax.adamw``, ``lrg_adam(projector='svd')`` (LAPACK's full SVD,
the reference's computation) and ``lrg_adam(projector='randomized')`` (the
default) are run interleaved, round after round; the table prints each one's
median milliseconds per step and its ratio to AdamW measured in the same run.

Usage::

    python3 benchmarks/lrg.py [--rounds 7] [--reps 5] [--rank 20] [--models mlp,lm]
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lowrank_optax as lowrank

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def mlp_model(seed: int = 0) -> tuple[Any, Callable[[Any, Any], jax.Array], Any]:
    """The mnist1d MLP (torch-like init), its loss and one random batch of 64."""
    dims = (40, 128, 64, 10)
    keys = jax.random.split(jax.random.key(seed), 2 * len(dims))
    params = {}
    for i, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        bound = 1 / math.sqrt(fan_in)
        params[f"Dense_{i}"] = {
            "bias": jax.random.uniform(keys[2 * i], (fan_out,), minval=-bound, maxval=bound),
            "kernel": jax.random.uniform(
                keys[2 * i + 1], (fan_in, fan_out), minval=-bound, maxval=bound
            ),
        }

    def loss(p: Any, batch: Any) -> jax.Array:
        x, y = batch
        for i in range(len(dims) - 1):
            x = x @ p[f"Dense_{i}"]["kernel"] + p[f"Dense_{i}"]["bias"]
            if i < len(dims) - 2:
                x = jax.nn.relu(x)
        return optax.softmax_cross_entropy_with_integer_labels(x, y).mean()

    rng = np.random.default_rng(seed)
    batch = (
        jnp.asarray(rng.standard_normal((64, 40)), jnp.float32),
        jnp.asarray(rng.integers(0, 10, 64), jnp.int32),
    )
    return params, loss, batch


def lm_model(seed: int = 0) -> tuple[Any, Callable[[Any, Any], jax.Array], Any]:
    """``examples/llama_lm.py``'s ``bench`` LM, its loss and one random byte batch (8 x 129)."""
    sys.path.insert(0, str(EXAMPLES))
    import llama_lm

    config = llama_lm.CONFIGS["bench"]
    params = llama_lm.init_params(config, jax.random.key(seed))
    rng = np.random.default_rng(seed)
    batch = jnp.asarray(rng.integers(0, 256, (8, config.seq_len + 1)), jnp.int32)
    return params, llama_lm.loss_fn, batch


MODELS = {"mlp": mlp_model, "lm": lm_model}


def optimizers(rank: int) -> dict[str, optax.GradientTransformation]:
    return {
        "adamw": optax.adamw(1e-3, weight_decay=1e-4),
        "lrg_adam svd": lowrank.lrg_adam(1e-3, rank=rank, projector="svd"),
        "lrg_adam randomized": lowrank.lrg_adam(1e-3, rank=rank, projector="randomized"),
    }


def make_step(tx: optax.GradientTransformation, loss: Callable[[Any, Any], jax.Array]):
    """A jitted whole training step; params and optimizer state are donated."""

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params: Any, state: Any, batch: Any) -> tuple[Any, Any, jax.Array]:
        value, grads = jax.value_and_grad(loss)(params, batch)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    return step


class Candidate:
    """One optimizer on one model: compiled, warmed up, timed ``reps`` steps at a time."""

    def __init__(self, name: str, tx: optax.GradientTransformation, model: tuple) -> None:
        params, loss, self.batch = model
        self.name = name
        self.step = make_step(tx, loss)
        self.params = jax.tree.map(jnp.copy, params)
        self.state = tx.init(self.params)
        for _ in range(2):  # compilation and first touches
            self.params, self.state, _ = self.step(self.params, self.state, self.batch)
        jax.block_until_ready(self.params)

    def run(self, reps: int) -> float:
        """Median milliseconds of ``reps`` synchronised steps."""
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            self.params, self.state, value = self.step(self.params, self.state, self.batch)
            jax.block_until_ready(value)
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def interleaved(cands: list[Candidate], rounds: int, reps: int) -> dict[str, float]:
    """Median over rounds of each candidate's per-round median, rounds interleaved."""
    times: dict[str, list[float]] = {c.name: [] for c in cands}
    for _ in range(rounds):
        for c in cands:
            times[c.name].append(c.run(reps))
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rank", type=int, default=20)
    ap.add_argument("--models", default="mlp,lm", help="comma-separated subset of mlp,lm")
    args = ap.parse_args(argv)
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs; "
        f"rank {args.rank}; median of {args.rounds} interleaved rounds x {args.reps} steps"
    )
    print("| model | N | s | optimizer | ms/step | / adamw |\n|---|---|---|---|---|---|")
    results = {}
    for model_name in args.models.split(","):
        model = MODELS[model_name]()
        n = sum(x.size for x in jax.tree.leaves(model[0]))
        side = math.isqrt(n - 1) + 1
        cands = [Candidate(k, tx, model) for k, tx in optimizers(args.rank).items()]
        ms = interleaved(cands, args.rounds, args.reps)
        for name, value in ms.items():
            print(
                f"| {model_name} | {n:,} | {side} | {name} | {value:.2f} | "
                f"{value / ms['adamw']:.2f}x |"
            )
        results[model_name] = ms
    return results


if __name__ == "__main__":
    main()
