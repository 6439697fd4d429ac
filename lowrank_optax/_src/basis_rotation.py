"""Basis rotations passed to basis-aware inner transformations.

When a subspace method replaces its basis ``P_old`` by ``P_new``, state kept in
the old coordinates can be carried over to the new ones with the small matrices

.. math::

   C_L = P_{L,new}^\\top P_{L,old}, \\qquad C_R = P_{R,new} P_{R,old}^\\top .

A first moment ``M`` (a linear function of the gradient coordinates) maps to
``C_L M`` for a left basis and ``M C_R^\\top`` for a right one. A diagonal second
moment ``V`` maps to the diagonal of ``C diag(V) C^\\top``, i.e. ``(C∘C) V`` (and
``V (C_R∘C_R)^\\top``), which keeps it non-negative.

Transformations that know how to do this are *basis-aware*: their state class is
registered with :func:`register_basis_aware_state`, which is how
``project_lowrank(..., on_refresh='reproject')`` checks that its inner
transformation can use the rotation.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class BasisRotation(NamedTuple):
    """Rotation from old to new basis coordinates for one leaf.

    Attributes:
      left: ``C_L`` of shape ``(batch..., r, r)`` or ``None`` (no left basis).
      right: ``C_R`` of shape ``(batch..., r, r)`` or ``None`` (no right basis).
      apply: boolean scalar; the rotation is applied only where it is True (on
        refresh steps after the first), so between refreshes state is untouched.
    """

    left: jax.Array | None
    right: jax.Array | None
    apply: jax.Array


_BASIS_AWARE_STATES: set[type] = set()


def register_basis_aware_state(state_cls: type) -> type:
    """Marks ``state_cls`` as the state of a basis-aware transformation (decorator)."""
    _BASIS_AWARE_STATES.add(state_cls)
    return state_cls


def contains_basis_aware_state(state: Any) -> bool:
    """True if any node of the optimizer ``state`` is a registered basis-aware state."""
    types = tuple(_BASIS_AWARE_STATES)
    found = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, types))
    return any(isinstance(x, types) for x in found)


def is_rotation(x: Any) -> bool:
    """``is_leaf`` predicate for trees of :class:`BasisRotation` (or ``None``)."""
    return x is None or isinstance(x, BasisRotation)


def rotate_linear(x: jax.Array, rotation: BasisRotation | None) -> jax.Array:
    """Carries a first-moment-like array ``x`` into the new coordinates."""
    if rotation is None:
        return x
    y = x
    if rotation.left is not None:
        y = rotation.left.astype(x.dtype) @ y
    if rotation.right is not None:
        y = y @ jnp.swapaxes(rotation.right, -1, -2).astype(x.dtype)
    return jnp.where(rotation.apply, y, x)


def rotate_diagonal(x: jax.Array, rotation: BasisRotation | None) -> jax.Array:
    """Carries a diagonal second-moment-like array ``x`` (``≥ 0``) into new coordinates."""
    if rotation is None:
        return x
    y = x
    if rotation.left is not None:
        y = jnp.square(rotation.left).astype(x.dtype) @ y
    if rotation.right is not None:
        y = y @ jnp.swapaxes(jnp.square(rotation.right), -1, -2).astype(x.dtype)
    return jnp.where(rotation.apply, y, x)


def map_with_rotation(fn: Any, updates: Any, rotation: Any, *rest: Any) -> Any:
    """``jax.tree.map(fn, updates, rotation_leaf, *rest)`` with ``rotation`` a prefix tree.

    ``rotation`` is ``None`` (no rotation anywhere) or a tree with the structure of
    ``updates`` whose leaves are :class:`BasisRotation` or ``None``.
    """
    if rotation is None:
        return jax.tree.map(lambda u, *r: fn(u, None, *r), updates, *rest)
    treedef = jax.tree.structure(updates)
    rot_leaves = treedef.flatten_up_to(rotation)
    rest_leaves = [treedef.flatten_up_to(r) for r in rest]
    out = [
        fn(u, rot, *others)
        for u, rot, *others in zip(jax.tree.leaves(updates), rot_leaves, *rest_leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, out)
