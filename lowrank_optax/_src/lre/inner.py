"""Basis-aware inner optimizers run by :func:`lowrank.eigenbasis_update`.

They act on the ``r``-dimensional coordinates ``u`` (one ``(r,)`` vector, or a
tree of them with ``per_leaf=True``) and read the driver's extra arguments:

* ``projected_grad``: ``g_p = Qᵀg`` (the gradient's coordinates; ``u`` is the
  output of the previous element of the chain);
* ``basis_rotation``: :class:`lowrank.BasisRotation` with ``left = C =
  Q_newᵀ Q_old``; state is carried into the new coordinates where ``apply`` is
  true, before the step (``m ← Cm`` for first moments, ``v ← (C∘C)v`` for
  diagonal second moments, ``S ← C S Cᵀ`` for matrices, ``(C∘C∘C)m₃`` for the
  diagonal of a third moment);
* ``eigenvalues`` (``L_reg``) and ``basis_valid`` (the column mask);
* ``curvature_probes``: :class:`CurvatureProbes` ``(Qᵀz, QᵀHz, present)`` from
  Hessian-vector-product curvatures.

Adam is the library's one Adam core, :func:`lowrank.scale_by_adam_in_basis`; every
moving average here (first moments, squared, cubed or outer-product statistics)
and the Adam quotient of the Hutchinson variant go through the same core
(``adam_in_basis.ema`` / ``adam_direction``), and debiasing through
:func:`optax.tree.bias_correction`.
A list of inner transformations is chained in order. Stateless optax pieces
(``optax.clip``, :func:`lowrank.clip_by_leaf_norm`, ``optax.scale_by_sign``,
``optax.zero_nans``) can be chained too.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lowrank_optax._src import adam_in_basis as adam_core
from lowrank_optax._src import validation as v
from lowrank_optax._src.basis_rotation import (
    BasisRotation,
    map_with_rotation,
    register_basis_aware_state,
    rotate_diagonal,
    rotate_linear,
)
from lowrank_optax._src.lre.linalg import keep_if, regularize, sym, tiny


class CurvatureProbes(NamedTuple):
    """Projected Hessian-vector-product probes handed to inner optimizers.

    Attributes:
      z: ``Qᵀz`` (tree like the coordinates).
      hz: ``QᵀHz``.
      present: boolean scalar, True on steps where a product was computed.
    """

    z: Any
    hz: Any
    present: jax.Array


def _required(value: Any, name: str, who: str) -> Any:
    if value is None:
        raise ValueError(
            f"lowrank.{who} needs the extra argument `{name}`; run it inside "
            "lowrank.eigenbasis_update (or pass it yourself)."
        )
    return value


def rotate_matrix(x: jax.Array, rotation: BasisRotation | None) -> jax.Array:
    """Carries an ``(r, r)`` matrix state into new coordinates: ``C X Cᵀ``."""
    if rotation is None or rotation.left is None:
        return x
    c = rotation.left.astype(x.dtype)
    return jnp.where(rotation.apply, c @ x @ c.T, x)


def rotate_cubic(x: jax.Array, rotation: BasisRotation | None) -> jax.Array:
    """Carries the diagonal of a third-moment tensor: ``(C∘C∘C) x``.

    The diagonal of ``einsum('ai,bj,ck,ijk->abc', C, C, C, diag3(x))`` is exactly
    ``(C∘C∘C) x``, so this is the exact reprojection of a diagonal third moment.
    """
    if rotation is None or rotation.left is None:
        return x
    c = rotation.left.astype(x.dtype)
    return jnp.where(rotation.apply, (c * c * c) @ x, x)


def _valid_like(basis_valid: Any, updates: Any) -> Any:
    if basis_valid is None:
        return jax.tree.map(lambda u: jnp.ones(u.shape, jnp.bool_), updates)
    return basis_valid


def _agrees(u: jax.Array, g: jax.Array) -> jax.Array:
    """The cautious mask ``g·u > 0``, also True where ``u`` is NaN (NaN stays NaN)."""
    return (g * u > 0) | jnp.isnan(u)


# --------------------------------------------------------------------------- #
# EMA, Lion, cautious, copy-grad-sign, inverse eigenvalues
# --------------------------------------------------------------------------- #


@register_basis_aware_state
class EmaInBasisState(NamedTuple):
    """State of :func:`ema_in_basis`.

    Attributes:
      ema: exponential moving average of the incoming updates.
    """

    ema: optax.Updates


def ema_in_basis(beta: jax.typing.ArrayLike = 0.9) -> optax.GradientTransformationExtraArgs:
    r"""Exponential moving average of the incoming updates, rotated with the basis.

    .. math::

      m \leftarrow C m \;(\text{on a basis change}), \qquad
      m \leftarrow \beta m + (1-\beta) u, \qquad \text{out} = m

    :math:`m_0 = 0` and there is no debiasing (as the reference's ``EMA``).

    Args:
      beta: decay :math:`\beta \in [0, 1)`.

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.ema_in_basis(0.5)
      >>> out, _ = tx.update(jnp.array([2.0, -2.0]), tx.init(jnp.zeros(2)))
      >>> print(out)
      [ 1. -1.]

    References:
      Nikishev, `LRE: Low-rank eigenbasis <https://github.com/inikishev/lre>`_, 2025
    """
    v.check_beta("beta", beta)

    def init_fn(params: optax.Params) -> EmaInBasisState:
        return EmaInBasisState(optax.tree.zeros_like(params))

    def update_fn(
        updates: optax.Updates,
        state: EmaInBasisState,
        params: optax.Params | None = None,
        *,
        basis_rotation: Any = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, EmaInBasisState]:
        del params, extra_args
        ema = map_with_rotation(rotate_linear, state.ema, basis_rotation)
        ema = adam_core.ema(updates, ema, beta)
        ema = optax.tree.cast_like(ema, state.ema)
        return optax.tree.cast_like(ema, updates), EmaInBasisState(ema)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@register_basis_aware_state
class ScaleByLionInBasisState(NamedTuple):
    """State of :func:`scale_by_lion_in_basis`.

    Attributes:
      mu: momentum of the projected gradient.
    """

    mu: optax.Updates


def scale_by_lion_in_basis(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.99,
    *,
    cautious: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Lion on the projected gradient, with its momentum rotated with the basis.

    Uses ``projected_grad`` :math:`g` (not the incoming update):

    .. math::

      \begin{align*}
        m &\leftarrow C m \;(\text{on a basis change}) \\
        \text{out} &= \mathrm{sign}(\beta_1 m + (1-\beta_1) g), \qquad
        m \leftarrow \beta_2 m + (1-\beta_2) g
      \end{align*}

    With ``cautious`` the output is zeroed where :math:`g\cdot\text{out} \le 0`.

    Args:
      b1: interpolation for the sign.
      b2: momentum decay.
      cautious: zero entries that disagree with the gradient's sign.

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.scale_by_lion_in_basis()
      >>> g = jnp.array([0.5, -2.0])
      >>> out, _ = tx.update(g, tx.init(g), projected_grad=g)
      >>> print(out)
      [ 1. -1.]

    References:
      Chen et al, `Symbolic Discovery of Optimization Algorithms
      <https://arxiv.org/abs/2302.06675>`_, 2023
    """
    v.check_beta("b1", b1)
    v.check_beta("b2", b2)

    def init_fn(params: optax.Params) -> ScaleByLionInBasisState:
        return ScaleByLionInBasisState(optax.tree.zeros_like(params))

    def update_fn(
        updates: optax.Updates,
        state: ScaleByLionInBasisState,
        params: optax.Params | None = None,
        *,
        projected_grad: Any = None,
        basis_rotation: Any = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, ScaleByLionInBasisState]:
        del params, extra_args
        g = _required(projected_grad, "projected_grad", "scale_by_lion_in_basis")
        mu = map_with_rotation(rotate_linear, state.mu, basis_rotation)

        def direction(m: jax.Array, gg: jax.Array) -> jax.Array:
            d = jnp.sign(adam_core.ema(gg, m, b1))
            if cautious:
                d = jnp.where(_agrees(d, gg), d, 0)
            return d

        out = jax.tree.map(direction, mu, g)
        mu = adam_core.ema(g, mu, b2)
        return (
            optax.tree.cast_like(out, updates),
            ScaleByLionInBasisState(optax.tree.cast_like(mu, state.mu)),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def cautious_in_basis() -> optax.GradientTransformationExtraArgs:
    r"""Zeroes update entries whose sign disagrees with the projected gradient.

    .. math::

      \text{out} = u \odot \mathbb{1}[g \odot u > 0]

    (no rescaling; ``projected_grad`` :math:`g`). A NaN entry of :math:`u` stays
    NaN (as the reference, which multiplies by the mask).

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs` (stateless).

    Examples:
      >>> import jax.numpy as jnp
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.cautious_in_basis()
      >>> out, _ = tx.update(jnp.array([1.0, 1.0]), tx.init(None),
      ...                    projected_grad=jnp.array([2.0, -1.0]))
      >>> print(out)
      [1. 0.]

    References:
      Liang et al, `Cautious Optimizers: Improving Training with One Line of Code
      <https://arxiv.org/abs/2411.16085>`_, 2024
    """

    def update_fn(
        updates: optax.Updates,
        state: optax.EmptyState,
        params: optax.Params | None = None,
        *,
        projected_grad: Any = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, optax.EmptyState]:
        del params, extra_args
        g = _required(projected_grad, "projected_grad", "cautious_in_basis")
        out = jax.tree.map(lambda u, gg: jnp.where(_agrees(u, gg), u, 0), updates, g)
        return out, state

    return optax.GradientTransformationExtraArgs(lambda _: optax.EmptyState(), update_fn)


def copy_grad_sign_in_basis() -> optax.GradientTransformationExtraArgs:
    r"""Gives the update the projected gradient's sign: ``copysign(u, g)``.

    .. math::

      \text{out} = |u| \cdot \mathrm{sign}(g)

    where :math:`g = 0` counts by its sign bit (``+0`` is positive), as
    ``torch.copysign`` in the reference.

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs` (stateless).

    Examples:
      >>> import jax.numpy as jnp
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.copy_grad_sign_in_basis()
      >>> out, _ = tx.update(jnp.array([1.0, -3.0]), tx.init(None),
      ...                    projected_grad=jnp.array([-2.0, 1.0]))
      >>> print(out)
      [-1.  3.]

    References:
      Nikishev, `LRE: Low-rank eigenbasis <https://github.com/inikishev/lre>`_, 2025
    """

    def update_fn(
        updates: optax.Updates,
        state: optax.EmptyState,
        params: optax.Params | None = None,
        *,
        projected_grad: Any = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, optax.EmptyState]:
        del params, extra_args
        g = _required(projected_grad, "projected_grad", "copy_grad_sign_in_basis")
        out = jax.tree.map(lambda u, gg: jnp.copysign(u, gg.astype(u.dtype)), updates, g)
        return out, state

    return optax.GradientTransformationExtraArgs(lambda _: optax.EmptyState(), update_fn)


def scale_by_inverse_eigenvalues(
    power: jax.typing.ArrayLike = 0.5,
) -> optax.GradientTransformationExtraArgs:
    r"""Preconditions by the basis' eigenvalues: :math:`u \odot L^{-p}`.

    ``power=0.5`` whitens with a covariance curvature (the reference's
    ``LInvSqrt``), ``power=1`` applies a Newton step with a Hessian curvature
    (``LInv``). Uses the ``eigenvalues`` extra argument (``L_reg``, after the
    basis' regularisation; there is no extra epsilon). Masked columns output 0.

    .. math::

      \text{out}_i = u_i\, L_i^{-p}

    .. warning::
       Like the reference, a non-positive valid eigenvalue gives ``inf``/``NaN``
       (``power=0.5``) or a sign flip (``power=1``); keep ``eig_tol > 0`` or damping.

    Args:
      power: exponent :math:`p > 0`.

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs` (stateless).

    Examples:
      >>> import jax.numpy as jnp
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.scale_by_inverse_eigenvalues(0.5)
      >>> out, _ = tx.update(jnp.array([1.0, 1.0]), tx.init(None),
      ...                    eigenvalues=jnp.array([4.0, 16.0]))
      >>> print(out)
      [0.5  0.25]

    References:
      Nikishev, `LRE: Low-rank eigenbasis <https://github.com/inikishev/lre>`_, 2025
    """
    v.check_positive("power", power)

    def update_fn(
        updates: optax.Updates,
        state: optax.EmptyState,
        params: optax.Params | None = None,
        *,
        eigenvalues: Any = None,
        basis_valid: Any = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, optax.EmptyState]:
        del params, extra_args
        lam = _required(eigenvalues, "eigenvalues", "scale_by_inverse_eigenvalues")
        valid = _valid_like(basis_valid, updates)

        def scale(u: jax.Array, la: jax.Array, ok: jax.Array) -> jax.Array:
            la = la.astype(u.dtype)
            return jnp.where(ok, u * jnp.where(ok, la, 1) ** (-power), 0).astype(u.dtype)

        return jax.tree.map(scale, updates, lam, valid), state

    return optax.GradientTransformationExtraArgs(lambda _: optax.EmptyState(), update_fn)


# --------------------------------------------------------------------------- #
# ClipNormByEMA
# --------------------------------------------------------------------------- #


@register_basis_aware_state
class ClipNormByEmaInBasisState(NamedTuple):
    """State of :func:`clip_norm_by_ema_in_basis`.

    Attributes:
      ema: EMA of the incoming updates (per coordinate vector).
      prev_norm: norm of ``ema`` after the last growth clip or rotation.
      prev_set: whether ``prev_norm`` holds a value (set by the first rotation).
      started: whether ``ema`` has been initialised (first step).
      key: PRNG key for re-drawing a collapsed EMA.
    """

    ema: optax.Updates
    prev_norm: optax.Updates
    prev_set: jax.Array
    started: jax.Array
    key: jax.Array


def clip_norm_by_ema_in_basis(
    beta: jax.typing.ArrayLike = 0.99,
    max_growth: jax.typing.ArrayLike | None = 1.2,
    *,
    normalize: bool = False,
    min_norm: jax.typing.ArrayLike = 1e-2,
    init: jax.typing.ArrayLike = 1e-1,
    seed: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Clips (or, with ``normalize``, rescales) the update to the norm of its own EMA.

    With :math:`e_0 = \iota u_1` (``init``), :math:`\tau` = ``tiny``:

    .. math::

      \begin{align*}
        e' &= \beta e + (1-\beta) u, \quad
        e' \leftarrow e' / \max\!\left(\frac{\|e'\|}{\max(p\,\gamma, n_{min})}, 1\right),
        \; p \leftarrow \|e'\| \text{ (once } p \text{ is set)} \\
        \delta &= \frac{\|u\|}{\max(\|e'\|, \tau)}, \quad
        \text{out} = u / \max(\delta, 1) \;\text{ or }\; u / \max(\delta, \tau)
        \text{ (normalize)}
      \end{align*}

    On a basis change (after the first step): :math:`e \leftarrow Ce`,
    :math:`p = \|e\|`; a collapsed EMA (:math:`p < \tau`) is redrawn at random
    (on the valid coordinates), and one below :math:`n_{min}` is rescaled to
    :math:`n_{min}`. ``max_growth`` :math:`\gamma` ``=None`` disables the growth
    clip. ``normalize=True`` is the reference README's ``NormalizeByEMA``.

    Args:
      beta: EMA decay.
      max_growth: allowed growth :math:`\gamma` of the EMA norm per step, or ``None``.
      normalize: rescale every update to the EMA norm instead of only clipping.
      min_norm: floor :math:`n_{min}` of the norms.
      init: :math:`\iota`, first EMA as a fraction of the first update.
      seed: seed of the key used to redraw a collapsed EMA (an integer ``>= 0``;
        ``None`` means 0, and keeps :func:`optax.inject_hyperparams` from
        injecting it: list ``seed`` in ``static_args`` when you pass it).

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.clip_norm_by_ema_in_basis(normalize=True)
      >>> out, _ = tx.update(jnp.array([3.0, 4.0]), tx.init(jnp.zeros(2)))
      >>> print(out.round(4))
      [0.327 0.436]

    References:
      Nikishev, `LRE: Low-rank eigenbasis <https://github.com/inikishev/lre>`_, 2025
    """
    v.check_beta("beta", beta)
    if max_growth is not None:
        v.check_positive("max_growth", max_growth)
    v.check_nonnegative("min_norm", min_norm)
    v.check_nonnegative("init", init)
    seed = v.check_int("seed", 0 if seed is None else seed, minimum=0)

    def init_fn(params: optax.Params) -> ClipNormByEmaInBasisState:
        return ClipNormByEmaInBasisState(
            ema=optax.tree.zeros_like(params),
            prev_norm=jax.tree.map(lambda p: jnp.zeros([], p.dtype), params),
            prev_set=jnp.zeros([], jnp.bool_),
            started=jnp.zeros([], jnp.bool_),
            key=jax.random.PRNGKey(seed),
        )

    def update_fn(
        updates: optax.Updates,
        state: ClipNormByEmaInBasisState,
        params: optax.Params | None = None,
        *,
        basis_rotation: Any = None,
        basis_valid: Any = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, ClipNormByEmaInBasisState]:
        del params, extra_args
        key, sub = jax.random.split(state.key)
        valid = _valid_like(basis_valid, updates)
        n_leaves = len(jax.tree.leaves(updates))
        subkeys = jax.tree.unflatten(
            jax.tree.structure(updates), list(jax.random.split(sub, n_leaves))
        )

        def reproject(
            e: jax.Array, rot: BasisRotation | None, p: jax.Array, ok: jax.Array, k: jax.Array
        ) -> tuple[jax.Array, jax.Array, jax.Array]:
            if rot is None:
                return e, p, jnp.zeros([], jnp.bool_)
            apply = rot.apply & state.started
            e2 = rotate_linear(e, rot._replace(apply=jnp.ones([], jnp.bool_)))
            n2 = jnp.linalg.norm(e2)
            collapsed = n2 < tiny(e.dtype)
            redraw = jnp.where(ok, jax.random.normal(k, e.shape, e.dtype), 0)
            e2 = jnp.where(collapsed, redraw, e2)
            n2 = jnp.where(collapsed, jnp.linalg.norm(e2), n2)
            low = n2 < min_norm
            e2 = jnp.where(low, e2 * (min_norm / jnp.maximum(n2, tiny(e.dtype))), e2)
            n2 = jnp.where(low, jnp.asarray(min_norm, n2.dtype), n2)
            return jnp.where(apply, e2, e), jnp.where(apply, n2, p).astype(p.dtype), apply

        triples = map_with_rotation(
            lambda e, rot, p, ok, k: reproject(e, rot, p, ok, k),
            state.ema,
            basis_rotation,
            state.prev_norm,
            valid,
            subkeys,
        )
        treedef = jax.tree.structure(updates)
        flat = treedef.flatten_up_to(triples)
        ema = jax.tree.unflatten(treedef, [t[0] for t in flat])
        prev = jax.tree.unflatten(treedef, [t[1] for t in flat])
        applied = [t[2] for t in flat]
        prev_set = state.prev_set | (jnp.any(jnp.stack(applied)) if applied else False)

        def step(
            u: jax.Array, e: jax.Array, p: jax.Array
        ) -> tuple[jax.Array, jax.Array, jax.Array]:
            e = jnp.where(state.started, e, init * u)
            e_new = adam_core.ema(u, e, beta)
            n_new = jnp.linalg.norm(e_new)
            p_new = p
            if max_growth is not None:
                allowed = jnp.maximum(p * max_growth, min_norm)
                den = jnp.where(prev_set, jnp.maximum(n_new / allowed, 1), 1)
                e_new = e_new / den
                n_new = n_new / den
                p_new = jnp.where(prev_set, n_new, p)
            t = tiny(u.dtype)
            delta = jnp.linalg.norm(u) / jnp.maximum(n_new, t)
            delta = jnp.maximum(delta, t) if normalize else jnp.maximum(delta, 1)
            return (u / delta).astype(u.dtype), e_new.astype(e.dtype), p_new.astype(p.dtype)

        outs = jax.tree.map(step, updates, ema, prev)
        flat = treedef.flatten_up_to(outs)
        out = jax.tree.unflatten(treedef, [t[0] for t in flat])
        ema = jax.tree.unflatten(treedef, [t[1] for t in flat])
        prev = jax.tree.unflatten(treedef, [t[2] for t in flat])
        new_state = ClipNormByEmaInBasisState(
            ema, prev, jnp.asarray(prev_set), jnp.ones([], jnp.bool_), key
        )
        return out, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --------------------------------------------------------------------------- #
# Full-matrix and Hessian-based Adam variants
# --------------------------------------------------------------------------- #


def _spectral(
    mat: jax.Array,
    power: float,
    *,
    eig_tol: Any,
    damping: Any,
    rdamping: Any,
    use_abs: bool,
) -> jax.Array:
    """``V diag(λ^{-power}) Vᵀ`` over the regularised eigenpairs of symmetric ``mat``."""
    lam, vecs = jnp.linalg.eigh(sym(mat))
    if use_abs:
        lam = jnp.abs(lam)
    lam, valid = regularize(
        lam, jnp.ones(lam.shape, jnp.bool_), tol=eig_tol, damping=damping, rdamping=rdamping
    )
    f = jnp.where(valid, jnp.where(valid, lam, 1) ** (-power), 0)
    return (vecs * f[None, :]) @ vecs.T


@register_basis_aware_state
class ScaleByFullMatrixAdamInBasisState(NamedTuple):
    """State of :func:`scale_by_full_matrix_adam_in_basis`.

    Attributes:
      count: number of steps (int32).
      mu: first moment.
      sigma: ``(r, r)`` EMA of ``u uᵀ`` (data part only, starts at 0).
    """

    count: jax.Array
    mu: optax.Updates
    sigma: optax.Updates


def scale_by_full_matrix_adam_in_basis(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    eig_tol: jax.typing.ArrayLike | None = 1e-12,
    damping: jax.typing.ArrayLike = 1e-8,
    rdamping: jax.typing.ArrayLike = 1e-8,
) -> optax.GradientTransformationExtraArgs:
    r"""Full-matrix Adam in the ``r``-dimensional basis.

    .. math::

      \begin{align*}
        m &\leftarrow Cm, \quad \Sigma \leftarrow C\Sigma C^\top
          \;(\text{on a basis change}) \\
        m &\leftarrow \beta_1 m + (1-\beta_1)u, \quad
        \Sigma \leftarrow \beta_2\Sigma + (1-\beta_2)uu^\top \\
        \hat\Sigma + \epsilon I &= V\Lambda V^\top, \quad
        \text{out} = V\,\mathrm{reg}(\Lambda)^{-1/2}V^\top \hat m
      \end{align*}

    with :math:`\hat m = m/(1-\beta_1^t)`, :math:`\hat\Sigma = \Sigma/(1-\beta_2^t)`
    and ``reg`` = ``regularize(tol=eig_tol, damping, rdamping)``. The
    preconditioner is recomputed every step. Masked columns output 0.

    .. warning::
       The reference starts :math:`\Sigma` at :math:`I` and debiases the identity
       prior as data (≈ :math:`100I` at :math:`t = 1`) and reuses a stale
       preconditioner when ``update_freq > 1``; here only the data part is
       debiased (:math:`(\Sigma - \beta_2^tI)/(1-\beta_2^t)`, i.e. :math:`\Sigma`
       starts at 0) and the preconditioner is recomputed every step (deviation
       10). The ``amsgrad_beta`` option is not implemented.

    Args:
      b1: first-moment decay.
      b2: covariance decay.
      eps: added to the debiased covariance's diagonal.
      eig_tol: relative eigenvalue tolerance.
      damping: constant added to eigenvalues.
      rdamping: :math:`\rho\,\lambda_{max}` added to eigenvalues.

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.scale_by_full_matrix_adam_in_basis()
      >>> out, _ = tx.update(jnp.array([3.0, 0.0]), tx.init(jnp.zeros(2)))
      >>> print(out.round(4))
      [1. 0.]

    References:
      Agarwal et al, `Efficient Full-Matrix Adaptive Regularization
      <https://arxiv.org/abs/1806.02958>`_, 2019
    """
    v.check_beta("b1", b1)
    v.check_beta("b2", b2)
    v.check_nonnegative("eps", eps)

    def init_fn(params: optax.Params) -> ScaleByFullMatrixAdamInBasisState:
        sigma = jax.tree.map(lambda p: jnp.zeros(p.shape + p.shape[-1:], p.dtype), params)
        return ScaleByFullMatrixAdamInBasisState(
            jnp.zeros([], jnp.int32), optax.tree.zeros_like(params), sigma
        )

    def update_fn(
        updates: optax.Updates,
        state: ScaleByFullMatrixAdamInBasisState,
        params: optax.Params | None = None,
        *,
        basis_rotation: Any = None,
        basis_valid: Any = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, ScaleByFullMatrixAdamInBasisState]:
        del params, extra_args
        mu = map_with_rotation(rotate_linear, state.mu, basis_rotation)
        sigma = map_with_rotation(rotate_matrix, state.sigma, basis_rotation)
        mu = adam_core.ema(updates, mu, b1)
        sigma = adam_core.ema(jax.tree.map(lambda u: jnp.outer(u, u), updates), sigma, b2)
        count = optax.safe_increment(state.count)
        valid = _valid_like(basis_valid, updates)

        def direction(m_hat: jax.Array, s: jax.Array, ok: jax.Array, u: jax.Array) -> jax.Array:
            s_hat = s + eps * jnp.eye(s.shape[-1], dtype=s.dtype)
            p = _spectral(
                s_hat, 0.5, eig_tol=eig_tol, damping=damping, rdamping=rdamping, use_abs=False
            )
            return jnp.where(ok, p @ m_hat, 0).astype(u.dtype)

        out = jax.tree.map(
            direction,
            optax.tree.bias_correction(mu, b1, count),
            optax.tree.bias_correction(sigma, b2, count),
            valid,
            updates,
        )
        new_state = ScaleByFullMatrixAdamInBasisState(
            count, optax.tree.cast_like(mu, state.mu), optax.tree.cast_like(sigma, state.sigma)
        )
        return out, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@register_basis_aware_state
class ScaleByHutchinsonAdamInBasisState(NamedTuple):
    """State of :func:`scale_by_hutchinson_adam_in_basis`.

    Attributes:
      count: number of steps (int32).
      probe_count: number of Hessian-vector products seen (int32).
      mu: first moment.
      diag: EMA of the Hutchinson diagonal estimates (squared if ``square``).
    """

    count: jax.Array
    probe_count: jax.Array
    mu: optax.Updates
    diag: optax.Updates


def scale_by_hutchinson_adam_in_basis(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    square: bool = True,
    zhz: bool = True,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam whose second moment is a Hutchinson Hessian-diagonal estimate (AdaHessian/SophiaH).

    Needs a Hessian-vector-product curvature (its ``curvature_probes``). With
    :math:`d = (Q^\top z)\odot(Q^\top Hz)` (or :math:`Q^\top Hz` if ``zhz=False``),
    updated on steps with a product:

    .. math::

      \begin{align*}
        \text{square:}\quad D &\leftarrow \beta_2 D + (1-\beta_2) d^2, \quad
          \text{out} = \hat m / (\sqrt{\hat D} + \epsilon), \quad D \leftarrow (C\circ C)D \\
        \text{else:}\quad D &\leftarrow \beta_2 D + (1-\beta_2) d, \quad
          \text{out} = \hat m / (|\hat D| + \epsilon), \quad D \leftarrow C D
      \end{align*}

    :math:`\hat D` is debiased by the number of products; before the first product
    the output is 0.

    .. warning::
       The reference's AMSGrad buffer is broken (deviation 9); ``amsgrad_beta`` is
       not offered.

    Args:
      b1: first-moment decay.
      b2: Hessian-diagonal decay.
      eps: denominator term.
      square: AdaHessian (squared estimates) instead of SophiaH.
      zhz: use :math:`z\odot Hz` (Hutchinson) instead of :math:`Hz`.

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.scale_by_hutchinson_adam_in_basis()
      >>> probes = lowrank.CurvatureProbes(jnp.array([1.0, -1.0]), jnp.array([2.0, -4.0]),
      ...                                  jnp.array(True))
      >>> out, _ = tx.update(jnp.array([1.0, 1.0]), tx.init(jnp.zeros(2)),
      ...                    curvature_probes=probes)
      >>> print(out.round(4))
      [0.5  0.25]

    References:
      Yao et al, `ADAHESSIAN: An Adaptive Second Order Optimizer for Machine Learning
      <https://arxiv.org/abs/2006.00719>`_, 2021
    """
    v.check_beta("b1", b1)
    v.check_beta("b2", b2)
    v.check_nonnegative("eps", eps)
    rotate_d = rotate_diagonal if square else rotate_linear

    def init_fn(params: optax.Params) -> ScaleByHutchinsonAdamInBasisState:
        return ScaleByHutchinsonAdamInBasisState(
            jnp.zeros([], jnp.int32),
            jnp.zeros([], jnp.int32),
            optax.tree.zeros_like(params),
            optax.tree.zeros_like(params),
        )

    def update_fn(
        updates: optax.Updates,
        state: ScaleByHutchinsonAdamInBasisState,
        params: optax.Params | None = None,
        *,
        basis_rotation: Any = None,
        curvature_probes: CurvatureProbes | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, ScaleByHutchinsonAdamInBasisState]:
        del params, extra_args
        probes = _required(
            curvature_probes, "curvature_probes", "scale_by_hutchinson_adam_in_basis"
        )
        mu = map_with_rotation(rotate_linear, state.mu, basis_rotation)
        diag = map_with_rotation(rotate_d, state.diag, basis_rotation)
        mu = adam_core.ema(updates, mu, b1)
        present = probes.present

        def estimate(zp: jax.Array, hzp: jax.Array) -> jax.Array:
            est = zp * hzp if zhz else hzp
            return est * est if square else est

        est = jax.tree.map(estimate, probes.z, probes.hz)
        diag = keep_if(present, adam_core.ema(est, diag, b2), diag)
        count = optax.safe_increment(state.count)
        probe_count = state.probe_count + present.astype(jnp.int32)
        diag_count = jnp.maximum(probe_count, 1)
        if square:  # AdaHessian: the Adam quotient with D as the second moment
            out = adam_core.adam_direction(
                mu, diag, count, b1=b1, b2=b2, eps=eps, nu_count=diag_count
            )
        else:  # SophiaH: |D̂| in the denominator
            out = jax.tree.map(
                lambda m, d: m / (jnp.abs(d) + eps),
                optax.tree.bias_correction(mu, b1, count),
                optax.tree.bias_correction(diag, b2, diag_count),
            )
        out = jax.tree.map(
            lambda o, u: jnp.where(probe_count > 0, o, 0).astype(u.dtype), out, updates
        )
        return out, ScaleByHutchinsonAdamInBasisState(
            count,
            probe_count,
            optax.tree.cast_like(mu, state.mu),
            optax.tree.cast_like(diag, state.diag),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@register_basis_aware_state
class ScaleByFullMatrixHutchinsonAdamInBasisState(NamedTuple):
    """State of :func:`scale_by_full_matrix_hutchinson_adam_in_basis`.

    Attributes:
      count: number of steps (int32).
      probe_count: number of Hessian-vector products seen (int32).
      mu: first moment.
      hessian: ``(r, r)`` EMA of ``sym((QᵀHz)(Qᵀz)ᵀ)`` (data part, starts at 0).
    """

    count: jax.Array
    probe_count: jax.Array
    mu: optax.Updates
    hessian: optax.Updates


def scale_by_full_matrix_hutchinson_adam_in_basis(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-6,
    *,
    eig_tol: jax.typing.ArrayLike | None = 1e-12,
    damping: jax.typing.ArrayLike = 1e-8,
    rdamping: jax.typing.ArrayLike = 1e-8,
    abs: bool = True,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam preconditioned by an EMA of full-matrix Hutchinson Hessian estimates.

    Needs a Hessian-vector-product curvature. On steps with a product:

    .. math::

      \begin{align*}
        H &\leftarrow \beta_2 H + (1-\beta_2)\,\mathrm{sym}\big((Q^\top Hz)(Q^\top z)^\top\big),
        \quad H \leftarrow C H C^\top \text{ (basis change)} \\
        \hat H + \epsilon I &= V\Lambda V^\top, \quad
        \text{out} = V\,\mathrm{reg}(|\Lambda|)^{-1} V^\top \hat m
      \end{align*}

    :math:`\hat H` is debiased by the number of products; before the first product
    the output is 0. Masked columns output 0.

    .. warning::
       The reference starts :math:`H` at :math:`I`, debiases the prior as data and
       by the step count, and keeps a stale inverse when ``update_freq > 1``; here
       only the data part is debiased, by the number of products, and the inverse is
       recomputed every step (deviation 10).

    Args:
      b1: first-moment decay.
      b2: Hessian EMA decay.
      eps: added to the debiased Hessian's diagonal.
      eig_tol: relative eigenvalue tolerance.
      damping: constant added to eigenvalues.
      rdamping: :math:`\rho\,\lambda_{max}` added.
      abs: use :math:`|\Lambda|` (saddle-free).

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.scale_by_full_matrix_hutchinson_adam_in_basis(eps=0.0, damping=0.0,
      ...                                                            rdamping=0.0)
      >>> probes = lowrank.CurvatureProbes(jnp.array([1.0, 1.0]), jnp.array([2.0, 2.0]),
      ...                                  jnp.array(True))
      >>> out, _ = tx.update(jnp.array([2.0, 2.0]), tx.init(jnp.zeros(2)),
      ...                    curvature_probes=probes)
      >>> print(out.round(4))
      [0.5 0.5]

    References:
      Martens et al, `Estimating the Hessian by Back-propagating Curvature
      <https://arxiv.org/abs/1206.6464>`_, 2012
    """
    v.check_beta("b1", b1)
    v.check_beta("b2", b2)
    v.check_nonnegative("eps", eps)

    def init_fn(params: optax.Params) -> ScaleByFullMatrixHutchinsonAdamInBasisState:
        hess = jax.tree.map(lambda p: jnp.zeros(p.shape + p.shape[-1:], p.dtype), params)
        return ScaleByFullMatrixHutchinsonAdamInBasisState(
            jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32), optax.tree.zeros_like(params), hess
        )

    def update_fn(
        updates: optax.Updates,
        state: ScaleByFullMatrixHutchinsonAdamInBasisState,
        params: optax.Params | None = None,
        *,
        basis_rotation: Any = None,
        basis_valid: Any = None,
        curvature_probes: CurvatureProbes | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, ScaleByFullMatrixHutchinsonAdamInBasisState]:
        del params, extra_args
        probes = _required(
            curvature_probes, "curvature_probes", "scale_by_full_matrix_hutchinson_adam_in_basis"
        )
        mu = map_with_rotation(rotate_linear, state.mu, basis_rotation)
        hess = map_with_rotation(rotate_matrix, state.hessian, basis_rotation)
        mu = adam_core.ema(updates, mu, b1)
        present = probes.present

        est = jax.tree.map(lambda zp, hzp: sym(jnp.outer(hzp, zp)), probes.z, probes.hz)
        hess = keep_if(present, adam_core.ema(est, hess, b2), hess)
        count = optax.safe_increment(state.count)
        probe_count = state.probe_count + present.astype(jnp.int32)
        valid = _valid_like(basis_valid, updates)

        def direction(m_hat: jax.Array, hh: jax.Array, ok: jax.Array, u: jax.Array) -> jax.Array:
            h_hat = hh + eps * jnp.eye(hh.shape[-1], dtype=hh.dtype)
            inv = _spectral(
                h_hat, 1.0, eig_tol=eig_tol, damping=damping, rdamping=rdamping, use_abs=abs
            )
            return jnp.where(ok & (probe_count > 0), inv @ m_hat, 0).astype(u.dtype)

        out = jax.tree.map(
            direction,
            optax.tree.bias_correction(mu, b1, count),
            optax.tree.bias_correction(hess, b2, jnp.maximum(probe_count, 1)),
            valid,
            updates,
        )
        return out, ScaleByFullMatrixHutchinsonAdamInBasisState(
            count,
            probe_count,
            optax.tree.cast_like(mu, state.mu),
            optax.tree.cast_like(hess, state.hessian),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@register_basis_aware_state
class ScaleByFullMatrixBfgsAdamInBasisState(NamedTuple):
    """State of :func:`scale_by_full_matrix_bfgs_adam_in_basis`.

    Attributes:
      count: number of steps (int32).
      probe_count: number of Hessian-vector products seen (int32).
      mu: first moment.
      deviation: ``(r, r)`` ``B − I``: the BFGS estimate's departure from its
        identity prior (the prior does not rotate).
    """

    count: jax.Array
    probe_count: jax.Array
    mu: optax.Updates
    deviation: optax.Updates


def scale_by_full_matrix_bfgs_adam_in_basis(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-6,
    *,
    eig_tol: jax.typing.ArrayLike | None = 1e-12,
    damping: jax.typing.ArrayLike = 1e-8,
    rdamping: jax.typing.ArrayLike = 1e-8,
    tol: jax.typing.ArrayLike = 1e-16,
    use_eigh: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam preconditioned by an EMA of a BFGS Hessian estimate in the basis.

    Needs a Hessian-vector-product curvature; :math:`s = Q^\top z`,
    :math:`y = Q^\top Hz`. On steps with a product and :math:`s^\top y \ge tol`:

    .. math::

      \begin{align*}
        B' &= B + \frac{yy^\top}{s^\top y} - \frac{Bs(Bs)^\top}{s^\top Bs}, \quad
        B \leftarrow \beta_2 B + (1-\beta_2) B' \\
        \hat B &= I + \frac{B - I}{1 - \beta_2^{t}}, \quad
        \text{out} = (\hat B + \epsilon I)^{-1} \hat m
      \end{align*}

    (:math:`B_0 = I`, :math:`t` the number of products; :math:`|s^\top Bs|` is
    kept :math:`\ge 2\,\mathrm{tiny}`). On a basis change :math:`B - I \leftarrow
    C(B - I)C^\top`. ``use_eigh`` inverts through a regularised eigendecomposition
    instead of a linear solve; a non-finite solve falls back to
    :math:`\hat m / |\mathrm{diag}(\hat B)|`. Masked columns output 0.

    .. warning::
       The reference debiases the identity prior as data and keeps a stale inverse
       when ``update_freq > 1`` (deviation 10); here only :math:`B - I` is
       debiased and the solve is done every step.

    Args:
      b1: first-moment decay.
      b2: BFGS EMA decay.
      eps: added to the diagonal before inverting.
      eig_tol: relative tolerance (``use_eigh``).
      damping: eigenvalue damping (``use_eigh``).
      rdamping: relative eigenvalue damping (``use_eigh``).
      tol: skip the BFGS update when :math:`s^\top y < tol`.
      use_eigh: invert by eigendecomposition.

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.scale_by_full_matrix_bfgs_adam_in_basis(eps=0.0)
      >>> probes = lowrank.CurvatureProbes(jnp.array([1.0, 0.0]), jnp.array([3.0, 0.0]),
      ...                                  jnp.array(True))
      >>> out, _ = tx.update(jnp.array([3.0, 1.0]), tx.init(jnp.zeros(2)),
      ...                    curvature_probes=probes)
      >>> print(out.round(4))
      [1. 1.]

    References:
      Nocedal & Wright, `Numerical Optimization
      <https://doi.org/10.1007/978-0-387-40065-5>`_, 2006
    """
    v.check_beta("b1", b1)
    v.check_beta("b2", b2)
    v.check_nonnegative("eps", eps)
    v.check_nonnegative("tol", tol)

    def init_fn(params: optax.Params) -> ScaleByFullMatrixBfgsAdamInBasisState:
        dev = jax.tree.map(lambda p: jnp.zeros(p.shape + p.shape[-1:], p.dtype), params)
        return ScaleByFullMatrixBfgsAdamInBasisState(
            jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32), optax.tree.zeros_like(params), dev
        )

    def update_fn(
        updates: optax.Updates,
        state: ScaleByFullMatrixBfgsAdamInBasisState,
        params: optax.Params | None = None,
        *,
        basis_rotation: Any = None,
        basis_valid: Any = None,
        curvature_probes: CurvatureProbes | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, ScaleByFullMatrixBfgsAdamInBasisState]:
        del params, extra_args
        probes = _required(
            curvature_probes, "curvature_probes", "scale_by_full_matrix_bfgs_adam_in_basis"
        )
        mu = map_with_rotation(rotate_linear, state.mu, basis_rotation)
        dev = map_with_rotation(rotate_matrix, state.deviation, basis_rotation)
        mu = adam_core.ema(updates, mu, b1)
        present = probes.present

        def new_dev(d: jax.Array, s: jax.Array, y: jax.Array) -> jax.Array:
            s = s.astype(d.dtype)
            y = y.astype(d.dtype)
            b = jnp.eye(d.shape[-1], dtype=d.dtype) + d
            sy = s @ y
            bs = b @ s
            sbs = s @ bs
            t = tiny(d.dtype)
            sbs = jnp.where(jnp.abs(sbs) < t, jnp.where(sbs < 0, -t, t), sbs)
            step_ok = present & (sy >= tol)
            sy_safe = jnp.where(step_ok, sy, 1)
            delta = jnp.outer(y, y) / sy_safe - jnp.outer(bs, bs) / sbs
            return jnp.where(step_ok, adam_core.ema(d + delta, d, b2), d)

        dev = jax.tree.map(new_dev, dev, probes.z, probes.hz)
        count = optax.safe_increment(state.count)
        probe_count = state.probe_count + present.astype(jnp.int32)
        valid = _valid_like(basis_valid, updates)

        def direction(m_hat: jax.Array, d_hat: jax.Array, ok: jax.Array, u: jax.Array) -> jax.Array:
            eye = jnp.eye(d_hat.shape[-1], dtype=d_hat.dtype)
            b_hat = eye + d_hat + eps * eye
            if use_eigh:
                x = (
                    _spectral(
                        b_hat,
                        1.0,
                        eig_tol=eig_tol,
                        damping=damping,
                        rdamping=rdamping,
                        use_abs=False,
                    )
                    @ m_hat
                )
            else:
                x = jnp.linalg.solve(b_hat, m_hat)
            fallback = m_hat / jnp.maximum(jnp.abs(jnp.diagonal(b_hat)), tiny(d_hat.dtype))
            x = jnp.where(jnp.all(jnp.isfinite(x)), x, fallback)
            return jnp.where(ok, x, 0).astype(u.dtype)

        out = jax.tree.map(
            direction,
            optax.tree.bias_correction(mu, b1, count),
            optax.tree.bias_correction(dev, b2, jnp.maximum(probe_count, 1)),
            valid,
            updates,
        )
        return out, ScaleByFullMatrixBfgsAdamInBasisState(
            count,
            probe_count,
            optax.tree.cast_like(mu, state.mu),
            optax.tree.cast_like(dev, state.deviation),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@register_basis_aware_state
class ScaleByCubicAdamInBasisState(NamedTuple):
    """State of :func:`scale_by_cubic_adam_in_basis`.

    Attributes:
      count: number of steps (int32).
      mu: first moment.
      nu: second moment.
      mu3: third moment (diagonal).
    """

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates
    mu3: optax.Updates


def scale_by_cubic_adam_in_basis(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.99,
    b3: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-8,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam with a third moment: minimises a per-coordinate cubic model.

    With debiased moments :math:`\hat m_1, \hat m_2, \hat m_3` of :math:`u, u^2, u^3`
    and :math:`A = \mathrm{sign}(\hat m_3)|\hat m_3|^{1/3}`, :math:`B = \sqrt{\hat
    m_2}`, :math:`C = \hat m_1`, the step :math:`x^\ast` is the root of
    :math:`Ax^2 + Bx + C` with the lower value of :math:`\tfrac A3x^3 + \tfrac B2x^2
    + Cx` (denominator :math:`2A` kept at magnitude :math:`\ge\epsilon`), or
    :math:`-C/(B+\epsilon)` if the discriminant is negative; the output is
    :math:`-x^\ast`. On a basis change :math:`m_1 \leftarrow Cm_1`,
    :math:`m_2 \leftarrow (C\circ C)m_2`, :math:`m_3 \leftarrow (C\circ C\circ
    C)m_3` (the exact diagonal of the rotated third-moment tensor).

    .. math::

      \text{out} = -\arg\min_{x \in \{x_0, x_1\}} \tfrac A3x^3 + \tfrac B2x^2 + Cx

    .. warning::
       Where :math:`A = 0` the reference divides by 0 (NaN on masked columns);
       here :math:`2A` is clipped to :math:`+\epsilon`. The reference's
       ``approx_reproject`` flag is unnecessary: both its branches compute
       :math:`(C\circ C\circ C)m_3`.

    Args:
      b1: first-moment decay.
      b2: second-moment decay.
      b3: third-moment decay.
      eps: denominator guard.

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.scale_by_cubic_adam_in_basis()
      >>> out, _ = tx.update(jnp.array([1.0, -1.0]), tx.init(jnp.zeros(2)))
      >>> print(out.round(4))
      [ 1. -1.]

    References:
      Nikishev, `LRE: Low-rank eigenbasis <https://github.com/inikishev/lre>`_, 2025
    """
    v.check_beta("b1", b1)
    v.check_beta("b2", b2)
    v.check_beta("b3", b3)
    v.check_nonnegative("eps", eps)

    def init_fn(params: optax.Params) -> ScaleByCubicAdamInBasisState:
        return ScaleByCubicAdamInBasisState(
            jnp.zeros([], jnp.int32),
            optax.tree.zeros_like(params),
            optax.tree.zeros_like(params),
            optax.tree.zeros_like(params),
        )

    def update_fn(
        updates: optax.Updates,
        state: ScaleByCubicAdamInBasisState,
        params: optax.Params | None = None,
        *,
        basis_rotation: Any = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, ScaleByCubicAdamInBasisState]:
        del params, extra_args
        mu = map_with_rotation(rotate_linear, state.mu, basis_rotation)
        nu = map_with_rotation(rotate_diagonal, state.nu, basis_rotation)
        mu3 = map_with_rotation(rotate_cubic, state.mu3, basis_rotation)
        mu = adam_core.ema(updates, mu, b1)
        nu = adam_core.ema(jax.tree.map(jnp.square, updates), nu, b2)
        mu3 = adam_core.ema(jax.tree.map(lambda u: u**3, updates), mu3, b3)
        count = optax.safe_increment(state.count)

        def direction(m1: jax.Array, m2: jax.Array, m3: jax.Array, u: jax.Array) -> jax.Array:
            a = jnp.sign(m3) * jnp.abs(m3) ** (1 / 3)
            b = jnp.sqrt(m2)
            c = m1
            disc = b * b - 4 * a * c
            two_a = 2 * a
            denom = jnp.where(jnp.abs(two_a) < eps, jnp.where(two_a < 0, -eps, eps), two_a)
            root = jnp.sqrt(jnp.maximum(disc, 0))
            x0 = (-b + root) / denom
            x1 = (-b - root) / denom

            def f(x: jax.Array) -> jax.Array:
                return (a / 3) * x**3 + (b / 2) * x**2 + c * x

            x_star = jnp.where(f(x0) < f(x1), x0, x1)
            x = jnp.where(disc < 0, -c / (b + eps), x_star)
            return (-x).astype(u.dtype)

        out = jax.tree.map(
            direction,
            optax.tree.bias_correction(mu, b1, count),
            optax.tree.bias_correction(nu, b2, count),
            optax.tree.bias_correction(mu3, b3, count),
            updates,
        )
        return out, ScaleByCubicAdamInBasisState(
            count,
            optax.tree.cast_like(mu, state.mu),
            optax.tree.cast_like(nu, state.nu),
            optax.tree.cast_like(mu3, state.mu3),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
