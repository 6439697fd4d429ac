"""The flattened parameter vector of LRE on a mesh: its sharding rule, ravel and unravel.

LRE works on the parameters flattened into one vector of length ``n`` (or one
per leaf). On a mesh with Explicit axes (``jax.make_mesh``'s default) every
array with ``n`` rows -- the flattened gradient, the bases ``Q``, histories,
curvature vectors -- is sharded along ``n`` by one rule (:func:`rows_sharding`);
the ``r``-sized work is replicated. Off Explicit meshes (no mesh, Auto axes)
every function here is the plain single-device operation, so GSPMD decides.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from lowrank_optax._src import sharding


def rows_sharding(leaves: list[Any]) -> NamedSharding | None:
    """Sharding of the concatenation of ``leaves`` (flattened) along its ``n`` rows.

    Rule: the flattened vector is sharded over the mesh axes that shard the
    leaves (every Explicit axis named in their specs, in order of first
    appearance in ``jax.tree.leaves`` order, as :func:`lowrank.state_partition_specs`
    orders its mesh); while ``n`` is not divisible by the product of those axes'
    sizes the last one is dropped, and with none left the vector is replicated.
    The result's spec is ``P(axis)``, ``P((axis_1, axis_2, ...))`` or ``P()``.

    Args:
      leaves: arrays or abstract arrays (``jax.ShapeDtypeStruct``).

    Returns:
      A ``NamedSharding`` (on the leaves' mesh) for an ``(n,)`` vector, or ``None``
      when no leaf carries an Explicit sharding type.
    """
    typed = [(x, sharding.explicit_spec(x)) for x in leaves]
    typed = [(x, s) for x, s in typed if s is not None]
    if not typed:
        return None
    mesh = jax.typeof(typed[0][0]).sharding.mesh
    explicit = {
        name
        for name, kind in zip(mesh.axis_names, mesh.axis_types, strict=True)
        if kind == AxisType.Explicit
    }
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True))
    names: list[str] = []
    for _, spec in typed:
        for entry in spec:
            for name in entry if isinstance(entry, tuple) else (entry,):
                if name is not None and name in explicit and name not in names:
                    names.append(name)
    n = sum(int(np.prod(jnp.shape(x))) for x in leaves)
    while names and n % math.prod(sizes[a] for a in names):
        names.pop()
    if not names:
        return NamedSharding(mesh, P())
    return NamedSharding(mesh, P(names[0] if len(names) == 1 else tuple(names)))


def rows_spec(rows: NamedSharding | None, ndim: int) -> tuple[Any, ...] | None:
    """Per-axis spec of an ``(n, ...)`` array of ``ndim`` axes laid out by ``rows``."""
    if rows is None:
        return None
    first = rows.spec[0] if len(rows.spec) else None
    return (first,) + (None,) * (ndim - 1)


def put_rows(x: jax.Array, rows: NamedSharding | None) -> jax.Array:
    """``x`` (``n`` leading rows) laid out by ``rows`` (no-op when ``rows`` is None)."""
    if rows is None:
        return x
    spec = rows_spec(rows, jnp.ndim(x))
    if sharding.explicit_spec(x) == spec:
        return x
    return jax.sharding.reshard(x, NamedSharding(rows.mesh, P(*spec)))


def zeros_rows(shape: tuple[int, ...], dtype: Any, rows: NamedSharding | None) -> jax.Array:
    """Zeros of ``shape`` (``n`` leading rows) created with the ``rows`` layout."""
    if rows is None:
        return jnp.zeros(shape, dtype)
    spec = rows_spec(rows, len(shape))
    return jnp.zeros(shape, dtype, out_sharding=NamedSharding(rows.mesh, P(*spec)))


def ravel(tree: Any, rows: NamedSharding | None) -> tuple[jax.Array, Callable[[jax.Array], Any]]:
    """``jax.flatten_util.ravel_pytree`` with the flat vector laid out by ``rows``.

    With ``rows`` (an Explicit mesh) the leaves are gathered, concatenated and
    laid out along ``n``; ``unravel`` gathers the vector and gives each leaf its
    own sharding back (leaf shards and ``n``-shards do not line up, so both
    directions move data: one all-gather of ``n`` values each).
    """
    if rows is None:
        return ravel_pytree(tree)
    leaves, treedef = jax.tree.flatten(tree)
    dtype = jnp.result_type(*leaves)
    flat = jnp.concatenate([jnp.ravel(sharding.replicated(x)).astype(dtype) for x in leaves])
    flat = put_rows(flat, rows)
    meta = [(jnp.shape(x), jnp.result_type(x), sharding.explicit_spec(x)) for x in leaves]

    def unravel(vec: jax.Array) -> Any:
        full = sharding.replicated(vec)
        out, start = [], 0
        for shape, dt, spec in meta:
            size = int(np.prod(shape))
            piece = full[start : start + size].reshape(shape).astype(dt)
            out.append(sharding.reshard(piece, spec, piece))  # no-op when spec is None
            start += size
        return jax.tree.unflatten(treedef, out)

    return flat, unravel


def ravel_batched(tree: Any, rows: NamedSharding | None) -> jax.Array:
    """``(n, B)`` columns from a params-shaped tree whose leaves have a leading batch axis."""
    if rows is None:
        return jax.vmap(lambda t: ravel_pytree(t)[0])(tree).T
    leaves = jax.tree.leaves(tree)
    dtype = jnp.result_type(*leaves)
    parts = [sharding.replicated(x).reshape(jnp.shape(x)[0], -1).astype(dtype) for x in leaves]
    return put_rows(jnp.concatenate(parts, axis=1).T, rows)


def block(a: jax.Array, start: int, size: int, rows: NamedSharding | None) -> jax.Array:
    """Rows ``start:start + size`` of ``a`` laid out by ``rows`` (the block's sharding)."""
    if start == 0 and size == a.shape[0]:
        return a
    if rows is None:
        return a[start : start + size]
    return put_rows(sharding.replicated(a)[start : start + size], rows)


def join(parts: list[jax.Array], rows: NamedSharding | None) -> jax.Array:
    """Concatenation of blocks along ``n``, laid out by ``rows``."""
    if len(parts) == 1:
        return parts[0]
    if rows is None:
        return jnp.concatenate(parts)
    return put_rows(jnp.concatenate([sharding.replicated(p) for p in parts]), rows)
