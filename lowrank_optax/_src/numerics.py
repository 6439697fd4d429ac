"""Small numerical helpers shared across families (no algorithm lives here).

* :func:`working_dtype` -- the dtype scalars, accumulators and decompositions
  derived from data of a given dtype run in: the dtype promoted to at least
  float32 (bf16/f16 upcast, float64 kept).
* :func:`safe_div` -- the double-``where`` division used wherever a denominator
  may be exactly zero, so that the unused branch stays finite (``jax_debug_nans``)
  and gradients through it stay finite.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from lowrank_optax._src import validation


def working_dtype(dtype: Any) -> jnp.dtype:
    """``dtype`` promoted to at least float32 (float64 stays float64)."""
    return jnp.promote_types(dtype, jnp.float32)


def safe_div(num: jax.Array, den: jax.Array, fill: Any = 0.0) -> jax.Array:
    """``num / den`` where ``den != 0``, else ``fill`` (finite in both branches)."""
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, jnp.ones_like(den)), fill)


def _is_float16(x: Any) -> bool:
    return jnp.result_type(x) == jnp.float16


def _promote_float16(tree: Any) -> Any:
    """``tree`` with its float16 leaves cast to float32 (``tree`` itself if none)."""
    if not any(_is_float16(x) for x in jax.tree.leaves(tree)):
        return tree
    return jax.tree.map(lambda x: x.astype(jnp.float32) if _is_float16(x) else x, tree)


def float16_in_float32(
    tx: optax.GradientTransformation, who: str
) -> optax.GradientTransformationExtraArgs:
    """``tx`` computed in float32 for float16 leaves; non-floating leaves raise.

    ``init`` and ``update`` see float16 parameters and gradients as float32, so
    the state of those leaves is float32 and the update is computed in float32
    and cast back to float16. Trees without float16 leaves go to ``tx``
    unchanged (same state, bit-identical updates). Integer, boolean or complex
    parameters or gradients raise ``ValueError`` naming ``who``
    (:func:`optax.apply_updates` would silently truncate an integer update).
    Extra arguments are forwarded unchanged (``value_fn`` of :func:`lorenza` then
    receives float32 parameters).
    """
    tx = optax.with_extra_args_support(tx)

    def init_fn(params: optax.Params) -> optax.OptState:
        validation.check_floating(params, "parameters", who)
        return tx.init(_promote_float16(params))

    def update_fn(
        updates: optax.Updates,
        state: optax.OptState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, optax.OptState]:
        validation.check_floating(updates, "gradients", who)
        wide = _promote_float16(updates)
        if wide is updates and _promote_float16(params) is params:
            return tx.update(updates, state, params, **extra_args)
        new, state = tx.update(wide, state, _promote_float16(params), **extra_args)
        return optax.tree.cast_like(new, updates), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
