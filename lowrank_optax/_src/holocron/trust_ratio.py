"""Layer-wise trust ratios shared by LARS, LAMB and RaLars.

All three scale each leaf's direction by ``phi(||theta||) / denominator`` where
``phi`` clamps the weight norm to ``scale_clip = (lo, hi)`` and the ratio falls
back to 1 when a norm is zero. They differ only in the denominator:
``||g|| + lambda ||theta||`` (LARS) or ``||u||`` with ``u = r + lambda theta``
(LAMB, RaLars). The zero tests use :func:`~.common.safe_div`-style double
``where``s, so the discarded branch never divides by zero.
"""

from typing import Any

import jax
import jax.numpy as jnp

from lowrank_optax._src import validation
from lowrank_optax._src.holocron import common


def clipped_weight_norm(param_norm: jax.Array, scale_clip: tuple[Any, Any]) -> jax.Array:
    """``phi(||theta||) = clamp(||theta||, lo, hi)``."""
    lo, hi = scale_clip
    return jnp.clip(param_norm, lo, hi)


def safe_trust_ratio(
    numerator: jax.Array, denominator: jax.Array, reference: jax.Array | None = None
) -> jax.Array:
    """``numerator / denominator``, or 1 where ``reference`` (default: the
    numerator) or the denominator is zero."""
    ref = numerator if reference is None else reference
    ok = jnp.logical_and(ref != 0, denominator != 0)
    safe_den = jnp.where(ok, denominator, jnp.ones_like(denominator))
    return jnp.where(ok, numerator / safe_den, jnp.ones_like(numerator))


def weight_decayed(direction: Any, params: Any, weight_decay: Any) -> Any:
    """``u = r + lambda * theta`` (skipped when ``lambda`` is a literal zero)."""
    if common.is_zero_constant(weight_decay):
        return direction
    return jax.tree.map(lambda r, p: (r + weight_decay * p).astype(r.dtype), direction, params)


def apply_clipped_trust_ratio(
    direction: Any, params: Any, weight_decay: Any, scale_clip: tuple[Any, Any]
) -> Any:
    """LAMB/RaLars step: ``phi(||theta||) / ||u|| * u`` with ``u = r + lambda theta``.

    The ratio is 1 when ``phi(||theta||) = 0`` or ``||u|| = 0``.
    """
    validation.require_params(params)
    decayed = weight_decayed(direction, params, weight_decay)

    def scale_leaf(u: jax.Array, p: jax.Array) -> jax.Array:
        phi = clipped_weight_norm(common.leaf_norm(p), scale_clip)
        ratio = safe_trust_ratio(phi, common.leaf_norm(u))
        return (ratio.astype(u.dtype) * u).astype(u.dtype)

    return jax.tree.map(scale_leaf, decayed, params)
