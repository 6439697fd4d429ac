"""LRE step time and optimizer-state size against Adam on a small MLP.

Prints, for ranks 16/64/128, the median time of a jitted training step (loss
gradient + optimizer update + apply, params and state donated) of

* ``lowrank.lre`` (covariance curvature, GGT basis with ``history_size = rank``,
  Adam → cautious → normalised EMA norm clip: the recommended configuration),
* ``eigenbasis_update`` with the streaming ``bases.eigen(rank)`` and Adam,

next to ``optax.adam``, with ratios against Adam measured in the same run (runs of
all candidates are interleaved, round after round), and the optimizer-state
megabytes.

Usage::

    python benchmarks/lre.py [--rounds 7] [--reps 5] [--ranks 16 64 128]

JAX's CPU ``eigh`` calls SciPy's OpenBLAS LAPACK; on a shared machine its default
thread pool can stall ~100 ms per call; ``import lowrank_optax`` limits it to one
thread (``docs/guides/cpu_threads.rst``), so no variable needs to be set.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lowrank_optax as lowrank


def mlp_params(sizes: list[int], seed: int = 0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    params = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        params[f"w{i}"] = jnp.asarray(rng.standard_normal((a, b), dtype=np.float32) / np.sqrt(a))
        params[f"b{i}"] = jnp.zeros((b,), jnp.float32)
    return params


def mlp_loss(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
    h = x
    n_layers = len(params) // 2
    for i in range(n_layers):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < n_layers - 1:
            h = jax.nn.relu(h)
    return optax.softmax_cross_entropy_with_integer_labels(h, y).mean()


def state_megabytes(state: Any) -> float:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)) / 2**20


class Candidate:
    """A jitted, donated training step."""

    def __init__(self, name: str, tx: optax.GradientTransformation, params: Any, batch: Any):
        self.name = name
        self.batch = batch
        self.state_mb = state_megabytes(jax.eval_shape(tx.init, params))

        def step(p: Any, s: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any]:
            g = jax.grad(mlp_loss)(p, x, y)
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        self.step = jax.jit(step, donate_argnums=(0, 1))
        self.params = jax.tree.map(jnp.copy, params)
        self.state = tx.init(self.params)
        for _ in range(2):  # compile, and get past the first basis
            self.params, self.state = self.step(self.params, self.state, *batch)
        jax.block_until_ready(self.params)

    def run(self, reps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            self.params, self.state = self.step(self.params, self.state, *self.batch)
        jax.block_until_ready((self.params, self.state))
        return (time.perf_counter() - t0) / reps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 64, 128])
    args = parser.parse_args()

    sizes = [64, args.hidden, args.hidden, 10]
    params = mlp_params(sizes)
    n = sum(x.size for x in jax.tree.leaves(params))
    rng = np.random.default_rng(1)
    batch = (
        jnp.asarray(rng.standard_normal((args.batch, sizes[0]), dtype=np.float32)),
        jnp.asarray(rng.integers(0, sizes[-1], args.batch)),
    )
    candidates = [Candidate("optax.adam", optax.adam(1e-3), params, batch)]
    for r in args.ranks:
        candidates.append(
            Candidate(
                f"lre ggt (rank {r})",
                lowrank.lre(1e-3, basis=lowrank.bases.ggt(history_size=r)),
                params,
                batch,
            )
        )
        candidates.append(
            Candidate(
                f"eigen + adam (rank {r})",
                lowrank.lre(
                    1e-3,
                    basis=lowrank.bases.eigen(rank=r),
                    inner=[lowrank.scale_by_adam_in_basis(b2=0.99)],
                ),
                params,
                batch,
            )
        )
    times: dict[str, list[float]] = {c.name: [] for c in candidates}
    for _ in range(args.rounds):
        for c in candidates:
            times[c.name].append(c.run(args.reps))

    base_t = statistics.median(times["optax.adam"])
    base_mb = candidates[0].state_mb
    print(f"MLP {sizes}, n = {n} parameters, batch {args.batch}, backend {jax.default_backend()}")
    print(f"median of {args.rounds} interleaved rounds x {args.reps} steps")
    print()
    header = ("optimizer", "step ms", "x adam", "state MB", "x adam")
    print("| {:<24} | {:>8} | {:>7} | {:>9} | {:>7} |".format(*header))
    print(f"|{'-' * 26}|{'-' * 10}|{'-' * 9}|{'-' * 11}|{'-' * 9}|")
    for c in candidates:
        t = statistics.median(times[c.name])
        print(
            f"| {c.name:<24} | {t:8.2f} | {t / base_t:7.2f} | {c.state_mb:9.2f} | "
            f"{c.state_mb / base_mb:7.2f} |"
        )


if __name__ == "__main__":
    main()
