"""Loads tests/golden/holocron.npz (written by scripts/make_holocron_golden.py)
and runs lowrank_optax ports on its teacher-forced gradient sequences."""

import functools
import json
import pathlib
from typing import Any

import jax
import numpy as np
import optax

import lowrank_optax as lowrank

PATH = pathlib.Path(__file__).resolve().parent / "golden" / "holocron.npz"


@functools.cache
def golden() -> dict[str, Any]:
    with np.load(PATH) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays.pop("__meta__")))
    return {"arrays": arrays, "steps": meta["steps"], "cases": meta["cases"]}


def cases(kind: str) -> list[dict[str, Any]]:
    return [c for c in golden()["cases"] if c["kind"] == kind]


def case(name: str) -> dict[str, Any]:
    return next(c for c in golden()["cases"] if c["name"] == name)


def _leaves(prefix: str) -> dict[str, np.ndarray]:
    arrays = golden()["arrays"]
    return {k.rsplit("/", 1)[1]: v for k, v in arrays.items() if k.startswith(prefix + "/")}


def problem(name: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(initial params, gradients of shape (steps, ...))`` of a golden problem."""
    return _leaves(f"params/{name}"), _leaves(f"grads/{name}")


def trajectory(name: str) -> dict[str, np.ndarray]:
    """holocron's parameters after steps ``0..steps`` for a golden case."""
    return _leaves(f"traj/{name}")


def inner_optimizer(spec: dict[str, Any]) -> optax.GradientTransformation:
    spec = dict(spec)
    return getattr(optax, spec.pop("name"))(**spec)


def port(c: dict[str, Any], **overrides: Any) -> optax.GradientTransformation:
    """The lowrank_optax optimizer of a golden case (port kwargs + overrides)."""
    kwargs = dict(c["ours"], **overrides)
    if "scale_clip" in kwargs:
        kwargs["scale_clip"] = tuple(kwargs["scale_clip"])
    factory = getattr(lowrank, c["optimizer"])
    if "inner" in kwargs:
        return factory(inner_optimizer(kwargs.pop("inner")), **kwargs)
    return factory(**kwargs)


def run(
    tx: optax.GradientTransformation,
    params: dict[str, np.ndarray],
    grads: dict[str, np.ndarray],
    steps: int,
) -> dict[str, np.ndarray]:
    """Teacher-forced run in float64 (call inside ``jax.enable_x64(True)``)."""

    @jax.jit
    def step(p: Any, s: Any, g: Any) -> tuple[Any, Any]:
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    p = {k: jax.numpy.asarray(v, jax.numpy.float64) for k, v in params.items()}
    s = tx.init(p)
    out = {k: [np.asarray(v)] for k, v in p.items()}
    for t in range(steps):
        p, s = step(p, s, {k: jax.numpy.asarray(v[t]) for k, v in grads.items()})
        for k, v in p.items():
            out[k].append(np.asarray(v))
    return {k: np.stack(v) for k, v in out.items()}
