"""Curvatures for :func:`lowrank.eigenbasis_update`: low-rank corrections ``Y diag(α) Zᵀ``.

Each factory returns a :class:`Curvature`, a NamedTuple of pure functions whose
state holds arrays only. The driver calls ``collect`` on every step (it gathers
gradients, parameters, per-sample gradients or Hessian-vector products into
static-shape buffers) and, on basis-update steps, ``correction`` once per basis
block (the whole flattened model, or one leaf with ``per_leaf=True``) to turn
the block's rows of those buffers into a :class:`Correction`.

Inputs other than the gradient arrive as extra arguments of ``update``:
``hvp_fn`` (a function mapping a params-shaped tangent to the Hessian-vector
product, e.g. ``lambda v: jax.jvp(jax.grad(loss), (params,), (v,))[1]``),
``grad_fn`` (params → gradient, for finite differences) and
``per_sample_grads`` / ``jacobian`` (a params-shaped tree whose leaves have a
leading batch axis, e.g. ``jax.vmap(jax.grad(loss_i), (None, 0))(params, batch)``).
A missing one raises ``ValueError`` naming it.

Use as ``lowrank.curvatures.covariance()``, ``lowrank.curvatures.bfgs()``, ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lowrank_optax._src import validation as v
from lowrank_optax._src.lre import flatten
from lowrank_optax._src.lre.linalg import contract, match, tiny

__all__ = [
    "Correction",
    "Curvature",
    "bfgs",
    "covariance",
    "ema",
    "empirical_fisher",
    "full_hutchinson_hessian",
    "gauss_newton",
    "parameters",
    "sr1",
    "update",
]

Z_TYPES = ("normal", "rademacher", "s", "g", "mixed")
HVP_METHODS = ("autograd", "forward", "central")


class Correction(NamedTuple):
    """A low-rank correction ``Y diag(alpha) Zᵀ`` (``Z = Y`` when ``z`` is None).

    Attributes:
      y: ``(n, k)`` columns.
      z: ``(n, k)`` second factor or ``None`` (symmetric correction).
      alpha: ``(k,)`` signs/weights (1 except signed quasi-Newton terms).
      valid: ``(k,)`` mask; invalid columns are ignored by every basis.
    """

    y: jax.Array
    z: jax.Array | None
    alpha: jax.Array
    valid: jax.Array


class Buffers(NamedTuple):
    """What ``collect`` hands to ``correction``: arrays with ``n`` rows, column mask."""

    rows: tuple[jax.Array, ...]
    col_valid: jax.Array


class CollectContext(NamedTuple):
    """Everything a curvature may read on one step (built by the driver).

    Attributes:
      grad: flattened gradient ``(n,)`` in the compute dtype.
      params: flattened parameters ``(n,)`` or ``None``.
      unravel: maps a flat ``(n,)`` vector to a params-shaped tree.
      extra: the user's extra arguments of ``update``.
      should_update: boolean scalar, True on basis-update steps.
      count: int32 step counter.
      key: PRNG key for this step.
      project_out: ``z ↦ z − Q(Qᵀz)`` block by block (identity where no basis yet).
      normalize: ``z ↦ z / max(‖z‖, 2·tiny)`` block by block.
      always_update: static flag, True when every step is an update step
        (``update_freq=1``, ``init_steps=0``): no ``lax.cond`` is needed.
      rows: layout of the flat ``(n,)`` vectors when the gradients carry Explicit
        sharding types (a ``NamedSharding`` sharding ``n``), else ``None``;
        params-shaped trees are flattened with it.
    """

    grad: jax.Array
    params: jax.Array | None
    unravel: Callable[[jax.Array], Any]
    extra: dict[str, Any]
    should_update: jax.Array
    count: jax.Array
    key: jax.Array
    project_out: Callable[[jax.Array], jax.Array]
    normalize: Callable[[jax.Array], jax.Array]
    always_update: bool = False
    rows: Any = None


class Curvature(NamedTuple):
    """A curvature: pure functions plus static facts the driver checks.

    Attributes:
      name: the curvature's name (for messages).
      init: ``(n, dtype, update_freq) -> state``. On an Explicit mesh the driver
        lays out every array of the state whose leading dimension is ``n`` along
        ``n`` (the flat vectors' layout); curvature states hold no other arrays of
        that leading size.
      collect: ``(state, CollectContext) -> (state, Buffers, probes)``; ``probes`` is
        ``None`` or ``(z, Hz)`` flat vectors (zeros off update steps).
      correction: ``(rows, col_valid, apply_b, has_basis) -> Correction`` for one
        block; ``apply_b(S)`` is ``Q_acc diag(L_acc) Q_accᵀ S`` for that block.
      columns: ``update_freq -> k``, the number of correction columns (static).
      has_z: whether corrections carry a ``Z`` factor (asymmetric).
      signed: whether ``alpha`` may differ from 1.
      needs_params: whether ``update`` needs ``params``.
    """

    name: str
    init: Callable[..., Any]
    collect: Callable[..., tuple[Any, Buffers, tuple[jax.Array, jax.Array] | None]]
    correction: Callable[..., Correction]
    columns: Callable[[int], int]
    has_z: bool = False
    signed: bool = False
    needs_params: bool = False


def _require(extra: dict[str, Any], names: tuple[str, ...], who: str) -> None:
    missing = [n for n in names if n not in extra]
    if missing:
        raise ValueError(
            f"lowrank.curvatures.{who} needs the extra argument(s) {', '.join(missing)} "
            "passed to `update(updates, state, params, ...)`."
        )


def _need_params(ctx: CollectContext, who: str) -> jax.Array:
    v.require_params(ctx.params, f"lowrank.curvatures.{who}")
    return ctx.params


# --------------------------------------------------------------------------- #
# Gradient-history curvatures (Covariance, EMA, Parameters, Update)
# --------------------------------------------------------------------------- #


class BufferedState(NamedTuple):
    """State of the column-buffering curvatures.

    Attributes:
      buffer: ``(n, update_freq − 1)`` columns gathered since the last update
        (``None`` when ``update_freq`` is 1).
      fill: int32 number of filled buffer columns.
      memory: ``(n,)`` curvature-specific vector (EMA, previous parameters) or
        ``None``.
      started: boolean scalar; ``memory`` holds a value.
    """

    buffer: jax.Array
    fill: jax.Array
    memory: jax.Array | None
    started: jax.Array


def _buffered(
    name: str,
    column_fn: Callable[[BufferedState, CollectContext], tuple[jax.Array, jax.Array, Any, Any]],
    *,
    memory: bool,
    needs_params: bool,
) -> Curvature:
    """Curvature whose columns are one vector per step, flushed on update steps."""

    def init(n: int, dtype: jnp.dtype, update_freq: int) -> BufferedState:
        # No buffer with update_freq=1 (a zero-size array cannot be checkpointed).
        return BufferedState(
            buffer=jnp.zeros((n, update_freq - 1), dtype) if update_freq > 1 else None,
            fill=jnp.zeros([], jnp.int32),
            memory=jnp.zeros((n,), dtype) if memory else None,
            started=jnp.zeros([], jnp.bool_),
        )

    def collect(state: BufferedState, ctx: CollectContext) -> tuple[Any, Buffers, None]:
        col, col_ok, new_memory, new_started = column_fn(state, ctx)
        if state.buffer is None:
            y, col_valid, buffer = col[:, None], col_ok[None], None
        else:
            width = state.buffer.shape[1]
            y = jnp.concatenate([state.buffer, col[:, None]], axis=1)
            col_valid = jnp.concatenate([jnp.arange(width) < state.fill, col_ok[None]])
            # Off update steps the column goes into the buffer (index `width` = dropped).
            slot = jnp.where(ctx.should_update | ~col_ok, width, state.fill)
            buffer = state.buffer.at[:, slot].set(col, mode="drop")
        fill = jnp.where(ctx.should_update, 0, state.fill + col_ok.astype(jnp.int32))
        new_state = BufferedState(buffer, fill, new_memory, new_started)
        return new_state, Buffers((y,), col_valid), None

    def correction(
        rows: tuple[jax.Array, ...], col_valid: jax.Array, apply_b: Any, has_basis: jax.Array
    ) -> Correction:
        del apply_b, has_basis
        (y,) = rows
        return Correction(y, None, jnp.ones(y.shape[1], y.dtype), col_valid)

    return Curvature(
        name=name,
        init=init,
        collect=collect,
        correction=correction,
        columns=lambda update_freq: update_freq,
        needs_params=needs_params,
    )


def covariance() -> Curvature:
    r"""Empirical covariance of gradients: the correction is :math:`G G^\top`.

    The columns of :math:`G` are the gradients received since the previous basis
    update (``update_freq`` of them, one on the first update), so the correction
    has rank ``update_freq``.

    .. math::

      C \leftarrow C + G G^\top, \qquad G = [g_{t-k+1}, \dots, g_t]

    Returns:
      The corresponding :class:`Curvature`.

    Examples:
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.lre(1e-2, curvature=lowrank.curvatures.covariance())

    References:
      Agarwal et al, `Efficient Full-Matrix Adaptive Regularization
      <https://arxiv.org/abs/1806.02958>`_, 2019
    """

    def column(state: BufferedState, ctx: CollectContext) -> tuple[Any, Any, Any, Any]:
        return ctx.grad, jnp.ones([], jnp.bool_), state.memory, state.started

    return _buffered("covariance", column, memory=False, needs_params=False)


def ema(beta: jax.typing.ArrayLike = 0.9) -> Curvature:
    r"""Covariance of the gradients' exponential moving average ("momentum into curvature").

    .. math::

      m_t = \beta m_{t-1} + (1-\beta) g_t \;(m_0 = g_0), \qquad
      C \leftarrow C + M M^\top

    with :math:`M` the values of :math:`m` since the previous basis update.

    Args:
      beta: EMA decay :math:`\beta \in [0, 1)`.

    Returns:
      The corresponding :class:`Curvature`.

    Examples:
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.lre(1e-2, curvature=lowrank.curvatures.ema(0.9))

    References:
      Nikishev, `LRE: Low-rank eigenbasis <https://github.com/inikishev/lre>`_, 2025
    """
    v.check_beta("beta", beta)

    def column(state: BufferedState, ctx: CollectContext) -> tuple[Any, Any, Any, Any]:
        g = ctx.grad
        m = jnp.where(state.started, beta * state.memory + (1 - beta) * g, g).astype(g.dtype)
        return m, jnp.ones([], jnp.bool_), m, jnp.ones([], jnp.bool_)

    return _buffered("ema", column, memory=True, needs_params=False)


def parameters() -> Curvature:
    r"""Covariance of the parameters: the correction columns are the flattened parameters.

    .. math::

      C \leftarrow C + X X^\top, \qquad X = [x_{t-k+1}, \dots, x_t]

    Requires ``params`` in ``update``.

    Returns:
      The corresponding :class:`Curvature`.

    Examples:
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.lre(1e-2, curvature=lowrank.curvatures.parameters())

    References:
      Nikishev, `LRE: Low-rank eigenbasis <https://github.com/inikishev/lre>`_, 2025
    """

    def column(state: BufferedState, ctx: CollectContext) -> tuple[Any, Any, Any, Any]:
        x = _need_params(ctx, "parameters")
        return x, jnp.ones([], jnp.bool_), state.memory, state.started

    return _buffered("parameters", column, memory=False, needs_params=True)


def update() -> Curvature:
    r"""Covariance of past parameter changes: columns :math:`s_t = x_t - x_{t-1}`.

    There is no column on the first step (no previous parameters).

    .. math::

      C \leftarrow C + S S^\top, \qquad S = [s_{t-k+1}, \dots, s_t]

    .. warning::
       The reference crashes on its first step; here the first step simply has no
       correction (deviation 6 of the spec).

    Returns:
      The corresponding :class:`Curvature`.

    Examples:
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.lre(1e-2, curvature=lowrank.curvatures.update())

    References:
      Nikishev, `LRE: Low-rank eigenbasis <https://github.com/inikishev/lre>`_, 2025
    """

    def column(state: BufferedState, ctx: CollectContext) -> tuple[Any, Any, Any, Any]:
        x = _need_params(ctx, "update")
        s = (x - state.memory).astype(x.dtype)
        return s, state.started, x, jnp.ones([], jnp.bool_)

    return _buffered("update", column, memory=True, needs_params=True)


# --------------------------------------------------------------------------- #
# Per-sample curvatures
# --------------------------------------------------------------------------- #


def _per_sample(name: str, arg: str, batch_size: int | None) -> Curvature:
    if batch_size is not None:
        batch_size = v.check_int("batch_size", batch_size, minimum=1)

    def init(n: int, dtype: jnp.dtype, update_freq: int) -> optax.EmptyState:
        del n, dtype, update_freq
        return optax.EmptyState()

    def collect(state: Any, ctx: CollectContext) -> tuple[Any, Buffers, None]:
        _require(ctx.extra, (arg,), name)
        tree = ctx.extra[arg]
        flat = flatten.ravel_batched(tree, ctx.rows)  # (n, B)
        if flat.ndim != 2 or flat.shape[0] != ctx.grad.shape[0]:
            raise ValueError(
                f"lowrank.curvatures.{name}: `{arg}` must be params-shaped with a leading "
                f"batch axis; flattened to {flat.shape[::-1]}, expected "
                f"(batch, {ctx.grad.shape[0]})."
            )
        y = flat.astype(ctx.grad.dtype)
        return state, Buffers((y,), jnp.ones(y.shape[1], jnp.bool_)), None

    def correction(
        rows: tuple[jax.Array, ...], col_valid: jax.Array, apply_b: Any, has_basis: jax.Array
    ) -> Correction:
        del apply_b, has_basis
        (y,) = rows
        return Correction(y, None, jnp.ones(y.shape[1], y.dtype), col_valid)

    return Curvature(
        name=name,
        init=init,
        collect=collect,
        correction=correction,
        columns=lambda update_freq: 1 if batch_size is None else batch_size,
    )


def empirical_fisher(batch_size: int | None = None) -> Curvature:
    r"""Empirical Fisher: the correction is :math:`J^\top J` from per-sample gradients.

    With :math:`J \in \mathbb{R}^{B\times n}` the per-sample gradients (rows),
    the correction columns are :math:`J^\top`. Pass them as the extra argument
    ``per_sample_grads`` (a params-shaped tree with a leading batch axis, e.g.
    ``jax.vmap(jax.grad(loss), (None, 0))(params, batch)``). They are read on basis
    update steps only but must be passed on every step (static structure).

    .. math::

      C \leftarrow C + J^\top J

    .. warning::
       The reference replaces the gradient by :math:`\sum_i g_i` on update steps;
       here the gradient passed to ``update`` is always used (deviation 12).

    Args:
      batch_size: number of per-sample gradients, used only to size static
        buffers (the eigen bases keep ``max(rank, batch_size)`` columns); ``None``
        sizes for one column (a larger first correction is then truncated).

    Returns:
      The corresponding :class:`Curvature`.

    Examples:
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.lre(1e-2, curvature=lowrank.curvatures.empirical_fisher())

    References:
      Kunstner et al, `Limitations of the Empirical Fisher Approximation for
      Natural Gradient Descent <https://arxiv.org/abs/1905.12558>`_, 2019
    """
    return _per_sample("empirical_fisher", "per_sample_grads", batch_size)


def gauss_newton(batch_size: int | None = None) -> Curvature:
    r"""Gauss–Newton: the correction is :math:`J^\top J` from per-residual gradients.

    Pass the Jacobian of the residuals as the extra argument ``jacobian`` (a
    params-shaped tree whose leaves have a leading residual axis, e.g.
    ``jax.jacrev(residuals)(params)``).

    .. math::

      C \leftarrow C + J^\top J

    .. warning::
       The reference uses :math:`J^\top r` as the gradient on update steps and
       :math:`2J^\top r` otherwise; here the gradient passed to ``update`` is
       always used (deviation 12).

    Args:
      batch_size: number of residuals (static sizing only, see
        :func:`empirical_fisher`).

    Returns:
      The corresponding :class:`Curvature`.

    Examples:
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.lre(1e-2, curvature=lowrank.curvatures.gauss_newton())

    References:
      Nocedal & Wright, `Numerical Optimization
      <https://doi.org/10.1007/978-0-387-40065-5>`_, 2006
    """
    return _per_sample("gauss_newton", "jacobian", batch_size)


# --------------------------------------------------------------------------- #
# Hessian-vector-product curvatures
# --------------------------------------------------------------------------- #


class HvpState(NamedTuple):
    """State of the Hessian-vector-product curvatures.

    Attributes:
      prev_params: ``(n,)`` parameters at the previous Hessian-vector product
        (for ``z='s'``), or ``None``.
      has_prev: boolean scalar; ``prev_params`` holds a value.
    """

    prev_params: jax.Array | None
    has_prev: jax.Array


def _rademacher(key: jax.Array, n: int, dtype: jnp.dtype) -> jax.Array:
    return jax.random.rademacher(key, (n,), jnp.int32).astype(dtype)


def _hvp_curvature(
    name: str,
    *,
    z: str,
    orthogonalize: bool,
    hvp_method: str,
    h: jax.typing.ArrayLike,
    correction: Callable[..., Correction],
    has_z: bool,
    signed: bool,
    columns: int,
) -> Curvature:
    v.check_choice("z", z, Z_TYPES)
    v.check_choice("hvp_method", hvp_method, HVP_METHODS)
    v.check_positive("h", h)
    uses_s = z in ("s", "mixed")
    needs_params = uses_s or hvp_method != "autograd"

    def init(n: int, dtype: jnp.dtype, update_freq: int) -> HvpState:
        del update_freq
        prev = jnp.zeros((n,), dtype) if uses_s else None
        return HvpState(prev, jnp.zeros([], jnp.bool_))

    def make_z(state: HvpState, ctx: CollectContext) -> jax.Array:
        g = ctx.grad
        n, dtype = g.shape[0], g.dtype
        k_type, k_normal, k_rad = jax.random.split(ctx.key, 3)
        rad = match(_rademacher(k_rad, n, dtype), g)
        candidates = {
            "normal": lambda: match(jax.random.normal(k_normal, (n,), dtype), g),
            "rademacher": lambda: rad,
            "g": lambda: g,
            "s": lambda: jnp.where(state.has_prev, ctx.params - state.prev_params, 0).astype(dtype),
        }
        if z == "mixed":
            options = ("normal", "rademacher", "s", "g")
            choice = jax.random.randint(k_type, [], 0, len(options))
            vec = jnp.stack([candidates[o]() for o in options])[choice]
            fallback = (choice >= 2) & (jnp.sum(jnp.square(vec)) < tiny(dtype))
        else:
            vec = candidates[z]()
            fallback = jnp.zeros([], jnp.bool_)
            if z in ("s", "g"):
                fallback = jnp.sum(jnp.square(vec)) < tiny(dtype)
        vec = jnp.where(fallback, rad, vec)
        if orthogonalize:
            vec = ctx.normalize(ctx.project_out(vec))
        return vec

    def hvp(vec: jax.Array, ctx: CollectContext) -> jax.Array:
        g = ctx.grad
        if hvp_method == "autograd":
            out = ctx.extra["hvp_fn"](ctx.unravel(vec))
            return flatten.ravel(out, ctx.rows)[0].astype(g.dtype)
        x = ctx.params
        norm = jnp.linalg.norm(vec)
        safe = jnp.where(norm > 0, norm, 1)
        direction = vec / safe
        grad_fn = ctx.extra["grad_fn"]

        def grad_at(point: jax.Array) -> jax.Array:
            return flatten.ravel(grad_fn(ctx.unravel(point)), ctx.rows)[0].astype(g.dtype)

        if hvp_method == "forward":
            hz = (grad_at(x + h * direction) - g) / h
        else:
            hz = (grad_at(x + h * direction) - grad_at(x - h * direction)) / (2 * h)
        return jnp.where(norm > 0, hz * norm, 0).astype(g.dtype)

    def collect(state: HvpState, ctx: CollectContext) -> tuple[Any, Buffers, tuple[Any, Any]]:
        needed = ("hvp_fn",) if hvp_method == "autograd" else ("grad_fn",)
        _require(ctx.extra, needed, name)
        if needs_params:
            _need_params(ctx, name)
        g = ctx.grad

        def compute() -> tuple[jax.Array, jax.Array]:
            vec = make_z(state, ctx)
            return vec, hvp(vec, ctx)

        def skip() -> tuple[jax.Array, jax.Array]:
            return jnp.zeros_like(g), jnp.zeros_like(g)

        if ctx.always_update:
            vec, hz = compute()
        else:
            vec, hz = jax.lax.cond(ctx.should_update, compute, skip)
        if uses_s:
            prev = jnp.where(ctx.should_update, ctx.params, state.prev_params).astype(g.dtype)
            new_state = HvpState(prev, state.has_prev | ctx.should_update)
        else:
            new_state = state
        buffers = Buffers((vec[:, None], hz[:, None]), jnp.ones(1, jnp.bool_))
        return new_state, buffers, (vec, hz)

    return Curvature(
        name=name,
        init=init,
        collect=collect,
        correction=correction,
        columns=lambda update_freq: columns,
        has_z=has_z,
        signed=signed,
        needs_params=needs_params,
    )


def _initial_b(s: jax.Array, z: jax.Array, hz: jax.Array) -> jax.Array:
    """``v vᵀ S`` with ``v = (z + Hz)/2``: the reference's first B for quasi-Newton."""
    vec = (z + hz) / 2
    return vec @ contract(vec.T, s)


def full_hutchinson_hessian(
    z: str = "rademacher",
    *,
    orthogonalize: bool = False,
    hvp_method: str = "autograd",
    h: jax.typing.ArrayLike = 1e-3,
) -> Curvature:
    r"""Randomised rank-1 Hessian estimates :math:`(Hz) z^\top`.

    On every basis update a vector :math:`z` is drawn and :math:`Hz` computed; the
    correction is :math:`(Hz) z^\top` (:math:`\mathbb{E}[(Hz)z^\top] = H` for
    :math:`\mathbb{E}[zz^\top] = I`). It is asymmetric: ``eigenbasis_update``'s
    ``symmetrize`` decides how it reaches the basis.

    ``z``: ``'normal'``, ``'rademacher'``, ``'s'`` (:math:`x - x_{prev}` since the
    previous product), ``'g'`` (the gradient) or ``'mixed'`` (one of those four at
    random). ``'s'``/``'g'`` with :math:`\|z\|^2 < 2\,\mathrm{tiny}` (and ``'s'`` on
    the first product) fall back to Rademacher. ``orthogonalize`` replaces
    :math:`z` by :math:`(z - QQ^\top z)/\max(\|\cdot\|, 2\,\mathrm{tiny})`.

    ``hvp_method``: ``'autograd'`` calls the extra argument ``hvp_fn(z_tree)``;
    ``'forward'`` computes :math:`(\nabla f(x + h\hat z) - g)/h\,\|z\|` and
    ``'central'`` :math:`(\nabla f(x + h\hat z) - \nabla f(x - h\hat z))/(2h)\,\|z\|`
    with the extra argument ``grad_fn(params_tree)`` and :math:`\hat z = z/\|z\|`.

    .. math::

      C \leftarrow C + (Hz)\,z^\top

    .. warning::
       The reference ignores ``z`` (an uninitialised buffer makes every ``z``
       Gaussian); here the distribution is honoured (deviation 8).

    Args:
      z: distribution of the probe vectors.
      orthogonalize: project probes out of the current basis.
      hvp_method: ``'autograd'``, ``'forward'`` or ``'central'``.
      h: finite-difference step.

    Returns:
      The corresponding :class:`Curvature`.

    Examples:
      >>> import lowrank_optax as lowrank
      >>> curv = lowrank.curvatures.full_hutchinson_hessian('rademacher')

    References:
      Martens et al, `Estimating the Hessian by Back-propagating Curvature
      <https://arxiv.org/abs/1206.6464>`_, 2012
    """

    def correction(
        rows: tuple[jax.Array, ...], col_valid: jax.Array, apply_b: Any, has_basis: jax.Array
    ) -> Correction:
        del apply_b, has_basis
        zz, hz = rows
        return Correction(hz, zz, jnp.ones(1, hz.dtype), col_valid)

    return _hvp_curvature(
        "full_hutchinson_hessian",
        z=z,
        orthogonalize=orthogonalize,
        hvp_method=hvp_method,
        h=h,
        correction=correction,
        has_z=True,
        signed=False,
        columns=1,
    )


def sr1(
    z: str = "s",
    *,
    orthogonalize: bool = True,
    tol: jax.typing.ArrayLike = 1e-16,
    inverse: bool = False,
    positive_only: bool = False,
    hvp_method: str = "autograd",
    h: jax.typing.ArrayLike = 1e-3,
) -> Curvature:
    r"""Symmetric rank-1 (SR1) quasi-Newton corrections from Hessian-vector products.

    With :math:`s` the probe (``z`` as in :func:`full_hutchinson_hessian`, default
    the parameter change) and :math:`y = Hs` replacing the gradient difference,
    :math:`B = Q_{acc}\,\mathrm{diag}(L_{acc})\,Q_{acc}^\top`:

    .. math::

      r = y - Bs, \quad \rho = r^\top s, \quad
      C \leftarrow C + \mathrm{sgn}(\rho)\,\frac{r r^\top}{|\rho|}
      \text{ if } |\rho| > tol\,\|r\|\|s\|

    Otherwise there is no basis update. ``inverse`` swaps :math:`s` and :math:`y`
    (inverse-Hessian SR1); ``positive_only`` drops negative terms. Before the first
    basis :math:`B = vv^\top`, :math:`v = (s + y)/2`. Use bases with ``beta=None``
    (sums), as the reference recommends.

    Args:
      z: probe distribution (see :func:`full_hutchinson_hessian`).
      orthogonalize: project probes out of the current basis.
      tol: skip threshold.
      inverse: estimate the inverse Hessian.
      positive_only: drop corrections with negative sign.
      hvp_method: ``'autograd'``, ``'forward'`` or ``'central'``.
      h: finite-difference step.

    Returns:
      The corresponding :class:`Curvature`.

    Examples:
      >>> import lowrank_optax as lowrank
      >>> curv = lowrank.curvatures.sr1()

    References:
      Nocedal & Wright, `Numerical Optimization
      <https://doi.org/10.1007/978-0-387-40065-5>`_, 2006
    """
    v.check_nonnegative("tol", tol)

    def correction(
        rows: tuple[jax.Array, ...], col_valid: jax.Array, apply_b: Any, has_basis: jax.Array
    ) -> Correction:
        zz, hz = rows
        s, y = (hz, zz) if inverse else (zz, hz)
        bs = jnp.where(has_basis, apply_b(s), _initial_b(s, zz, hz))
        r = y - bs
        rs = jnp.sum(r * s, axis=0)
        keep = jnp.abs(rs) > tol * jnp.linalg.norm(r, axis=0) * jnp.linalg.norm(s, axis=0)
        keep = keep & jnp.isfinite(rs)
        if positive_only:
            keep = keep & (rs > 0)
        scale = jnp.where(keep, jnp.sqrt(jnp.where(keep, jnp.abs(rs), 1)), 1)
        vv = jnp.where(keep[None, :], r / scale[None, :], 0)
        return Correction(vv, None, jnp.where(rs < 0, -1.0, 1.0).astype(vv.dtype), keep & col_valid)

    return _hvp_curvature(
        "sr1",
        z=z,
        orthogonalize=orthogonalize,
        hvp_method=hvp_method,
        h=h,
        correction=correction,
        has_z=False,
        signed=True,
        columns=1,
    )


def bfgs(
    z: str = "s",
    *,
    orthogonalize: bool = True,
    c: jax.typing.ArrayLike | None = 0.2,
    tol: jax.typing.ArrayLike = 1e-12,
    hvp_method: str = "autograd",
    h: jax.typing.ArrayLike = 1e-3,
) -> Curvature:
    r"""BFGS quasi-Newton corrections from Hessian-vector products.

    With :math:`s` the probe, :math:`y = Hs` and :math:`B = Q_{acc}\,
    \mathrm{diag}(L_{acc})\,Q_{acc}^\top` (:math:`vv^\top`, :math:`v = (s + y)/2`
    before the first basis), Powell damping replaces :math:`y` by
    :math:`\theta y + (1-\theta)Bs` when :math:`s^\top y < c\, s^\top Bs`, with
    :math:`\theta = \mathrm{clip}((1-c)s^\top Bs/(s^\top Bs - s^\top y + tol), 0, 1)`:

    .. math::

      C \leftarrow C + \frac{y y^\top}{s^\top y}
        - \frac{Bs (Bs)^\top}{s^\top Bs + tol}
      \quad\text{if } s^\top y > tol

    The two columns reach the basis with signs :math:`[+1, -1]`. Use bases with
    ``beta=None`` (sums), as the reference recommends.

    .. warning::
       When :math:`s^\top Bs + tol \le 0` (indefinite :math:`B`) the reference
       produces NaN; here the correction is skipped.

    Args:
      z: probe distribution (see :func:`full_hutchinson_hessian`).
      orthogonalize: project probes out of the current basis.
      c: Powell damping threshold, ``None`` disables damping.
      tol: skip threshold and regulariser.
      hvp_method: ``'autograd'``, ``'forward'`` or ``'central'``.
      h: finite-difference step.

    Returns:
      The corresponding :class:`Curvature`.

    Examples:
      >>> import lowrank_optax as lowrank
      >>> curv = lowrank.curvatures.bfgs()

    References:
      Nocedal & Wright, `Numerical Optimization
      <https://doi.org/10.1007/978-0-387-40065-5>`_, 2006
    """
    if c is not None:
        v.check_range("c", c, low=0.0, high=1.0)
    v.check_nonnegative("tol", tol)

    def correction(
        rows: tuple[jax.Array, ...], col_valid: jax.Array, apply_b: Any, has_basis: jax.Array
    ) -> Correction:
        s, y = rows
        bs = jnp.where(has_basis, apply_b(s), _initial_b(s, s, y))
        sbs = jnp.sum(s * bs, axis=0)
        sy = jnp.sum(s * y, axis=0)
        if c is not None:
            damp = sy < c * sbs
            theta = jnp.clip((1 - c) * sbs / (sbs - sy + tol), 0, 1)
            theta = jnp.where(damp, theta, 1)
            y = theta[None, :] * y + (1 - theta[None, :]) * bs
            sy = jnp.sum(s * y, axis=0)
        keep = (sy > tol) & (sbs + tol > 0) & col_valid
        u = y / jnp.sqrt(jnp.where(keep, sy, 1))[None, :]
        w = bs / jnp.sqrt(jnp.where(keep, sbs + tol, 1))[None, :]
        cols = jnp.where(jnp.concatenate([keep, keep])[None, :], jnp.concatenate([u, w], 1), 0)
        alpha = jnp.concatenate([jnp.ones_like(sy), -jnp.ones_like(sy)])
        return Correction(cols, None, alpha, jnp.concatenate([keep, keep]))

    return _hvp_curvature(
        "bfgs",
        z=z,
        orthogonalize=orthogonalize,
        hvp_method=hvp_method,
        h=h,
        correction=correction,
        has_z=False,
        signed=True,
        columns=2,
    )
