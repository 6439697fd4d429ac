"""Numerical helpers shared by the holocron family.

* :func:`scalar_dtype` -- the dtype for per-leaf scalars (norms, step-dependent
  coefficients): the leaf dtype promoted to at least float32, so bf16 leaves get
  float32 reductions and float64 leaves stay float64.
* :func:`leaf_sum` / :func:`leaf_norm` -- per-leaf reductions in that dtype.
* :func:`safe_div` -- the double-``where`` division used wherever a denominator
  may be exactly zero, so the unused branch stays finite (``jax_debug_nans``).
* :func:`amsgrad_max` and :func:`adaptive_direction` -- the torch-style AMSGrad
  maximum (taken over the raw second moment, then bias-corrected) and the Adam
  quotient ``(m / bc1) / (sqrt(v / bc2) + eps)`` shared by TAdam, AdaBelief and
  AdamP. The moment updates themselves are :func:`optax.tree.update_moment` and
  :func:`optax.tree.update_moment_per_elem_norm`.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from lowrank_optax._src import validation


def scalar_dtype(dtype: Any) -> jnp.dtype:
    """Working dtype for scalars derived from leaves of ``dtype`` (>= float32)."""
    return jnp.promote_types(dtype, jnp.float32)


def tree_scalar_dtype(tree: Any) -> jnp.dtype:
    """:func:`scalar_dtype` of the widest leaf of ``tree`` (float32 if empty)."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.dtype(jnp.float32)
    return scalar_dtype(jnp.result_type(*leaves))


def leaf_sum(x: jax.Array) -> jax.Array:
    """Sum of all entries of ``x``, accumulated in :func:`scalar_dtype`."""
    return jnp.sum(x, dtype=scalar_dtype(x.dtype))


def leaf_norm(x: jax.Array) -> jax.Array:
    """Frobenius norm of ``x`` in :func:`scalar_dtype`."""
    return jnp.sqrt(leaf_sum(jnp.square(x.astype(scalar_dtype(x.dtype)))))


def safe_div(num: jax.Array, den: jax.Array, fill: Any = 0.0) -> jax.Array:
    """``num / den`` where ``den != 0``, else ``fill`` (finite in both branches)."""
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, jnp.ones_like(den)), fill)


def is_positive_constant(value: Any) -> bool:
    """True if ``value`` is a concrete scalar known to be ``> 0``."""
    x = validation.concrete_scalar(value)
    return x is not None and x > 0


def is_zero_constant(value: Any) -> bool:
    """True if ``value`` is a concrete scalar equal to zero."""
    x = validation.concrete_scalar(value)
    return x is not None and x == 0


def amsgrad_max(nu: Any, nu_max: Any) -> tuple[Any, Any]:
    """Returns ``(second moment used in the denominator, new running maximum)``.

    ``nu_max`` is ``None`` when AMSGrad is off; then ``nu`` itself is used. The
    maximum is taken over the raw (not bias-corrected) moment, as torch does.
    """
    if nu_max is None:
        return nu, None
    new_max = jax.tree.map(jnp.maximum, nu_max, nu)
    return new_max, new_max


def adaptive_direction(mu: Any, nu: Any, b1: Any, b2: Any, count: jax.Array, eps: Any) -> Any:
    """``(mu / bc1) / (sqrt(nu / bc2) + eps)`` leaf-wise, with bc_i = 1 - b_i^count.

    With ``eps = 0`` an element whose second moment is exactly zero (its
    gradients were always zero, hence its first moment too) gets a zero
    direction instead of ``0 / 0``.
    """
    mu_hat = optax.tree.bias_correction(mu, b1, count)
    nu_hat = optax.tree.bias_correction(nu, b2, count)
    if is_positive_constant(eps):
        div = lambda m, v: (m / (jnp.sqrt(v) + eps)).astype(m.dtype)
    else:
        div = lambda m, v: safe_div(m, jnp.sqrt(v) + eps).astype(m.dtype)
    return jax.tree.map(div, mu_hat, nu_hat)


def zeros_or_none(params: Any, enabled: bool) -> Any:
    """``optax.tree.zeros_like(params)`` if ``enabled`` else ``None`` (absent field)."""
    return optax.tree.zeros_like(params) if enabled else None


def coupled_weight_decay(weight_decay: Any) -> optax.GradientTransformation:
    """``g + lambda * theta`` (:func:`optax.add_decayed_weights`); the identity
    when ``lambda`` is a literal zero (both have an ``EmptyState``)."""
    if is_zero_constant(weight_decay):
        return optax.identity()
    return optax.add_decayed_weights(weight_decay)
