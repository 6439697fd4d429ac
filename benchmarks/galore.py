"""GaLore step time and state size on a LLaMA-block set of matrices.

Prints, in one run, the median normal-step and refresh-step time of
``lowrank.galore_adamw`` (svd and randomized projectors; ``std`` and optax's
``reverse_std`` layout), ``optax.adamw`` and ``optax.contrib.galore``, plus the
bare projection matmuls on each layout's sides (the floor of a normal step), the
refresh's own cost (refresh step minus normal step) and the optimizer-state
megabytes. Every timed function is a jitted whole step with params and state
donated; timed runs of all candidates are interleaved, round after round, and
ratios are taken against baselines measured in the same run.

Usage::

    python benchmarks/galore.py [--rounds 7] [--reps 3] [--rank 128] [--small]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib

import lowrank_optax as lowrank

LLAMA_BLOCK = [(1024, 1024)] * 4 + [(1024, 2816), (2816, 1024), (1024, 2816)]


def make_params(shapes: list[tuple[int, int]], seed: int = 0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {
        f"w{i}": jnp.asarray(rng.standard_normal(s, dtype=np.float32) * 0.02)
        for i, s in enumerate(shapes)
    }


def state_megabytes(state: Any) -> float:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)) / 2**20


class Candidate:
    """A jitted, donated optimizer step positioned on a normal or a refresh step."""

    def __init__(self, name: str, tx: optax.GradientTransformation, params: Any, grads: Any):
        self.name = name
        self.grads = grads
        self.state_mb = state_megabytes(jax.eval_shape(tx.init, params))

        def step(p: Any, s: Any, g: Any) -> tuple[Any, Any]:
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        self.step = jax.jit(step, donate_argnums=(0, 1))
        self.params = jax.tree.map(jnp.copy, params)
        self.state = tx.init(self.params)
        # The first step is a refresh; afterwards (gap > steps run) every step is normal.
        self.params, self.state = self.step(self.params, self.state, grads)
        jax.block_until_ready(self.params)

    def run(self, reps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            self.params, self.state = self.step(self.params, self.state, self.grads)
        jax.block_until_ready((self.params, self.state))
        return (time.perf_counter() - t0) / reps * 1e3


def projected_side(proj_type: str, m: int, n: int) -> str:
    """The side a one-sided ``proj_type`` projects an ``m × n`` matrix on."""
    if proj_type == "std":  # galore-torch: the smaller side (right when m >= n)
        return "left" if m < n else "right"
    return "left" if m >= n else "right"  # reverse_std (optax.contrib.galore's layout)


class Floor:
    """The projection matmuls alone (``Pᵀ G`` and ``P N`` per matrix, on the sides
    ``proj_type`` projects on), jitted; the floor of a normal step."""

    def __init__(self, params: Any, grads: Any, rank: int, proj_type: str):
        self.name = f"matmul floor ({proj_type})"
        self.state_mb = float("nan")
        sides = {k: projected_side(proj_type, *g.shape) for k, g in grads.items()}

        def basis(g: jax.Array, side: str) -> jax.Array:
            return jnp.linalg.qr(g[:, :rank] if side == "left" else g[:rank].T)[0]

        self.p = {k: basis(g, sides[k]) for k, g in grads.items()}
        self.grads = grads

        def floor(g: Any, p: Any, previous: Any) -> Any:
            del previous  # donated: the outputs reuse its buffers, as a donated step does
            return {
                k: p[k] @ (p[k].T @ g[k]) if sides[k] == "left" else (g[k] @ p[k]) @ p[k].T
                for k in g
            }

        self.fn = jax.jit(floor, donate_argnums=2)
        self.out = self.fn(grads, self.p, jax.tree.map(jnp.zeros_like, grads))
        jax.block_until_ready(self.out)

    def run(self, reps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            self.out = self.fn(self.grads, self.p, self.out)
        jax.block_until_ready(self.out)
        return (time.perf_counter() - t0) / reps * 1e3


def interleave(cands: list[Any], rounds: int, reps: int) -> dict[str, float]:
    times: dict[str, list[float]] = {c.name: [] for c in cands}
    for _ in range(rounds):
        for c in cands:
            times[c.name].append(c.run(reps))
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--gap", type=int, default=200)
    ap.add_argument("--small", action="store_true", help="quarter-size matrices (smoke run)")
    args = ap.parse_args(argv)
    shapes = LLAMA_BLOCK if not args.small else [(m // 4, n // 4) for m, n in LLAMA_BLOCK]
    params = make_params(shapes)
    grads = make_params(shapes, seed=1)
    r, gap, lr = args.rank, args.gap, 1e-3
    # jaxlib's CPU LAPACK kernels run on scipy's OpenBLAS, whose idle threads spin
    # against XLA's own; import lowrank_optax limits it to one thread unless the
    # environment sets a count (docs/guides/cpu_threads.rst).
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}; OPENBLAS_NUM_THREADS={blas}; "
        f"{len(shapes)} matrices, {sum(m * n for m, n in shapes) / 1e6:.1f}M params, "
        f"rank {r}, gap {gap}\n"
    )

    def gal(proj_type: str, projector: Any, gap: int) -> optax.GradientTransformation:
        return lowrank.galore_adamw(
            lr, rank=r, update_proj_gap=gap, proj_type=proj_type, projector=projector
        )

    normal: list[Any] = [
        Candidate("optax.adamw", optax.adamw(lr), params, grads),
        Candidate(
            "optax.contrib.galore",
            optax.contrib.galore(lr, rank=r, update_proj_gap=gap),
            params,
            grads,
        ),
        Candidate("galore_adamw reverse_std", gal("reverse_std", "svd", gap), params, grads),
        Candidate("galore_adamw std", gal("std", "svd", gap), params, grads),
        Floor(params, grads, r, "reverse_std"),
        Floor(params, grads, r, "std"),
    ]
    normal_ms = interleave(normal, args.rounds, args.reps)

    # Refresh steps (update_proj_gap=1: every step refreshes) for the SVD and the
    # randomized range finder (library defaults p=10, q=1; and p=10, q=0). The
    # refresh's own cost is the refresh step minus the normal step of the same
    # layout (std), measured in the same run.
    refresh: list[Any] = [
        Candidate(
            "optax.contrib.galore",
            optax.contrib.galore(lr, rank=r, update_proj_gap=1),
            params,
            grads,
        ),
        Candidate("galore_adamw svd", gal("std", "svd", 1), params, grads),
        Candidate("galore_adamw randomized q=1", gal("std", "randomized", 1), params, grads),
        Candidate(
            "galore_adamw randomized q=0",
            gal("std", lowrank.randomized_projector(power_iterations=0), 1),
            params,
            grads,
        ),
    ]
    refresh_ms = interleave(refresh, max(3, args.rounds // 2), 1)

    def formula_mb(proj_type: str) -> float:
        """r·min + 2·r·max (std) or r·max + 2·r·min (reverse_std) float32 numbers per
        matrix, plus the scalars: two int32 step counts and the uint32[2] PRNG key."""
        total = 0
        for m, n in shapes:
            rr = min(r, m, n)
            small, large = min(m, n), max(m, n)
            total += (
                rr * small + 2 * rr * large if proj_type == "std" else (rr * large + 2 * rr * small)
            )
        return (total * 4 + 2 * 4 + 8) / 2**20

    adam = normal_ms["optax.adamw"]
    contrib = normal_ms["optax.contrib.galore"]
    print(f"{'normal step':32s} {'ms':>9s} {'/adamw':>8s} {'/contrib':>9s} {'state MB':>9s}")
    for c in normal:
        ms = normal_ms[c.name]
        print(f"{c.name:32s} {ms:9.2f} {ms / adam:8.2f} {ms / contrib:9.2f} {c.state_mb:9.2f}")
    for pt in ("reverse_std", "std"):
        ratio = normal_ms[f"galore_adamw {pt}"] / normal_ms[f"matmul floor ({pt})"]
        print(f"galore_adamw {pt} / its matmul floor: {ratio:.2f}")
    normal_std = normal_ms["galore_adamw std"]
    svd_cost = refresh_ms["galore_adamw svd"] - normal_std
    print(f"\n{'refresh step':32s} {'ms':>9s} {'refresh cost':>13s} {'svd/this':>9s}")
    for c in refresh:
        ms = refresh_ms[c.name]
        if c.name.startswith("galore_adamw"):
            cost = ms - normal_std
            print(f"{c.name:32s} {ms:9.1f} {cost:13.1f} {svd_cost / cost:9.1f}")
        else:
            print(f"{c.name:32s} {ms:9.1f}")
    by_name = {c.name: c.state_mb for c in normal}
    for pt in ("std", "reverse_std"):
        measured, formula = by_name[f"galore_adamw {pt}"], formula_mb(pt)
        print(
            f"state {pt}: measured {measured:.4f} MB, formula {formula:.4f} MB, "
            f"equal: {abs(measured - formula) < 1e-9}"
        )


if __name__ == "__main__":
    main()
