"""GaLore vs AdamW on a CPU device mesh: step time and optimizer state per device.

Simulates 8 CPU devices (set before JAX is imported) and, for meshes of 1, 2, 4
and 8 devices, shards the LLaMA-block matrices of ``benchmarks/galore.py`` along
their rows, builds the optimizer state with ``lowrank.state_sharding`` and times
a jitted, donated normal step (median of interleaved rounds). State bytes per
device are the bytes of the shards that device 0 holds.

Usage::

    python benchmarks/galore_mesh.py [--rounds 5] [--reps 2] [--small]
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8"
    # Simulated devices share the host's threads: let slow collectives wait.
    + " --xla_cpu_collective_call_terminate_timeout_seconds=600"
    + " --xla_cpu_collective_timeout_seconds=600"
).strip()

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import lowrank_optax as lowrank  # noqa: E402

LLAMA_BLOCK = [(1024, 1024)] * 4 + [(1024, 2816), (2816, 1024), (1024, 2816)]


def per_device_bytes(tree: Any) -> int:
    device = jax.devices()[0]
    total = 0
    for x in jax.tree.leaves(tree):
        for shard in x.addressable_shards:
            if shard.device == device:
                total += shard.data.nbytes
    return total


class MeshStep:
    def __init__(self, name: str, tx: optax.GradientTransformation, n: int, shapes: list) -> None:
        self.name, self.n = name, n
        mesh = Mesh(np.array(jax.devices()[:n]), ("x",))
        rng = np.random.default_rng(0)
        host = {
            f"w{i}": rng.standard_normal(s, dtype=np.float32) * 0.02 for i, s in enumerate(shapes)
        }
        self.sharding = {k: NamedSharding(mesh, P("x", None)) for k in host}
        self.params = jax.device_put(host, self.sharding)
        self.grads = jax.device_put({k: v * 0.5 for k, v in host.items()}, self.sharding)
        state_sharding = lowrank.state_sharding(tx, self.params, self.sharding)
        self.state = jax.jit(tx.init, out_shardings=state_sharding)(self.params)

        def step(p: Any, s: Any, g: Any) -> tuple[Any, Any]:
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        self.step = jax.jit(
            step, donate_argnums=(0, 1), out_shardings=(self.sharding, state_sharding)
        )
        self.run(1)  # compile and take the refresh step (gap is large)
        self.state_bytes = per_device_bytes(self.state)

    def run(self, reps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            self.params, self.state = self.step(self.params, self.state, self.grads)
            # Simulated devices share threads: finish a step before the next one.
            jax.block_until_ready(self.params)
        return (time.perf_counter() - t0) / reps * 1e3


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--small", action="store_true", help="quarter-size matrices")
    args = ap.parse_args(argv)
    shapes = LLAMA_BLOCK if not args.small else [(m // 4, n // 4) for m, n in LLAMA_BLOCK]
    txs = {
        "optax.adamw": lambda: optax.adamw(1e-3),
        "galore_adamw": lambda: lowrank.galore_adamw(1e-3, rank=args.rank, update_proj_gap=10**6),
    }
    cands = [MeshStep(name, make(), n, shapes) for n in (1, 2, 4, 8) for name, make in txs.items()]
    times: dict[tuple[str, int], list[float]] = {(c.name, c.n): [] for c in cands}
    for _ in range(args.rounds):
        for c in cands:
            times[(c.name, c.n)].append(c.run(args.reps))
    print(f"jax {jax.__version__}, {len(shapes)} matrices sharded P('x', None), rank {args.rank}")
    print(
        f"{'optimizer':14s} {'devices':>7s} {'step ms':>9s} {'state MB/device':>16s}"
        f" {'vs adamw (same mesh)':>21s}"
    )
    for c in cands:
        ms = statistics.median(times[(c.name, c.n)])
        adam = next(a for a in cands if a.name == "optax.adamw" and a.n == c.n)
        ratio = c.state_bytes / adam.state_bytes
        print(f"{c.name:14s} {c.n:7d} {ms:9.1f} {c.state_bytes / 2**20:16.2f} {ratio:21.2f}")


if __name__ == "__main__":
    main()
