"""Steps that call LAPACK, default environment vs ``OPENBLAS_NUM_THREADS=1``, under load.

jaxlib's CPU decompositions run on SciPy's OpenBLAS, whose idle workers spin
against XLA's threads; ``import lowrank_optax`` limits that pool to one thread
unless the user configured it (``docs/guides/cpu_threads.rst``). This benchmark
shows the effect where it matters most: with a second process keeping every
core busy (NumPy matrix products on all cores; ``--no-load`` to skip it).

Each environment runs in its own worker process (OpenBLAS reads its variables
when it is loaded):

* ``default``: nothing set, what a user gets;
* ``OPENBLAS_NUM_THREADS=1``: the single-threaded reference;
* ``opt-out``: ``LOWRANK_OPTAX_BLAS_THREADS=keep``, i.e. OpenBLAS's own default
  (one thread per core), the behaviour before the library limited it.

Steps (jitted, params and state donated):

* ``lrg_adam svd`` / ``lrg_adam randomized``: the main job's whole LRG-Adam
  training step on the mnist1d MLP (batch 64, rank 20; exact SVD, and the
  randomized default);
* ``galore refresh``: a ``galore_adamw`` step that refreshes every projector
  (``update_proj_gap=1``, SVD projector, rank 32) on a quarter-size LLaMA block
  (seven matrices, 256 x 256 to 256 x 704).

Workers are timed one at a time, interleaved round after round; the table prints
the median per-step milliseconds and the ratios to ``OPENBLAS_NUM_THREADS=1``
measured in the same run.

``--cost`` instead measures what one thread costs on an idle machine, in one
process, switching the limited library between one thread and one per core with
threadpoolctl (interleaved): a jitted ``jnp.linalg.svd`` of the 1313 x 1313
matrix LRG-Adam's exact path decomposes on a 1.7M-parameter model, SciPy's own
``scipy.linalg.svd`` (a user's SciPy work) and, as a control, a NumPy matrix
product (NumPy's separate OpenBLAS, never limited).

Usage::

    python3 benchmarks/blas_threads.py [--rounds 5] [--steps 20] [--refresh-steps 4]
    python3 benchmarks/blas_threads.py --cost [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

ENVIRONMENTS = {
    "default": {},
    "OPENBLAS_NUM_THREADS=1": {"OPENBLAS_NUM_THREADS": "1"},
    "opt-out": {"LOWRANK_OPTAX_BLAS_THREADS": "keep"},
}
BLAS_VARS = (
    "OPENBLAS_NUM_THREADS",
    "GOTO_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "LOWRANK_OPTAX_BLAS_THREADS",
)
QUARTER_LLAMA_BLOCK = [(256, 256)] * 4 + [(256, 704), (704, 256), (256, 704)]

# Keeps every core busy: NumPy's own OpenBLAS, one thread per core, on 512x512 products.
LOAD_SOURCE = """
import numpy as np
a = np.random.default_rng(0).standard_normal((512, 512))
while True:
    a = np.tanh(a @ a)
"""


def build_steps(rank: int = 20) -> dict[str, Any]:
    """``name -> run(steps) -> median ms`` for every timed step (in the worker)."""
    import pathlib

    import jax.numpy as jnp
    import numpy as np

    import lowrank_optax as lowrank

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    import lrg as lrg_bench

    steps: dict[str, Any] = {}
    mlp = lrg_bench.mlp_model()
    for projector in ("svd", "randomized"):
        tx = lowrank.lrg_adam(1e-3, rank=rank, projector=projector)
        steps[f"lrg_adam {projector}"] = lrg_bench.Candidate(projector, tx, mlp)

    rng = np.random.default_rng(0)
    params = {
        f"w{i}": jnp.asarray(rng.standard_normal(s, dtype=np.float32) * 0.02)
        for i, s in enumerate(QUARTER_LLAMA_BLOCK)
    }
    grads = {
        k: jnp.asarray(rng.standard_normal(v.shape, dtype=np.float32)) for k, v in params.items()
    }
    tx = lowrank.galore_adamw(1e-3, rank=32, update_proj_gap=1)
    galore = (params, lambda p, g: sum(jnp.vdot(p[k], g[k]) for k in p), grads)
    steps["galore refresh"] = lrg_bench.Candidate("galore", tx, galore)
    return steps


def cost(rounds: int) -> dict[str, dict[int, float]]:
    """Milliseconds of LAPACK-heavy calls with 1 and ``cpu_count`` threads (no load)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import scipy.linalg
    from threadpoolctl import ThreadpoolController

    from lowrank_optax._src import cpu_threads

    limited = cpu_threads.applied["libraries"]
    if not limited:
        raise SystemExit(f"nothing limited here ({cpu_threads.applied['reason']})")
    controller = ThreadpoolController().select(filepath=limited)
    rng = np.random.default_rng(0)
    g = jnp.asarray(rng.standard_normal((1313, 1313)), jnp.float32)
    a = rng.standard_normal((1500, 1500))
    b = rng.standard_normal((2000, 2000))
    svd = jax.jit(lambda x: jnp.linalg.svd(x, full_matrices=False))
    jax.block_until_ready(svd(g))
    calls = {
        "jnp.linalg.svd 1313x1313 f32 (jitted)": lambda: jax.block_until_ready(svd(g)),
        "scipy.linalg.svd 1500x1500 f64": lambda: scipy.linalg.svd(a),
        "numpy matmul 2000x2000 f64 (control)": lambda: b @ b,
    }
    counts = sorted({1, os.cpu_count() or 1})
    times: dict[str, dict[int, list[float]]] = {k: {n: [] for n in counts} for k in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            for n in counts:
                with controller.limit(limits=n):
                    t0 = time.perf_counter()
                    call()
                    times[name][n].append((time.perf_counter() - t0) * 1e3)
    print(f"median ms over {rounds} interleaved rounds, no load; limited: {limited}")
    print("| call | " + " | ".join(f"{n} thread(s) ms" for n in counts) + " | 1 / max |")
    print("|" + "---|" * (len(counts) + 2))
    result = {}
    for name in calls:
        med = {n: statistics.median(times[name][n]) for n in counts}
        result[name] = med
        cells = " | ".join(f"{med[n]:.1f}" for n in counts)
        print(f"| {name} | {cells} | {med[1] / med[counts[-1]]:.2f}x |")
    return result


def worker() -> None:
    """Builds the steps, then answers ``<name> <steps>`` lines with a median in ms."""
    from lowrank_optax._src import cpu_threads

    steps = build_steps()
    print(json.dumps({"ready": sorted(steps), "applied": cpu_threads.applied}), flush=True)
    for line in sys.stdin:
        name, count = line.rsplit(" ", 1)
        print(json.dumps({"ms": steps[name].run(int(count))}), flush=True)


def clean_environment(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in BLAS_VARS}
    env.update(extra)
    return env


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20, help="LRG steps per timed call (median)")
    ap.add_argument(
        "--refresh-steps", type=int, default=4, help="GaLore refresh steps per timed call"
    )
    ap.add_argument("--no-load", action="store_true", help="no background load process")
    ap.add_argument("--cost", action="store_true", help="idle-machine cost of one thread")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker()
        return {}
    if args.cost:
        return cost(args.rounds)

    workers: dict[str, subprocess.Popen] = {}
    load = None
    try:
        for env_name, extra in ENVIRONMENTS.items():
            workers[env_name] = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=clean_environment(extra),
            )
        names: list[str] = []
        for env_name, proc in workers.items():
            hello = json.loads(proc.stdout.readline())
            names = hello["ready"]
            print(
                f"{env_name:24s} threads set at import: {hello['applied']['threads']} "
                f"({hello['applied']['reason']})"
            )
        if not args.no_load:
            load_env = clean_environment({"OPENBLAS_NUM_THREADS": str(os.cpu_count())})
            load = subprocess.Popen([sys.executable, "-c", LOAD_SOURCE], env=load_env)
            time.sleep(2.0)  # let the load reach every core
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for name in names:
                steps = args.refresh_steps if name.startswith("galore") else args.steps
                for env_name, proc in workers.items():
                    proc.stdin.write(f"{name} {steps}\n")
                    proc.stdin.flush()
                    ms = json.loads(proc.stdout.readline())["ms"]
                    times.setdefault((name, env_name), []).append(ms)
                    print(
                        f"  round {len(times[name, env_name])} {name:22s} {env_name:24s} "
                        f"{ms:9.2f} ms",
                        flush=True,
                    )
    finally:
        if load is not None:
            load.kill()
            load.wait()
        for proc in workers.values():
            proc.stdin.close()
            proc.wait(timeout=60)

    ref = "OPENBLAS_NUM_THREADS=1"
    load_note = (
        "no load" if args.no_load else f"a second process keeping all {os.cpu_count()} cores busy"
    )
    print(
        f"\nmedian ms per step over {args.rounds} interleaved rounds of {args.steps} LRG steps "
        f"/ {args.refresh_steps} GaLore refresh steps; {load_note}"
    )
    header = "| step | " + " | ".join(f"{e} ms" for e in ENVIRONMENTS)
    header += " | default / 1 thread | opt-out / 1 thread |"
    print(header + "\n|" + "---|" * (len(ENVIRONMENTS) + 3))
    result: dict[str, dict[str, float]] = {}
    for name in names:
        med = {e: statistics.median(times[name, e]) for e in ENVIRONMENTS}
        result[name] = med
        cells = " | ".join(f"{med[e]:.2f}" for e in ENVIRONMENTS)
        print(
            f"| {name} | {cells} | {med['default'] / med[ref]:.2f}x | "
            f"{med['opt-out'] / med[ref]:.2f}x |"
        )
    return result


if __name__ == "__main__":
    main()
