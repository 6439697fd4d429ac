"""LORENZA step time on a small MLP, and range-finder vs SVD refresh time.

Part 1 prints the median time of a whole jitted training step (loss/gradient
evaluations included, params and optimizer state donated) on an MLP for
``optax.adamw``, ``lowrank.galore_adamw`` and ``lowrank.lorenza`` (with the
gradient at W computed every step, and only at refresh steps under
``lax.cond``), all at normal (non-refresh) steps. Runs of all candidates are
interleaved, round after round; ratios are against ``optax.adamw`` measured in
the same run.

Part 2 prints the time of one basis refresh on the LLaMA-block matrices of the
GaLore benchmark (4 x 1024x1024, 1024x2816, 2816x1024, 1024x2816) at rank 128:
thin SVD (``svd_factors``) vs the randomized range finder
(``randomized_factors``) with LORENZA's defaults (p = 0, q = 0) and with p = 10,
q = 1, plus each range finder's subspace error against the SVD basis on
matrices with a decaying spectrum (sigma_i = 1/i).

Usage::

    python benchmarks/lorenza.py [--rounds 7] [--reps 5] [--batch 256] [--width 1024]
                                 [--rank 128] [--num-probes 1] [--small] [--skip-refresh]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lowrank_optax as lowrank

LLAMA_BLOCK = [(1024, 1024)] * 4 + [(1024, 2816), (2816, 1024), (1024, 2816)]


# --- part 1: training step on an MLP ----------------------------------------------


def mlp_params(sizes: list[int], seed: int = 0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    params = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        params[f"w{i}"] = jnp.asarray(rng.standard_normal((a, b), dtype=np.float32) / np.sqrt(a))
        params[f"b{i}"] = jnp.zeros(b, jnp.float32)
    return params


def mlp_loss(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
    n = len(params) // 2
    h = x
    for i in range(n):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < n - 1:
            h = jax.nn.relu(h)
    return optax.softmax_cross_entropy_with_integer_labels(h, y).mean()


class StepCandidate:
    """A jitted, donated training step, first run once (refresh + compile)."""

    def __init__(self, name: str, make_step: Callable, tx: Any, params: Any, batch: tuple):
        self.name = name
        self.batch = batch
        self.step = jax.jit(make_step(tx), donate_argnums=(0, 1))
        self.params = jax.tree.map(jnp.copy, params)
        self.state = tx.init(self.params)
        self.params, self.state = self.step(self.params, self.state, *batch)  # step 0: refresh
        jax.block_until_ready(self.params)

    def run(self, reps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            self.params, self.state = self.step(self.params, self.state, *self.batch)
        jax.block_until_ready((self.params, self.state))
        return (time.perf_counter() - t0) / reps * 1e3


def plain_step(tx: Any) -> Callable:
    def step(params: Any, state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any]:
        grads = jax.grad(mlp_loss)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def lorenza_step(gap: int, refresh_only: bool) -> Callable[[Any], Callable]:
    def make(tx: Any) -> Callable:
        def step(params: Any, state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any]:
            fns = lowrank.make_value_and_grad_fns(mlp_loss, x, y)
            if refresh_only:  # the gradient at W is only read at refreshes
                count = state[0].count
                grads = jax.lax.cond(
                    count % gap == 0,
                    fns["grad_fn"],
                    lambda p: jax.tree.map(jnp.zeros_like, p),
                    params,
                )
            else:
                grads = fns["grad_fn"](params)
            updates, state = tx.update(grads, state, params, **fns)
            return optax.apply_updates(params, updates), state

        return step

    return make


def interleave(cands: list[Any], rounds: int, reps: int) -> dict[str, float]:
    times: dict[str, list[float]] = {c.name: [] for c in cands}
    for _ in range(rounds):
        for c in cands:
            times[c.name].append(c.run(reps))
    return {k: statistics.median(v) for k, v in times.items()}


# --- part 2: refresh ------------------------------------------------------------------


class RefreshCandidate:
    def __init__(self, name: str, fn: Callable, mats: list[jax.Array]):
        self.name = name
        self.mats = mats
        self.fn = jax.jit(fn)
        jax.block_until_ready(self.fn(mats))

    def run(self, reps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            out = self.fn(self.mats)
        jax.block_until_ready(out)
        return (time.perf_counter() - t0) / reps * 1e3


def decaying(m: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = min(m, n)
    u, _ = np.linalg.qr(rng.standard_normal((m, k)))
    v, _ = np.linalg.qr(rng.standard_normal((n, k)))
    return ((u / np.arange(1, k + 1)) @ v.T).astype(np.float32)


def subspace_error(u: np.ndarray, u_ref: np.ndarray) -> float:
    """‖(I − U Uᵀ) U_ref‖_F / √r: root-mean-square sine of the principal angles."""
    u, u_ref = u.astype(np.float64), u_ref.astype(np.float64)
    return float(np.linalg.norm(u_ref - u @ (u.T @ u_ref)) / np.sqrt(u_ref.shape[1]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--num-probes", type=int, default=1)
    ap.add_argument("--small", action="store_true", help="quarter-size everything (smoke run)")
    ap.add_argument("--skip-refresh", action="store_true", help="only the training-step part")
    args = ap.parse_args(argv)
    div = 4 if args.small else 1
    width, rank = args.width // div, args.rank // div
    sizes = [512 // div, width, width, 10]
    params = mlp_params(sizes)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((args.batch, sizes[0]), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, args.batch))
    gap, lr = 10**6, 1e-3  # one refresh at step 0 (before timing), then normal steps
    n_params = sum(p.size for p in params.values())
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}; MLP {sizes} "
        f"({n_params / 1e6:.2f}M params), batch {args.batch}, rank {rank}, "
        f"num_probes {args.num_probes}\n"
    )

    lorenza = lowrank.lorenza(lr, rank=rank, update_proj_gap=gap, num_probes=args.num_probes)
    cands = [
        StepCandidate("optax.adamw", plain_step, optax.adamw(lr), params, (x, y)),
        StepCandidate(
            "galore_adamw (svd)",
            plain_step,
            lowrank.galore_adamw(lr, rank=rank, update_proj_gap=gap),
            params,
            (x, y),
        ),
        StepCandidate(
            "lorenza (grad at W every step)",
            lorenza_step(gap, refresh_only=False),
            lorenza,
            params,
            (x, y),
        ),
        StepCandidate(
            "lorenza (grad at W at refresh)",
            lorenza_step(gap, refresh_only=True),
            lorenza,
            params,
            (x, y),
        ),
    ]
    step_ms = interleave(cands, args.rounds, args.reps)
    base = step_ms["optax.adamw"]
    print(f"{'training step (normal)':34s} {'ms':>9s} {'/adamw':>8s}")
    for c in cands:
        print(f"{c.name:34s} {step_ms[c.name]:9.2f} {step_ms[c.name] / base:8.2f}")

    if args.skip_refresh:
        return
    # Part 2: refresh on the LLaMA-block matrices.
    shapes = [(m // div, n // div) for m, n in LLAMA_BLOCK]
    mats = [
        jnp.asarray(np.random.default_rng(i).standard_normal(s, dtype=np.float32))
        for i, s in enumerate(shapes)
    ]
    key = jax.random.PRNGKey(0)

    def svd_all(ms: list[jax.Array]) -> list[Any]:
        return [lowrank.svd_factors(g, rank) for g in ms]

    def rf_all(p: int, q: int) -> Callable:
        def run(ms: list[jax.Array]) -> list[Any]:
            return [
                lowrank.randomized_factors(
                    g, rank, jax.random.fold_in(key, i), oversampling=p, power_iterations=q
                )
                for i, g in enumerate(ms)
            ]

        return run

    refresh = [
        RefreshCandidate("svd", svd_all, mats),
        RefreshCandidate("range finder p=0 q=0 (lorenza)", rf_all(0, 0), mats),
        RefreshCandidate("range finder p=10 q=1", rf_all(10, 1), mats),
    ]
    refresh_ms = interleave(refresh, max(3, args.rounds // 2), 1)

    # Accuracy on decaying-spectrum matrices (not timed).
    dec = [jnp.asarray(decaying(m, n, i)) for i, (m, n) in enumerate(shapes)]
    ref = [np.asarray(u) for u, _ in refresh[0].fn(dec)]
    errors = {
        c.name: float(np.mean([subspace_error(np.asarray(u), r) for (u, _), r in
                               zip(c.fn(dec), ref, strict=True)]))
        for c in refresh[1:]
    }  # fmt: skip

    svd_ms = refresh_ms["svd"]
    (m0, n0), rest = shapes[0], ", ".join(f"{m}x{n}" for m, n in shapes[4:])
    print(f"\nrefresh of 4 x {m0}x{n0}, {rest} at rank {rank}")
    print(f"{'refresh':34s} {'ms':>9s} {'svd/this':>9s} {'sin err':>9s}")
    for c in refresh:
        err = errors.get(c.name, 0.0)
        print(f"{c.name:34s} {refresh_ms[c.name]:9.1f} {svd_ms / refresh_ms[c.name]:9.1f} "
              f"{err:9.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
