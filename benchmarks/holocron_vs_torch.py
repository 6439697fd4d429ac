"""Per-step time of the holocron.optim ports against holocron's torch step.

Parameter set: four 1024x1024 float32 matrices, fixed random gradients (the same
values for both sides). The JAX side times a jitted whole step
(``tx.update`` + ``optax.apply_updates``) with params and state donated; the torch
side times ``optimizer.step()`` of holocron 0.3.0 (imported without its vision
package, as in scripts/make_holocron_golden.py). Runs are interleaved: every
round times each candidate (JAX then torch) for ``--steps`` steps, and the table
reports the median per-step time over rounds and the ratio port / torch.

Usage::

    python benchmarks/holocron_vs_torch.py [--rounds 7] [--steps 12] [--threads N]
    taskset -c 1 python benchmarks/holocron_vs_torch.py --threads 1   # one core each

On a shared machine torch's multi-threaded kernels are very sensitive to other
load (its 2-thread timings vary by 10x); pinning the process to one core with
``--threads 1`` gives both sides the same, steadier resources.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import statistics
import sys
import time
import types
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import lowrank_optax as lowrank

SHAPES = [(1024, 1024)] * 4


def holocron_optim() -> types.ModuleType:
    spec = importlib.util.find_spec("holocron")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pylocron is not installed")
    if "holocron" not in sys.modules:
        stub = types.ModuleType("holocron")
        stub.__path__ = list(spec.submodule_search_locations)
        sys.modules["holocron"] = stub
    return importlib.import_module("holocron.optim")


def candidates(optim: types.ModuleType) -> list[tuple[str, Callable, Callable]]:
    """(name, port factory, torch factory taking the parameter list)."""
    lr = 1e-3
    return [
        (
            "lars",
            lambda: lowrank.lars(lr, momentum=0.9),
            lambda p: optim.LARS(p, lr=lr, momentum=0.9),
        ),
        ("lamb", lambda: lowrank.lamb(lr), lambda p: optim.LAMB(p, lr=lr)),
        ("ralars", lambda: lowrank.ralars(lr), lambda p: optim.RaLars(p, lr=lr)),
        ("tadam", lambda: lowrank.tadam(lr), lambda p: optim.TAdam(p, lr=lr)),
        ("adabelief", lambda: lowrank.adabelief(lr), lambda p: optim.AdaBelief(p, lr=lr)),
        ("adamp", lambda: lowrank.adamp(lr), lambda p: optim.AdamP(p, lr=lr)),
        ("adan", lambda: lowrank.adan(lr), lambda p: optim.Adan(p, lr=lr)),
        ("ademamix", lambda: lowrank.ademamix(lr), lambda p: optim.AdEMAMix(p, lr=lr)),
        (
            "lookahead(adam)",
            lambda: lowrank.lookahead(optax.adam(lr)),
            lambda p: optim.Lookahead(torch.optim.Adam(p, lr=lr)),
        ),
        (
            "scout(adam)",
            lambda: lowrank.scout(optax.adam(lr)),
            lambda p: optim.Scout(torch.optim.Adam(p, lr=lr)),
        ),
    ]


class JaxStep:
    def __init__(
        self, tx: optax.GradientTransformation, params: list[np.ndarray], grads: list[np.ndarray]
    ):
        def step(p: Any, s: Any, g: Any) -> tuple[Any, Any]:
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        self.step = jax.jit(step, donate_argnums=(0, 1))
        self.params = [jnp.asarray(x) for x in params]
        self.state = tx.init(self.params)
        self.grads = [jnp.asarray(x) for x in grads]
        self.run(2)  # compile and warm up

    def run(self, n: int) -> float:
        start = time.perf_counter()
        p, s = self.params, self.state
        for _ in range(n):
            p, s = self.step(p, s, self.grads)
        jax.block_until_ready((p, s))
        self.params, self.state = p, s
        return (time.perf_counter() - start) / n


class TorchStep:
    def __init__(self, factory: Callable, params: list[np.ndarray], grads: list[np.ndarray]):
        self.params = [torch.tensor(x, requires_grad=True) for x in params]
        for p, g in zip(self.params, grads, strict=True):
            p.grad = torch.tensor(g)
        self.opt = factory(self.params)
        self.run(2)

    @torch.no_grad()
    def run(self, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            self.opt.step()
        return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=12, help="steps per timed run (12 = 2 syncs)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--only", default="", help="comma-separated subset of optimizer names")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s, dtype=np.float32) * 0.02 for s in SHAPES]
    grads = [rng.standard_normal(s, dtype=np.float32) * 1e-3 for s in SHAPES]
    chosen = [
        c
        for c in candidates(holocron_optim())
        if not args.only or c[0].split("(")[0] in args.only.split(",")
    ]
    runners = [
        (name, JaxStep(port(), params, grads), TorchStep(ref, params, grads))
        for name, port, ref in chosen
    ]
    times: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n, _, _ in runners}
    for _ in range(args.rounds):
        for name, jx, th in runners:
            times[name][0].append(jx.run(args.steps))
            times[name][1].append(th.run(args.steps))
    print(
        f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); 4 x 1024x1024 float32; "
        f"median of {args.rounds} rounds x {args.steps} steps"
    )
    print(f"{'optimizer':18s} {'port ms':>9s} {'torch ms':>9s} {'port/torch':>11s}")
    for name, (jt, tt) in times.items():
        j, t = statistics.median(jt) * 1e3, statistics.median(tt) * 1e3
        print(f"{name:18s} {j:9.2f} {t:9.2f} {j / t:10.2f}x")


if __name__ == "__main__":
    main()
