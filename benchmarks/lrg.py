"""Cost of the LRG filter: a jitted lrg_adam step against an optax.adam step.

For MLP-shaped parameter trees of growing size N, both steps are jitted with params
and state donated. They are run interleaved (adam, lrg_adam, adam, ...), and the table
prints the median per-step time and the ratio to Adam measured in the same run. The
filter costs one SVD of a ceil(sqrt(N)) x ceil(sqrt(N)) matrix, so the ratio grows
like N^1.5 / N.

Usage::

    python3 benchmarks/lrg.py [--repeats 30] [--sizes 14154,100000,400000]
"""

import argparse
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lowrank_optax as lowrank


def mlp_params(n_target: int, key: jax.Array) -> dict[str, dict[str, jax.Array]]:
    """A 3-layer MLP-shaped tree (40 -> h -> h/2 -> 10) with about n_target parameters."""
    # 40h + h + h*h/2 + h/2 + 5h + 10 ~= n_target
    h = int((-46.5 + math.sqrt(46.5**2 + 2 * (n_target - 10))) / 1.0)
    h = max(2, h - h % 2)
    dims = [40, h, h // 2, 10]
    keys = jax.random.split(key, len(dims) - 1)
    return {
        f"Dense_{i}": {
            "bias": jnp.zeros((dims[i + 1],)),
            "kernel": jax.random.normal(keys[i], (dims[i], dims[i + 1])) / math.sqrt(dims[i]),
        }
        for i in range(len(dims) - 1)
    }


def make_step(tx: optax.GradientTransformation):
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--sizes", default="14154,100000,400000")
    parser.add_argument("--rank", type=int, default=20)
    args = parser.parse_args(argv)
    print(f"backend: {jax.default_backend()}, rank {args.rank}, median of {args.repeats}")
    print("| N | s | adam ms | lrg_adam ms | ratio |\n|---|---|---|---|---|")
    for n_target in (int(s) for s in args.sizes.split(",")):
        params0 = mlp_params(n_target, jax.random.key(0))
        n = sum(x.size for x in jax.tree.leaves(params0))
        grads = jax.tree.map(lambda x: jnp.full_like(x, 1e-3) + 1e-4 * x, params0)
        txs = {"adam": optax.adam(1e-3), "lrg_adam": lowrank.lrg_adam(1e-3, rank=args.rank)}
        runs = {}
        for name, tx in txs.items():
            params = jax.tree.map(jnp.array, params0)
            runs[name] = [make_step(tx), params, tx.init(params)]
            for _ in range(3):  # warm-up (compilation)
                step, p, s = runs[name]
                runs[name][1:] = step(p, s, grads)
            jax.block_until_ready(runs[name][1])
        times = {name: [] for name in txs}
        for _ in range(args.repeats):
            for name in txs:  # interleaved
                step, p, s = runs[name]
                t0 = time.perf_counter()
                p, s = step(p, s, grads)
                jax.block_until_ready(p)
                times[name].append(time.perf_counter() - t0)
                runs[name][1:] = [p, s]
        adam_ms = 1e3 * float(np.median(times["adam"]))
        lrg_ms = 1e3 * float(np.median(times["lrg_adam"]))
        side = math.isqrt(n - 1) + 1
        print(f"| {n:,} | {side} | {adam_ms:.3f} | {lrg_ms:.3f} | {lrg_ms / adam_ms:.1f}x |")


if __name__ == "__main__":
    main()
