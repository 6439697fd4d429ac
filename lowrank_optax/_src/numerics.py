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


def working_dtype(dtype: Any) -> jnp.dtype:
    """``dtype`` promoted to at least float32 (float64 stays float64)."""
    return jnp.promote_types(dtype, jnp.float32)


def safe_div(num: jax.Array, den: jax.Array, fill: Any = 0.0) -> jax.Array:
    """``num / den`` where ``den != 0``, else ``fill`` (finite in both branches)."""
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, jnp.ones_like(den)), fill)
