"""Numerical helpers shared by the holocron family.

* :func:`tree_scalar_dtype` -- the dtype for per-leaf scalars (norms,
  step-dependent coefficients): :func:`numerics.working_dtype` of the widest
  leaf, so bf16 leaves get float32 reductions and float64 leaves stay float64.
* :func:`leaf_sum` / :func:`leaf_norm` -- per-leaf reductions in that dtype.
* :func:`safe_div` -- :func:`numerics.safe_div` (re-exported here for the
  family's modules).
* :func:`adaptive_direction` -- the Adam quotient of TAdam, AdaBelief, AdamP and
  Adan: the library's one Adam core (:func:`adam_in_basis.adam_direction`) with a
  zero-safe division when ``eps`` may be zero. AMSGrad's maximum is
  :func:`adam_in_basis.amsgrad_max`; the moment updates are
  :func:`optax.tree.update_moment` / :func:`adam_in_basis.ema`.
* :func:`alias` -- an alias's chain, computed in float32 for float16 leaves
  (:func:`numerics.float16_in_float32`).
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from lowrank_optax._src import validation
from lowrank_optax._src.adam_in_basis import adam_direction, scale_by_adam_in_basis
from lowrank_optax._src.numerics import float16_in_float32, working_dtype
from lowrank_optax._src.numerics import safe_div as safe_div


def tree_scalar_dtype(tree: Any) -> jnp.dtype:
    """:func:`working_dtype` of the widest leaf of ``tree`` (float32 if empty)."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.dtype(jnp.float32)
    return working_dtype(jnp.result_type(*leaves))


def leaf_sum(x: jax.Array) -> jax.Array:
    """Sum of all entries of ``x``, accumulated in :func:`working_dtype`."""
    return jnp.sum(x, dtype=working_dtype(x.dtype))


def leaf_norm(x: jax.Array) -> jax.Array:
    """Frobenius norm of ``x`` in :func:`working_dtype`."""
    return jnp.sqrt(leaf_sum(jnp.square(x.astype(working_dtype(x.dtype)))))


def is_positive_constant(value: Any) -> bool:
    """True if ``value`` is a concrete scalar known to be ``> 0``."""
    x = validation.concrete_scalar(value)
    return x is not None and x > 0


def is_zero_constant(value: Any) -> bool:
    """True if ``value`` is a concrete scalar equal to zero."""
    x = validation.concrete_scalar(value)
    return x is not None and x == 0


def adaptive_direction(mu: Any, nu: Any, b1: Any, b2: Any, count: jax.Array, eps: Any) -> Any:
    """``(mu / bc1) / (sqrt(nu / bc2) + eps)`` leaf-wise, with bc_i = 1 - b_i^count.

    :func:`adam_in_basis.adam_direction` (``eps_mode='optax'``). Unless ``eps``
    is a concrete positive number, an element whose second moment is exactly
    zero (its gradients were always zero, hence its first moment too) gets a
    zero direction instead of ``0 / 0``.
    """
    zero_safe = not is_positive_constant(eps)
    return adam_direction(mu, nu, count, b1=b1, b2=b2, eps=eps, zero_safe=zero_safe)


def adam_moments(
    b1: Any, b2: Any, eps: Any, *, amsgrad: bool = False
) -> optax.GradientTransformation:
    """The moment transformation of LAMB, RaLars and AdamP (its state is theirs).

    :func:`optax.scale_by_adam`, or :func:`scale_by_adam_in_basis` with
    ``amsgrad_decay=1`` (torch's maximum of the raw second moment) under
    ``amsgrad``. Their quotient is recomputed by :func:`adam_step`.
    """
    if amsgrad:
        return scale_by_adam_in_basis(b1, b2, eps, amsgrad_decay=1.0)
    return optax.scale_by_adam(b1, b2, eps)


def adam_step(
    moments: optax.GradientTransformation,
    updates: Any,
    state: Any,
    b1: Any,
    b2: Any,
    eps: Any,
) -> tuple[Any, Any]:
    """Advances :func:`adam_moments` and returns ``(direction, new_state)``.

    The direction is :func:`adaptive_direction` of the new moments (the AMSGrad
    maximum when the state has one), in the moments' dtype (callers cast).
    """
    _, state = moments.update(updates, state)  # the moments; the quotient is ours
    nu = state.nu if getattr(state, "nu_max", None) is None else state.nu_max
    return adaptive_direction(state.mu, nu, b1, b2, state.count, eps), state


def zeros_or_none(params: Any, enabled: bool) -> Any:
    """``optax.tree.zeros_like(params)`` if ``enabled`` else ``None`` (absent field)."""
    return optax.tree.zeros_like(params) if enabled else None


def coupled_weight_decay(weight_decay: Any) -> optax.GradientTransformation:
    """``g + lambda * theta`` (:func:`optax.add_decayed_weights`); the identity
    when ``lambda`` is a literal zero (both have an ``EmptyState``)."""
    if is_zero_constant(weight_decay):
        return optax.identity()
    return optax.add_decayed_weights(weight_decay)


def alias(name: str, *steps: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``optax.chain(*steps)`` as the alias ``lowrank.<name>``: float16 leaves are
    computed in float32 and non-floating parameters raise
    (:func:`numerics.float16_in_float32`)."""
    return float16_in_float32(optax.chain(*steps), f"lowrank.{name}")
