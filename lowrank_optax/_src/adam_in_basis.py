"""The library's one Adam core, and Adam for coordinates in a (possibly turning) basis.

Three small functions hold every Adam-type formula of the library; every Adam
variant (this module's :func:`scale_by_adam_in_basis`, holocron's TAdam,
AdaBelief, AdamP and Adan, LRG's torch AMSGrad alias, LRE's in-basis inner
optimizers) calls them instead of writing its own:

* :func:`ema`: an exponential moving average ``decay·moment + (1-decay)·value``
  of an arbitrary statistic (first moments, squares, outer products, cubes);
* :func:`amsgrad_max`: AMSGrad's (optionally decayed) running maximum of a raw
  second moment;
* :func:`adam_direction`: the bias-corrected quotient ``m̂ / (√v̂ + ε)`` in the
  two epsilon conventions (optax's and galore-torch's).

They are private (not re-exported) but importable, and work on pytrees and on
single arrays alike (an array is a one-leaf pytree).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lowrank_optax._src import validation as v
from lowrank_optax._src.basis_rotation import (
    map_with_rotation,
    register_basis_aware_state,
    rotate_diagonal,
    rotate_linear,
)
from lowrank_optax._src.numerics import safe_div

EPS_MODES = ("optax", "galore")
NU_REPROJECT = ("squared", "keep")


def ema(values: Any, moments: Any, decay: Any, *, offset: Any = None) -> Any:
    r"""Exponential moving average of ``values`` into ``moments`` (leaf-wise).

    .. math::

      m \leftarrow (1 - \beta)\,x + \beta\,m \qquad
      \text{or, with an offset } c: \quad m \leftarrow \beta\,m + ((1 - \beta)\,x + c)

    Without ``offset`` this is exactly :func:`optax.tree.update_moment` with
    ``order=1`` (same operations, same rounding): pass the statistic itself as
    ``values`` (``g``, ``g * g``, ``jnp.outer(u, u)``, ``u ** 3``...). The
    ``offset`` form (AdaBelief's :math:`\epsilon_{root}` added every step) adds
    the constant last, which lets XLA:CPU update a donated moment buffer in
    place. The result has the promoted dtype of the operands; callers restore
    the state dtype (:func:`optax.tree.cast_like`).

    Args:
      values: statistic of this step (pytree or array).
      moments: previous averages, same structure.
      decay: :math:`\beta` (scalar).
      offset: optional constant :math:`c` added every step.

    Returns:
      The new averages, with the structure of ``moments``.
    """
    if offset is None:
        return optax.tree.update_moment(values, moments, decay, 1)
    return jax.tree.map(lambda x, m: decay * m + ((1 - decay) * x + offset), values, moments)


def amsgrad_max(nu_max: Any, nu: Any, decay: Any = None) -> Any:
    r"""AMSGrad's running maximum of the raw second moment: :math:`\max(a\,\bar v, v)`.

    The maximum is taken over the *raw* (not bias-corrected) moments, as
    :class:`torch.optim.Adam` does; :func:`adam_direction` then bias-corrects
    it like :math:`v`. ``decay`` :math:`a` (``None`` = 1, no multiplication)
    lets old maxima fade (LRE's ``amsgrad_beta``). With ``nu_max`` ``None``
    (AMSGrad off) ``None`` is returned.
    """
    if nu_max is None:
        return None
    if decay is None:
        return jax.tree.map(jnp.maximum, nu_max, nu)
    return jax.tree.map(lambda m, n: jnp.maximum(decay * m, n), nu_max, nu)


def adam_direction(
    mu: Any,
    nu: Any,
    count: jax.Array,
    *,
    b1: Any,
    b2: Any,
    eps: Any,
    eps_root: Any = 0.0,
    eps_mode: str = "optax",
    nu_count: jax.Array | None = None,
    zero_safe: bool = False,
) -> Any:
    r"""The Adam quotient of raw moments: the library's one implementation.

    ``mu`` and ``nu`` are the *raw* exponential averages (not bias-corrected)
    of the first and second moments after this step's update, ``count`` the
    number of steps taken including this one (:math:`t \geq 1`, int32, as
    ``optax.safe_increment(state.count)``). With
    :math:`c_i = 1 - \beta_i^{t}` (for :math:`\nu` with ``nu_count`` when it is
    given, e.g. the number of steps that actually updated :math:`\nu`):

    .. math::

      \begin{align*}
        \texttt{'optax'}: \quad d &= \frac{m / c_1}{\sqrt{v / c_2 + \epsilon_{root}}
          + \epsilon} \\
        \texttt{'galore'}: \quad d &= \frac{m}{\sqrt{v} + \epsilon}
          \cdot \frac{\sqrt{c_2}}{c_1}
      \end{align*}

    Contract (what callers may rely on, bit for bit):

    * ``'optax'`` computes the bias corrections exactly as
      :func:`optax.tree.bias_correction` (``1 - b**count`` in the dtype JAX
      promotes ``b`` and the int32 count to, cast to each leaf's dtype, the
      division in the leaf's dtype), so with ``eps_root=0`` it equals
      :func:`optax.scale_by_adam`'s output, holocron's quotient and
      ``torch.optim.Adam``'s. A concrete ``eps_root`` of zero is not added.
    * ``'galore'`` (galore-torch / HF ``AdamW``: ``eps`` added to the
      un-corrected :math:`\sqrt v`) computes the step factor
      :math:`\sqrt{c_2}/c_1` in float32 from the float32 count and casts it
      to the leaf dtype before multiplying; ``eps_root`` is ignored there.
    * ``zero_safe=True`` returns 0 (not NaN/Inf) where the denominator is
      exactly zero (use it when ``eps`` may be 0: an element whose gradients
      were always zero gets a zero direction); elsewhere the result is
      identical.
    * No cast at the end: the result has the promoted dtype of the moments (and
      of ``eps`` when it is an array). Callers cast to the update dtype
      (:func:`optax.tree.cast_like`).
    * Leaf-wise: ``mu``/``nu`` are matching pytrees or single arrays; ``b1``,
      ``b2``, ``eps``, ``eps_root`` scalars (Python numbers, arrays or tracers).
      ``b1=0`` leaves ``mu`` uncorrected (division by exactly 1).

    Args:
      mu: raw first moments (or any numerator to bias-correct with ``b1``).
      nu: raw second moments (or their AMSGrad maximum, see :func:`amsgrad_max`).
      count: step count :math:`t \geq 1` (int32 scalar).
      b1: first-moment decay.
      b2: second-moment decay.
      eps: term added to the square root.
      eps_root: term added inside the square root (``'optax'`` only).
      eps_mode: ``'optax'`` or ``'galore'``.
      nu_count: optional separate count for :math:`\nu`'s bias correction.
      zero_safe: zero (not NaN) where the denominator is exactly zero.

    Returns:
      The direction :math:`d`, with the structure of ``mu``.
    """
    quotient = safe_div if zero_safe else (lambda m, d: m / d)
    nu_count = count if nu_count is None else nu_count
    if eps_mode == "optax":
        mu_hat = optax.tree.bias_correction(mu, b1, count)
        nu_hat = optax.tree.bias_correction(nu, b2, nu_count)
        if v.concrete_scalar(eps_root) == 0.0:
            root = jnp.sqrt
        else:
            root = lambda n: jnp.sqrt(n + eps_root)
        return jax.tree.map(lambda m, n: quotient(m, root(n) + eps), mu_hat, nu_hat)
    if eps_mode != "galore":
        raise ValueError(f"`eps_mode` must be one of {EPS_MODES}; got {eps_mode!r}.")
    c1 = 1 - jnp.asarray(b1, jnp.float32) ** count.astype(jnp.float32)
    c2 = 1 - jnp.asarray(b2, jnp.float32) ** nu_count.astype(jnp.float32)
    step_scale = jnp.sqrt(c2) / c1
    return jax.tree.map(
        lambda m, n: quotient(m, jnp.sqrt(n) + eps) * step_scale.astype(m.dtype), mu, nu
    )


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

    Static args for :func:`optax.inject_hyperparams`: ``mu_dtype`` when passed (a
    dtype is callable, so it would be taken for a schedule); the strings
    ``eps_mode`` and ``nu_reproject`` pass through as static values; ``b1``,
    ``b2``, ``eps``, ``eps_root`` and ``amsgrad_decay`` are injectable.

    Args:
      b1: decay rate of the first moment.
      b2: decay rate of the second moment.
      eps: term added to the denominator (outside the square root).
      eps_root: term added inside the square root (``eps_mode='optax'`` only).
      mu_dtype: optional (real floating-point) dtype of the first moment.
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
    mu_dtype = v.check_float_dtype("mu_dtype", mu_dtype)

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
        mu = ema(updates, mu, b1)
        nu = optax.tree.update_moment_per_elem_norm(updates, nu, b2, 2)
        count = optax.safe_increment(state.count)
        nu_max = state.nu_max
        if amsgrad_decay is not None:
            nu_max = map_with_rotation(lambda n, c: rotate_nu(n, c), nu_max, basis_rotation)
            nu_max = amsgrad_max(nu_max, nu, amsgrad_decay)
        new_updates = adam_direction(
            mu,
            nu if nu_max is None else nu_max,
            count,
            b1=b1,
            b2=b2,
            eps=eps,
            eps_root=eps_root,
            eps_mode=eps_mode,
        )
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
