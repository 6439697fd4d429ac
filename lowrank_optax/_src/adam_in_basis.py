"""The library's one Adam core for coordinates in a (possibly turning) basis."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax._src import utils as optax_utils

from lowrank_optax._src import validation as v
from lowrank_optax._src.basis_rotation import (
    map_with_rotation,
    register_basis_aware_state,
    rotate_diagonal,
    rotate_linear,
)

EPS_MODES = ("optax", "galore")
NU_REPROJECT = ("squared", "keep")


@register_basis_aware_state
class ScaleByAdamInBasisState(NamedTuple):
    """State of :func:`scale_by_adam_in_basis`.

    Attributes:
      count: number of completed steps (int32 scalar).
      mu: first moments, in the current basis coordinates.
      nu: second moments, in the current basis coordinates.
      nu_max: decayed running maximum of ``nu`` (``None`` unless ``amsgrad_decay``).
    """

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates
    nu_max: optax.Updates | None


def scale_by_adam_in_basis(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: Any | None = None,
    *,
    eps_mode: str = "optax",
    nu_reproject: str = "squared",
    amsgrad_decay: jax.typing.ArrayLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Rescales updates with Adam, rotating its moments when the basis turns.

    This is Adam (Kingma & Ba) on coordinates ``R`` that live in a basis chosen
    by an outer wrapper (:func:`project_lowrank`, :func:`eigenbasis_update`). On
    its own, or with no ``basis_rotation`` extra argument, it is exactly
    :func:`optax.scale_by_adam` (``eps_mode='optax'``). When the wrapper passes
    ``basis_rotation`` (a tree of :class:`BasisRotation`), the moments are first
    carried into the new coordinates (see :mod:`basis_rotation`), then updated.

    With :math:`t` the step (from 1), :math:`C` the rotation (applied only on
    steps where ``apply`` is true):

    .. math::

      \begin{align*}
        M &\leftarrow C_L M C_R^\top, \qquad
        V \leftarrow (C_L \circ C_L) V (C_R \circ C_R)^\top \\
        M &\leftarrow \beta_1 M + (1-\beta_1) R, \qquad
        V \leftarrow \beta_2 V + (1-\beta_2) R \odot R \\
        N &= \frac{M / (1-\beta_1^t)}{\sqrt{V/(1-\beta_2^t) + \epsilon_{root}} + \epsilon}
           \quad \text{(eps\_mode='optax')} \\
        N &= \frac{M}{\sqrt{V} + \epsilon}\cdot\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}
           \quad \text{(eps\_mode='galore', galore-torch / HF AdamW)}
      \end{align*}

    With ``amsgrad_decay`` :math:`a`, :math:`V_{max} \leftarrow \max(a V_{max}, V)`
    replaces :math:`V` in the denominator and is rotated like :math:`V`.

    Args:
      b1: decay rate of the first moment.
      b2: decay rate of the second moment.
      eps: term added to the denominator (outside the square root).
      eps_root: term added inside the square root (``eps_mode='optax'`` only).
      mu_dtype: optional dtype of the first moment.
      eps_mode: ``'optax'`` (as :func:`optax.scale_by_adam`) or ``'galore'`` (eps
        added to the un-bias-corrected :math:`\sqrt{V}`, as galore-torch).
      nu_reproject: ``'squared'`` rotates :math:`V` with :math:`C\circ C`;
        ``'keep'`` leaves it unchanged on a basis change.
      amsgrad_decay: if set, the decay :math:`a \in [0, 1]` of an AMSGrad maximum.

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs`. Its
      ``update`` accepts the extra argument ``basis_rotation`` (ignores others).

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> import lowrank_optax as lowrank
      >>> tx = optax.chain(lowrank.scale_by_adam_in_basis(), optax.scale(-1e-1))
      >>> params = jnp.array([1.0, -2.0, 3.0])
      >>> state = tx.init(params)
      >>> for _ in range(5):
      ...   grads = 2 * params
      ...   updates, state = tx.update(grads, state, params)
      ...   params = optax.apply_updates(params, updates)
      >>> print('Objective function: {:.2f}'.format(jnp.sum(params**2)))
      Objective function: 8.78

    References:
      Kingma et al, `Adam: A Method for Stochastic Optimization
      <https://arxiv.org/abs/1412.6980>`_, 2014

      Zhao et al, `GaLore: Memory-Efficient LLM Training by Gradient Low-Rank
      Projection <https://arxiv.org/abs/2403.03507>`_, 2024
    """
    v.check_beta("b1", b1)
    v.check_beta("b2", b2)
    v.check_nonnegative("eps", eps)
    v.check_nonnegative("eps_root", eps_root)
    v.check_choice("eps_mode", eps_mode, EPS_MODES)
    v.check_choice("nu_reproject", nu_reproject, NU_REPROJECT)
    if amsgrad_decay is not None:
        v.check_range("amsgrad_decay", amsgrad_decay, low=0.0, high=1.0)
    mu_dtype = optax_utils.canonicalize_dtype(mu_dtype)

    def init_fn(params: optax.Params) -> ScaleByAdamInBasisState:
        mu = optax.tree.zeros_like(params, dtype=mu_dtype)
        nu = optax.tree.zeros_like(params)
        nu_max = None if amsgrad_decay is None else optax.tree.zeros_like(params)
        return ScaleByAdamInBasisState(jnp.zeros([], jnp.int32), mu, nu, nu_max)

    def update_fn(
        updates: optax.Updates,
        state: ScaleByAdamInBasisState,
        params: optax.Params | None = None,
        *,
        basis_rotation: Any = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, ScaleByAdamInBasisState]:
        del params, extra_args
        rotate_nu = rotate_diagonal if nu_reproject == "squared" else (lambda x, _: x)
        mu = map_with_rotation(lambda m, c: rotate_linear(m, c), state.mu, basis_rotation)
        nu = map_with_rotation(lambda n, c: rotate_nu(n, c), state.nu, basis_rotation)
        mu = optax.tree.update_moment(updates, mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(updates, nu, b2, 2)
        count = optax.safe_increment(state.count)
        nu_max = state.nu_max
        denom_nu = nu
        if amsgrad_decay is not None:
            nu_max = map_with_rotation(lambda n, c: rotate_nu(n, c), nu_max, basis_rotation)
            nu_max = jax.tree.map(lambda m, n: jnp.maximum(amsgrad_decay * m, n), nu_max, nu)
            denom_nu = nu_max
        if eps_mode == "optax":
            mu_hat = optax.tree.bias_correction(mu, b1, count)
            nu_hat = optax.tree.bias_correction(denom_nu, b2, count)
            new_updates = jax.tree.map(
                lambda m, n: m / (jnp.sqrt(n + eps_root) + eps), mu_hat, nu_hat
            )
        else:
            t = count.astype(jnp.float32)
            step_scale = jnp.sqrt(1 - jnp.asarray(b2, jnp.float32) ** t) / (
                1 - jnp.asarray(b1, jnp.float32) ** t
            )

            def galore_step(m: jax.Array, n: jax.Array) -> jax.Array:
                return (m / (jnp.sqrt(n) + eps)) * step_scale.astype(m.dtype)

            new_updates = jax.tree.map(galore_step, mu, denom_nu)
        new_updates = optax.tree.cast_like(new_updates, updates)
        mu = optax.tree.cast(mu, mu_dtype)
        new_state = ScaleByAdamInBasisState(
            count,
            optax.tree.cast_like(mu, state.mu),
            optax.tree.cast_like(nu, state.nu),
            None if nu_max is None else optax.tree.cast_like(nu_max, state.nu_max),
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
