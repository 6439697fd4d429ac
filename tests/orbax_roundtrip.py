"""Shared orbax save → restore → continue check (used on one device and on a mesh)."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp


def run(tx: optax.GradientTransformation, params: Any, grads: list[Any], step_fn: Callable) -> Any:
    state = tx.init(params)
    for g in grads:
        params, state = step_fn(params, state, g)
    return params, state


def assert_roundtrip_bit_identical(
    tx: optax.GradientTransformation,
    params: Any,
    grads: list[Any],
    directory: pathlib.Path,
    *,
    init: Callable[[Any], Any] | None = None,
    restore_sharding: Any = None,
    param_sharding: Any = None,
) -> None:
    """Runs len(grads) steps uninterrupted, and again with a checkpoint in the middle."""

    @jax.jit
    def step(p: Any, s: Any, g: Any) -> tuple[Any, Any]:
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    init = init or tx.init
    half = len(grads) // 2
    p, s = params, init(params)
    for g in grads:
        p, s = step(p, s, g)
    expected = (p, s)

    p, s = params, init(params)
    for g in grads[:half]:
        p, s = step(p, s, g)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / "ckpt", {"params": p, "opt_state": s})
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": p, "opt_state": s})
    if restore_sharding is not None:
        abstract = {
            "params": jax.tree.map(
                lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                abstract["params"],
                param_sharding,
            ),
            "opt_state": jax.tree.map(
                lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                abstract["opt_state"],
                restore_sharding,
            ),
        }
    del p, s
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(directory / "ckpt", abstract)
    p, s = restored["params"], restored["opt_state"]
    assert jax.tree.structure(s) == jax.tree.structure(expected[1])
    if restore_sharding is not None:
        for a, sh in zip(jax.tree.leaves(s), jax.tree.leaves(restore_sharding), strict=True):
            assert a.sharding.is_equivalent_to(sh, a.ndim)
    for g in grads[half:]:
        p, s = step(p, s, g)
    for a, b in zip(jax.tree.leaves((p, s)), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
