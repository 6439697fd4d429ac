"""GaLore on a CPU device mesh: step time, state per device, and the sharded refresh.

Simulates 8 CPU devices (set before JAX is imported). Two tables:

* ``--part step``: for meshes of 1, 2, 4 and 8 devices, the LLaMA-block matrices
  of ``benchmarks/galore.py`` sharded along their rows, the optimizer state built
  with ``lowrank.state_sharding``, the median time of a jitted, donated normal
  step (interleaved rounds) and the state bytes device 0 holds.
* ``--part refresh``: the randomized refresh (``randomized_projector()``: K = r +
  10, one power iteration) on the gradient as it is sharded ("sharded", the
  library) against the same range finder on a gradient all-gathered first
  ("gather": what the library did before, each device then repeats the whole
  computation), on 8 devices with rows sharded (``P('fsdp', None)``, mesh (8,))
  and with a 2-D ``P('fsdp', 'tp')`` layout (mesh (4, 2)), Explicit axes. Per
  variant: the refresh-only function's time (every projected leaf's factors,
  jitted) and its peak temporary bytes per device from XLA's compiled
  ``memory_analysis()``, and the same for a whole refresh step of
  ``galore_adamw`` (``update_proj_gap=1``, params and state donated). On one
  device (a GPU, or ``--devices 1``) it times the refresh without a mesh.

Usage::

    python benchmarks/galore_mesh.py [--part all|step|refresh] [--rounds 5] [--reps 2]
        [--rank 128] [--small] [--devices 8]
    # on one GPU (the forced CPU device count does not apply to GPUs):
    python benchmarks/galore_mesh.py --part refresh
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
import dataclasses  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import lowrank_optax as lowrank  # noqa: E402
from lowrank_optax._src import projectors  # noqa: E402
from lowrank_optax._src.linalg import randomized_factors_checked  # noqa: E402
from lowrank_optax._src.sharding import explicit_spec  # noqa: E402
from lowrank_optax._src.subspace import DimensionNumbers, LeafPlan, make_plan  # noqa: E402

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


def step_table(args: argparse.Namespace, shapes: list) -> None:
    txs = {
        "optax.adamw": lambda: optax.adamw(1e-3),
        "galore_adamw": lambda: lowrank.galore_adamw(1e-3, rank=args.rank, update_proj_gap=10**6),
    }
    counts = [n for n in (1, 2, 4, 8) if n <= args.devices]
    cands = [MeshStep(name, make(), n, shapes) for n in counts for name, make in txs.items()]
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


# -- the refresh on a sharded gradient --------------------------------------------


@dataclasses.dataclass(frozen=True)
class GatheredRandomized(projectors.RandomizedProjector):
    """The library's range finder run on the gradient all-gathered first (the old path)."""

    def factors(self, g: jax.Array, plan: LeafPlan, key: jax.Array) -> projectors.ProjectorResult:
        return projectors.ProjectorResult(
            *randomized_factors_checked(
                projectors._gathered(g, plan),
                plan.rank,
                key,
                oversampling=self.oversampling,
                power_iterations=self.power_iterations,
                sides=projectors._SIDES[plan.side],
            )
        )


VARIANTS = {"sharded": lowrank.randomized_projector(), "gather": GatheredRandomized()}


def refresh_only(projector: projectors.Projector, rank: int) -> Any:
    """Every leaf's factors at one refresh (``proj_type='std'``), nothing else."""

    def refresh(grads: Any, key: jax.Array) -> Any:
        out = {}
        for i, (name, g) in enumerate(sorted(grads.items())):
            plan = make_plan(
                g.shape, DimensionNumbers(0, 1), rank=rank, proj_type="std", spec=explicit_spec(g)
            )
            out[name] = projector.factors(g, plan, jax.random.fold_in(key, i))
        return out

    return refresh


def temp_mb(compiled: Any) -> float:
    """Peak temporary bytes per device of a compiled function (XLA's memory analysis)."""
    stats = compiled.memory_analysis()
    return float("nan") if stats is None else stats.temp_size_in_bytes / 2**20


class Refresh:
    """A variant's refresh-only function and refresh step (gap 1) on one layout."""

    def __init__(self, layout: str, variant: str, mesh: Mesh | None, spec: P, args: Any) -> None:
        self.layout, self.variant = layout, variant
        projector = VARIANTS[variant]
        host = {
            f"w{i}": np.random.default_rng(i).standard_normal(s, dtype=np.float32) * 0.02
            for i, s in enumerate(args.shapes)
        }
        tx = lowrank.galore_adamw(1e-3, rank=args.rank, update_proj_gap=1, projector=projector)
        key = jax.random.PRNGKey(0)
        if mesh is None:
            self.params, self.grads = jax.device_put(host), jax.device_put(host)
            self.state = tx.init(self.params)
            out_shardings: Any = None
        else:
            sharding = {k: NamedSharding(mesh, spec) for k in host}
            self.params = jax.device_put(host, sharding)
            self.grads = jax.device_put(host, sharding)
            state_sharding = lowrank.state_sharding(tx, self.params, sharding)
            self.state = jax.jit(tx.init, out_shardings=state_sharding)(self.params)
            out_shardings = (sharding, state_sharding)

        def step(p: Any, s: Any, g: Any) -> tuple[Any, Any]:
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        jit_kw = {} if out_shardings is None else {"out_shardings": out_shardings}
        self.step = (
            jax.jit(step, donate_argnums=(0, 1), **jit_kw)
            .lower(self.params, self.state, self.grads)
            .compile()
        )
        self.refresh = jax.jit(refresh_only(projector, args.rank)).lower(self.grads, key).compile()
        self.key = key
        self.refresh_temp, self.step_temp = temp_mb(self.refresh), temp_mb(self.step)
        self.run_refresh(1)
        self.run_step(1)

    def run_refresh(self, reps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            jax.block_until_ready(self.refresh(self.grads, self.key))
        return (time.perf_counter() - t0) / reps * 1e3

    def run_step(self, reps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            self.params, self.state = self.step(self.params, self.state, self.grads)
            jax.block_until_ready(self.params)
        return (time.perf_counter() - t0) / reps * 1e3


def refresh_table(args: argparse.Namespace) -> None:
    devices = jax.devices()[: args.devices]
    if len(devices) == 1:
        layouts = [("1 device, no mesh", None, P())]
        variants = ["sharded"]  # without a mesh both variants are the same program
    else:
        n = len(devices)
        explicit = (AxisType.Explicit,)
        layouts = [
            (
                f"({n},) P('fsdp', None)",
                Mesh(np.array(devices), ("fsdp",), axis_types=explicit),
                P("fsdp", None),
            ),
            (
                f"({n // 2}, 2) P('fsdp', 'tp')",
                Mesh(np.array(devices).reshape(n // 2, 2), ("fsdp", "tp"), axis_types=explicit * 2),
                P("fsdp", "tp"),
            ),
        ]
        variants = ["gather", "sharded"]
    cands = []
    for layout, mesh, spec in layouts:
        for variant in variants:
            if mesh is None:
                cands.append(Refresh(layout, variant, None, spec, args))
            else:
                with jax.set_mesh(mesh):
                    cands.append(Refresh(layout, variant, mesh, spec, args))
    refresh_ms: dict[int, list[float]] = {i: [] for i in range(len(cands))}
    step_ms: dict[int, list[float]] = {i: [] for i in range(len(cands))}
    for _ in range(args.rounds):  # interleaved: every candidate once per round
        for i, c in enumerate(cands):
            refresh_ms[i].append(c.run_refresh(args.reps))
            step_ms[i].append(c.run_step(args.reps))
    device = devices[0]
    print(
        f"\njax {jax.__version__} on {len(devices)} {device.platform} device(s) "
        f"({device.device_kind}); {len(args.shapes)} matrices, rank {args.rank}, "
        "randomized_projector() (K = r + 10, q = 1)"
        + (", Explicit axes" if len(devices) > 1 else ", no mesh")
    )
    print(
        f"{'layout':26s} {'refresh':8s} {'refresh ms':>11s} {'temp MB/dev':>12s}"
        f" {'refresh step ms':>16s} {'step temp MB/dev':>17s} {'gather/sharded':>15s}"
    )
    for i, c in enumerate(cands):
        ms = statistics.median(refresh_ms[i])
        sms = statistics.median(step_ms[i])
        gathered = [
            j for j, o in enumerate(cands) if o.layout == c.layout and o.variant == "gather"
        ]
        ratio = (
            f"{statistics.median(refresh_ms[gathered[0]]) / ms:15.2f}"
            if gathered and c.variant == "sharded"
            else f"{'':15s}"
        )
        print(
            f"{c.layout:26s} {c.variant:8s} {ms:11.1f} {c.refresh_temp:12.2f}"
            f" {sms:16.1f} {c.step_temp:17.2f} {ratio}"
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("all", "step", "refresh"), default="all")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--devices", type=int, default=8, help="devices to use (1: no mesh)")
    ap.add_argument("--small", action="store_true", help="quarter-size matrices")
    args = ap.parse_args(argv)
    args.devices = min(args.devices, jax.device_count())
    args.shapes = LLAMA_BLOCK if not args.small else [(m // 4, n // 4) for m, n in LLAMA_BLOCK]
    if args.part in ("all", "step") and jax.default_backend() == "cpu":
        step_table(args, args.shapes)
    if args.part in ("all", "refresh"):
        refresh_table(args)


if __name__ == "__main__":
    main()
