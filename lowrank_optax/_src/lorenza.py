"""LORENZA: zeroth-order SAM in a randomized low-rank subspace, Adam in the subspace.

No official LORENZA code exists; this module implements the library's own
specification (``lorenza.md``). The pieces are:

* :func:`zo_sam_perturb`: a full-shape transformation that estimates the SAM
  ascent direction with symmetric finite differences along random directions
  (inside the current subspace when it runs as ``pre_projection`` of
  :func:`project_lowrank`, full-space Gaussians otherwise), moves to the
  perturbed point and returns the gradient there;
* :func:`lorenza`: the alias chaining :func:`project_lowrank` (randomized range
  finder, :func:`scale_by_adam_in_basis` inside, :func:`zo_sam_perturb` as its
  ``pre_projection``), :func:`decay_weights_after_update` and the learning rate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lowrank_optax._src import validation as v
from lowrank_optax._src.adam_in_basis import scale_by_adam_in_basis
from lowrank_optax._src.numerics import float16_in_float32, working_dtype
from lowrank_optax._src.project_lowrank import Subspace, project_lowrank
from lowrank_optax._src.projectors import ProjectorArg, randomized_projector
from lowrank_optax._src.quantize import quantize_state_arg
from lowrank_optax._src.subspace import DimsArg, MaskArg
from lowrank_optax._src.weight_decay import decay_weights_after_update

# Folded into ``PRNGKey(seed)`` to derive the probe stream, so that the probes and
# the randomized projector never share a key when both are built from one seed.
_PROBE_STREAM = 0x10E2A

# LORENZA's range finder: one Gaussian sketch + QR (library's choice, lorenza.md §2.2).
LORENZA_PROJECTOR = randomized_projector(oversampling=0, power_iterations=0)

# Per-leaf probe kind: a Subspace (coordinates drawn in the subspace), FULL (a
# full-shape Gaussian) or None (the leaf is not perturbed).
FULL = "full"
LeafKind = Subspace | str | None


class _NoSubspace:
    """Type of :data:`NO_SUBSPACE`."""

    def __repr__(self) -> str:
        return "NO_SUBSPACE"


# Default of ``zo_sam_perturb``'s ``subspace`` extra argument: "not run inside
# project_lowrank". Not ``None``, which is the wrapper's subspace tree of a
# bare-array parameter that is not projected.
NO_SUBSPACE = _NoSubspace()


class ZoSamPerturbState(NamedTuple):
    """State of :func:`zo_sam_perturb`.

    Attributes:
      key: PRNG key (``uint32[2]``) of the probe directions; split once per step.
    """

    key: jax.Array


def _coord_shape(kind: LeafKind, leaf: jax.Array) -> tuple[int, ...]:
    return kind.coord_shape if isinstance(kind, Subspace) else tuple(jnp.shape(leaf))


def leaf_kinds(params: Any, subspace: Any, *, perturb_unprojected: bool) -> list[LeafKind]:
    """Probe kind of every leaf of ``params`` (see the module constants).

    ``subspace`` is :data:`NO_SUBSPACE` when the transformation runs outside
    :func:`project_lowrank` (every leaf gets a full-space probe), else the tree
    the wrapper passes: a :class:`Subspace` or ``None`` per leaf of ``params``
    (a bare-array ``params`` whose leaf is not projected gives ``None`` itself).
    """
    treedef = jax.tree.structure(params)
    if subspace is NO_SUBSPACE:
        return [FULL] * treedef.num_leaves
    try:
        subs = treedef.flatten_up_to(subspace)
    except (ValueError, TypeError) as err:
        raise ValueError(
            "`subspace` must have one entry (a lowrank.Subspace or None) per parameter "
            f"leaf, with the structure of the parameters ({treedef}); got {subspace!r}."
        ) from err
    unprojected = FULL if perturb_unprojected else None
    return [s if isinstance(s, Subspace) else unprojected for s in subs]


def probe_coordinates(
    step_key: jax.Array, probe: jax.Array | int, kinds: list[LeafKind], leaves: list[jax.Array]
) -> list[jax.Array | None]:
    """Gaussian coordinates ``U_j`` of probe ``probe`` for every perturbed leaf.

    The key of leaf ``i`` in probe ``j`` is ``fold_in(fold_in(step_key, j), i)``.
    Coordinates have the subspace's ``coord_shape`` (projected leaves) or the
    leaf's shape (full-space probes), in at least float32.
    """
    probe_key = jax.random.fold_in(step_key, probe)
    out: list[jax.Array | None] = []
    for i, (kind, w) in enumerate(zip(kinds, leaves, strict=True)):
        if kind is None:
            out.append(None)
            continue
        dtype = working_dtype(jnp.result_type(w))
        out.append(
            jax.random.normal(jax.random.fold_in(probe_key, i), _coord_shape(kind, w), dtype)
        )
    return out


def to_full(kinds: list[LeafKind], coords: list[jax.Array | None]) -> list[jax.Array | None]:
    """Maps probe coordinates to full-shape directions ``Δ = back(U)`` (no scale)."""
    return [
        c if k is None or not isinstance(k, Subspace) else k.back(c)
        for k, c in zip(kinds, coords, strict=True)
    ]


def _shifted(leaves: list[jax.Array], deltas: list[jax.Array | None], step: Any) -> list[Any]:
    """``W + step·Δ`` rounded to each parameter's dtype (unperturbed leaves as is)."""
    return [
        w if d is None else (w + step * d).astype(jnp.result_type(w))
        for w, d in zip(leaves, deltas, strict=True)
    ]


def _scalar_loss(value: Any) -> jax.Array:
    if isinstance(value, (tuple, list)):
        raise ValueError(
            "`value_fn` must return a scalar loss, got a tuple/list (a loss with auxiliary "
            "outputs? Drop the auxiliaries, e.g. with lowrank.make_value_and_grad_fns(..., "
            "has_aux=True))."
        )
    if jnp.shape(value) != ():
        raise ValueError(
            f"`value_fn` must return a scalar loss, got an array of shape {jnp.shape(value)}."
        )
    return jnp.asarray(value)


def estimate_ascent(
    value_fn: Callable[[Any], Any],
    params: Any,
    kinds: list[LeafKind],
    step_key: jax.Array,
    *,
    mu: jax.typing.ArrayLike,
    num_probes: int,
) -> tuple[list[jax.Array | None], jax.Array, jax.Array]:
    r"""Zeroth-order estimate :math:`\hat G` of the gradient restricted to the probes' span.

    For ``j = 0..num_probes-1``: :math:`\Delta_j = \mathrm{back}(U_j)`,
    :math:`c_j = [f(W+\mu\Delta_j) - f(W-\mu\Delta_j)]/(2\mu)` (all leaves
    perturbed jointly), and :math:`\hat G = \frac1q\sum_j c_j \Delta_j`. The probes
    run in a :func:`jax.lax.scan`, so ``value_fn`` is traced twice and evaluated
    ``2·num_probes`` times; the sum is accumulated in low-rank coordinates (with
    one probe, :math:`\hat G = c_1\Delta_1` directly, without the scan).

    Returns:
      ``(g_hat, c, finite)``: per-leaf :math:`\hat G` (``None`` for unperturbed
      leaves, at least float32), the ``num_probes`` coefficients :math:`c_j` and
      whether all of them are finite.
    """
    leaves, treedef = jax.tree.flatten(params)

    def evaluate(shifted_leaves: list[Any]) -> jax.Array:
        return _scalar_loss(value_fn(jax.tree.unflatten(treedef, shifted_leaves)))

    def probe(j: jax.Array | int) -> tuple[list[Any], list[Any], jax.Array]:
        coords = probe_coordinates(step_key, j, kinds, leaves)
        deltas = to_full(kinds, coords)
        f_plus = evaluate(_shifted(leaves, deltas, mu))
        f_minus = evaluate(_shifted(leaves, deltas, -mu))
        dtype = working_dtype(jnp.result_type(f_plus, f_minus))
        c = (f_plus.astype(dtype) - f_minus.astype(dtype)) / (2 * jnp.asarray(mu, dtype))
        return coords, deltas, c

    if num_probes == 1:  # Ĝ = c Δ: reuse Δ instead of a second back-projection
        _, deltas, c = probe(0)
        g_hat = [None if d is None else c.astype(d.dtype) * d for d in deltas]
        return g_hat, c[None], jnp.isfinite(c)

    def body(carry: Any, j: jax.Array) -> tuple[Any, jax.Array]:
        acc, finite = carry
        coords, _, c = probe(j)
        acc = [
            None if a is None else a + (c * u).astype(a.dtype)
            for a, u in zip(acc, coords, strict=True)
        ]
        return (acc, finite & jnp.isfinite(c)), c

    zero_coords = [
        None if k is None else jnp.zeros(_coord_shape(k, w), working_dtype(jnp.result_type(w)))
        for k, w in zip(kinds, leaves, strict=True)
    ]
    (acc, finite), c = jax.lax.scan(body, (zero_coords, jnp.asarray(True)), jnp.arange(num_probes))
    mean = [None if a is None else a / num_probes for a in acc]
    return to_full(kinds, mean), c, finite


def sam_point(
    params: Any, g_hat: list[jax.Array | None], finite: jax.Array, rho: jax.typing.ArrayLike
) -> Any:
    r"""``W + ε`` with :math:`\epsilon = \rho\,\hat G / \max(\lVert\hat G\rVert, \mathrm{tiny})`.

    The norm is global over the perturbed leaves (``None`` entries of ``g_hat``
    are not perturbed). Where :math:`\hat G` is zero, non-finite, or ``finite``
    is false, :math:`\epsilon = 0` (selected with ``where``); the point is
    rounded to each parameter's dtype.
    """
    leaves, treedef = jax.tree.flatten(params)
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in g_hat if g is not None))
    ok = finite & jnp.isfinite(norm) & (norm > 0)
    tiny = jnp.finfo(norm.dtype).tiny
    factor = jnp.where(ok, rho / jnp.maximum(norm, tiny), 0.0).astype(norm.dtype)
    eps = [None if g is None else factor * jnp.where(ok, g, 0.0) for g in g_hat]
    return jax.tree.unflatten(treedef, _shifted(leaves, eps, 1))


def _check_loss_fns(value_fn: Any, grad_fn: Any) -> None:
    if value_fn is None:
        raise ValueError(
            "lowrank.zo_sam_perturb / lowrank.lorenza needs the loss as the extra "
            "argument `value_fn` (and optionally `grad_fn`): call "
            "tx.update(grads, state, params, value_fn=f, grad_fn=g) with f(params) -> "
            "scalar loss and g(params) -> gradients on the current minibatch "
            "(see lowrank.make_value_and_grad_fns)."
        )
    if not callable(value_fn):
        raise TypeError(f"`value_fn` must be callable (params -> loss), got {value_fn!r}.")
    if grad_fn is not None and not callable(grad_fn):
        raise TypeError(f"`grad_fn` must be callable (params -> grads), got {grad_fn!r}.")


def _is_masked_node(x: Any) -> bool:
    return isinstance(x, optax.MaskedNode)


def _check_masked(value_fn: Callable[[Any], Any], params: Any) -> None:
    """A clear error when ``optax.masked`` hid leaves that ``value_fn`` needs.

    Inside :func:`optax.masked` / :func:`optax.multi_transform` the parameters
    arrive with :class:`optax.MaskedNode` placeholders; ``value_fn`` is traced
    once abstractly on them (trace time only) and, if it fails, the error says
    how to give it the full parameters.
    """
    if not any(_is_masked_node(x) for x in jax.tree.leaves(params, is_leaf=_is_masked_node)):
        return
    try:
        jax.eval_shape(value_fn, params)
    except Exception as err:  # noqa: BLE001 - any failure on placeholders gets the hint
        raise ValueError(
            "lowrank.zo_sam_perturb / lowrank.lorenza runs inside optax.masked (or "
            "optax.multi_transform): its parameters hold optax.MaskedNode placeholders "
            "for the leaves it does not own, and `value_fn` failed on them. The loss needs "
            "the full parameters: build the closures with "
            "lowrank.make_value_and_grad_fns(loss_fn, *batch, full_params=params), whose "
            "value_fn fills the placeholders from `params`; or do not mask the optimizer "
            "and choose the projected leaves with its `mask=` argument."
        ) from err


def zo_sam_perturb(
    rho: jax.typing.ArrayLike = 0.05,
    mu: jax.typing.ArrayLike = 1e-3,
    num_probes: int | None = None,
    *,
    seed: int | None = None,
    perturb_unprojected: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Zeroth-order SAM: gradient at a perturbation found by forward passes only.

    With :math:`f` the loss (the ``value_fn`` extra argument), :math:`W` the
    parameters and :math:`q` = ``num_probes``, each step draws Gaussian directions
    :math:`\Delta_j`, estimates the ascent direction by symmetric finite
    differences, moves to the SAM point with a **plus** sign (Foret et al.) and
    returns the gradient there:

    .. math::

      \begin{align*}
        \Delta_j &= \mathrm{back}(U_j), \quad U_j \sim \mathcal N(0, I), \quad
        j = 1..q \\
        c_j &= \frac{f(W + \mu\Delta_j) - f(W - \mu\Delta_j)}{2\mu} \\
        \hat G &= \frac1q \sum_{j=1}^q c_j \Delta_j, \qquad
        \epsilon = \rho\,\frac{\hat G}{\max(\lVert\hat G\rVert, \mathrm{tiny})} \\
        G_{\mathrm{SAM}} &= \nabla f(W + \epsilon)
      \end{align*}

    Inside :func:`project_lowrank` (as ``pre_projection``; see :func:`lorenza`)
    the wrapper passes ``subspace=``: for a projected leaf :math:`U_j` has the
    low-rank coordinate shape and :math:`\mathrm{back}` maps it into the subspace
    (:math:`Q U` for a left basis :math:`Q`, :math:`U P` for a right basis,
    :math:`P_L U P_R` for ``'full'``), so :math:`\mathbb E[\hat G] \to Q Q^\top
    \nabla f` as :math:`\mu \to 0`. Unprojected leaves are not perturbed unless
    ``perturb_unprojected`` (then full-shape Gaussians). Without ``subspace``
    (``optax.chain(lowrank.zo_sam_perturb(), optax.adam(lr))``, the full-space
    AdaZo-SAM analogue) every leaf gets a full-shape Gaussian probe. The norm is
    global over all leaves.

    Cost per step: :math:`2q` evaluations of ``value_fn`` and one of
    ``grad_fn``. The incoming ``updates`` are not used (the output replaces
    them); inside :func:`project_lowrank` they only feed the basis refreshes.
    With :math:`q > 1`, ``value_fn`` runs inside a :func:`jax.lax.scan` over the
    probes: it is traced twice whatever :math:`q`, so compile time does not grow
    with :math:`q`.

    Extra arguments of ``update`` (both on the **same minibatch**, typically
    closures over it; see :func:`make_value_and_grad_fns`):

    * ``value_fn(params) -> scalar loss`` (required);
    * ``grad_fn(params) -> gradient pytree`` (optional, default
      ``jax.grad(value_fn)``).

    ``update`` must run inside the user's jitted step (callables are not jit
    arguments).

    Degenerate cases: if :math:`\hat G = 0` (e.g. a flat loss) or any
    :math:`c_j` is not finite, :math:`\epsilon = 0` for that step and the output
    is ``grad_fn(W)`` (selected with ``where``, no Python branching). ``rho == 0``
    (a concrete zero) skips the probes entirely (no forward passes) and returns
    ``grad_fn(W)``. If no leaf is perturbed (every leaf unprojected and
    ``perturb_unprojected=False``) the probes are skipped as well.

    Numerics: the perturbed points :math:`W \pm \mu\Delta_j` and :math:`W +
    \epsilon` are rounded to the parameter dtype; probe coordinates, :math:`c_j`,
    :math:`\hat G` and its norm are computed in at least float32. The output is
    cast to the dtypes of ``updates``.

    Static arguments for :func:`optax.inject_hyperparams`: ``num_probes`` and
    ``seed`` when passed (their ``None`` defaults need no listing; booleans such
    as ``perturb_unprojected`` are static anyway); ``rho`` and ``mu`` are
    injectable.

    Library's choices (no official code exists): the probe distribution (full
    Gaussian in low-rank coordinates), the plus sign, global normalisation, the
    defaults ``rho=0.05`` (SAM convention), ``mu=1e-3`` (MeZO / torchzero
    central differences), ``num_probes=1`` (MeZO), ``perturb_unprojected=False``,
    and the probe key ``fold_in(PRNGKey(seed), 0x10E2A)`` (a stream distinct from
    a randomized projector's ``PRNGKey(seed)``).

    .. warning::
      The description this follows (a third-party summary of the LORENZA paper)
      uses probes :math:`Q\,\mathrm{diag}(u_j)\,Q^\top`, which cannot perturb a
      non-square weight, and a leading minus sign that turns the SAM ascent into
      descent. The library draws full Gaussian coordinates (rank-:math:`\leq r`,
      unbiased for :math:`QQ^\top\nabla f`) and uses the SAM plus sign.

    .. warning::
      With bf16/f16 parameters a perturbation :math:`\mu\Delta` with
      :math:`\mu = 10^{-3}` is close to the dtype's resolution, so the finite
      differences are coarse; use a larger ``mu`` with low-precision parameters
      (:func:`lorenza` computes float16 leaves in float32, bf16 ones as is).

    Args:
      rho: SAM radius :math:`\rho \geq 0`.
      mu: finite-difference step :math:`\mu > 0`.
      num_probes: number :math:`q \geq 1` of random directions per step
        (``None``: 1).
      seed: seed :math:`\geq 0` of the probe PRNG key kept in the state
        (``None``: 0).
      perturb_unprojected: with a ``subspace``, also perturb unprojected leaves
        (full-shape Gaussians); without one every leaf is perturbed anyway.

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs`.

    Raises:
      ValueError: on invalid arguments at construction; at ``update`` when
        ``value_fn`` is missing, ``params`` is ``None``, ``value_fn`` does not
        return a scalar, ``grad_fn`` returns a tree unlike ``updates``, or
        (inside :func:`optax.masked`) ``value_fn`` fails on the
        :class:`optax.MaskedNode` placeholders (build it with
        ``make_value_and_grad_fns(..., full_params=params)``).
      TypeError: at ``update`` when ``value_fn``/``grad_fn`` are not callable.

    Examples:
      Full-space AdaZo-SAM:

      >>> import jax, jax.numpy as jnp, optax
      >>> import lowrank_optax as lowrank
      >>> tx = optax.chain(lowrank.zo_sam_perturb(rho=0.05), optax.adam(1e-1))
      >>> params = {'w': jnp.ones((4, 3))}
      >>> loss = lambda p: jnp.sum(p['w'] ** 2)
      >>> state = tx.init(params)
      >>> @jax.jit
      ... def step(params, state):
      ...   grads = jax.grad(loss)(params)
      ...   updates, state = tx.update(grads, state, params, value_fn=loss)
      ...   return optax.apply_updates(params, updates), state
      >>> for _ in range(5):
      ...   params, state = step(params, state)
      >>> print('Objective function: {:.2f}'.format(loss(params)))
      Objective function: 3.10

    References:
      Refael et al, `LORENZA: Enhancing Generalization in Low-Rank Gradient LLM
      Training and Fine-Tuning via Efficient Zeroth-Order Adaptive SAM
      Optimization <https://arxiv.org/abs/2502.19571>`_, 2025

      Foret et al, `Sharpness-Aware Minimization for Efficiently Improving
      Generalization <https://arxiv.org/abs/2010.01412>`_, 2021

      Malladi et al, `Fine-Tuning Language Models with Just Forward Passes
      <https://arxiv.org/abs/2305.17333>`_, 2023
    """
    for name, value in (("rho", rho), ("mu", mu)):
        if callable(value):
            raise ValueError(
                f"`{name}` must be a scalar, not a schedule (use optax.inject_hyperparams "
                f"to change it during training); got {value!r}."
            )
    v.check_nonnegative("rho", rho)
    v.check_positive("mu", mu)
    num_probes = v.check_optional_int("num_probes", num_probes, minimum=1, default=1)
    seed = v.check_optional_int("seed", seed, minimum=0, default=0)
    if not isinstance(perturb_unprojected, bool):
        raise ValueError(
            f"`perturb_unprojected` must be a bool (True or False), got {perturb_unprojected!r}."
        )
    skip_probes = not callable(rho) and v.concrete_scalar(rho) == 0.0

    def init_fn(params: optax.Params) -> ZoSamPerturbState:
        del params
        return ZoSamPerturbState(key=jax.random.fold_in(jax.random.PRNGKey(seed), _PROBE_STREAM))

    def update_fn(
        updates: optax.Updates,
        state: ZoSamPerturbState,
        params: optax.Params | None = None,
        *,
        value_fn: Callable[[Any], Any] | None = None,
        grad_fn: Callable[[Any], Any] | None = None,
        subspace: Any = NO_SUBSPACE,
        **extra_args: Any,
    ) -> tuple[optax.Updates, ZoSamPerturbState]:
        del extra_args
        _check_loss_fns(value_fn, grad_fn)
        v.require_params(params)
        _check_masked(value_fn, params)
        key, step_key = jax.random.split(state.key)
        kinds = leaf_kinds(params, subspace, perturb_unprojected=perturb_unprojected)
        point = params
        if not (skip_probes or all(k is None for k in kinds)):
            g_hat, _, finite = estimate_ascent(
                value_fn, params, kinds, step_key, mu=mu, num_probes=num_probes
            )
            point = sam_point(params, g_hat, finite, rho)
        g_sam = (jax.grad(value_fn) if grad_fn is None else grad_fn)(point)
        if jax.tree.structure(g_sam) != jax.tree.structure(updates):
            raise ValueError(
                "`grad_fn` must return a tree with the structure of the updates "
                f"({jax.tree.structure(updates)}), got {jax.tree.structure(g_sam)}."
            )
        g_sam = jax.tree.map(lambda g, u: jnp.asarray(g).astype(jnp.result_type(u)), g_sam, updates)
        return g_sam, ZoSamPerturbState(key=key)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def lorenza(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-6,
    weight_decay: jax.typing.ArrayLike = 0.0,
    *,
    rank: int,
    update_proj_gap: int | None = None,
    scale: jax.typing.ArrayLike = 1.0,
    rho: jax.typing.ArrayLike = 0.05,
    mu: jax.typing.ArrayLike = 1e-3,
    num_probes: int | None = None,
    projector: ProjectorArg = LORENZA_PROJECTOR,
    proj_type: str = "std",
    on_refresh: str = "keep",
    dimension_numbers: DimsArg = None,
    mask: MaskArg = None,
    perturb_unprojected: bool = False,
    seed: int | None = None,
    state_bits: int | None = None,
    state_block_size: int | None = None,
    state_min_size: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""LORENZA: zeroth-order SAM and Adam in a randomized low-rank gradient subspace.

    For a projected leaf viewed as :math:`W \in \mathbb R^{m\times n}` with
    gradient :math:`G` (the incoming ``updates``), loss :math:`f` (the
    ``value_fn`` extra argument), rank :math:`r`, refresh period :math:`T` and
    step :math:`t` (0-based):

    .. math::

      \begin{align*}
        Q_t &= \mathrm{rangefinder}_r(G_t) \text{ if } t \bmod T = 0
               \text{ else } Q_{t-1} \\
        \hat G_t &= \frac1q\sum_{j=1}^q
            \frac{f(W+\mu\Delta_j) - f(W-\mu\Delta_j)}{2\mu}\,\Delta_j,
            \quad \Delta_j = Q_t U_j,\ U_j \sim \mathcal N(0, I) \\
        G^{\mathrm{SAM}}_t &= \nabla f\bigl(W + \rho\,\hat G_t/\lVert\hat G_t\rVert\bigr),
            \qquad R_t = Q_t^\top G^{\mathrm{SAM}}_t \\
        M_t &= \beta_1 M_{t-1} + (1-\beta_1) R_t, \quad
        V_t = \beta_2 V_{t-1} + (1-\beta_2) R_t^2 \\
        N_t &= \frac{M_t}{\sqrt{V_t} + \epsilon}\cdot
               \frac{\sqrt{1-\beta_2^{t+1}}}{1-\beta_1^{t+1}} \\
        W_{t+1} &= \bigl(W_t - \eta_t\,\alpha\,Q_t N_t\bigr)(1 - \eta_t\lambda)
      \end{align*}

    (shown for a left basis, ``proj_type='std'`` with :math:`m < n`; the other
    sides as in :func:`project_lowrank`). The default projector,
    ``randomized_projector(oversampling=0, power_iterations=0)``, draws
    :math:`K = r` Gaussian columns and keeps the top-:math:`r` factors of one
    sketch (:func:`randomized_factors`); any :class:`Projector` may replace it.
    Unprojected leaves (1-D biases, leaves excluded by ``mask``) get the same
    AdamW on :math:`G^{\mathrm{SAM}}` at full size, unperturbed unless
    ``perturb_unprojected``. The :math:`\Delta_j` are drawn in the same subspace
    the update uses, so the optimizer state is GaLore's (bases and low-rank
    moments) plus two PRNG keys. With ``state_bits=8`` the moments are stored
    block-wise in 8 bits between steps, :math:`M_t \leftarrow \mathcal
    D(\mathcal Q(M_t))` and :math:`V_t \leftarrow \mathcal D(\mathcal Q(V_t))`
    (8-bit GaLore's storage, see :func:`galore_adamw`): the chain below with
    ``quantize_state(scale_by_adam_in_basis(...), bits=8,
    block_size=state_block_size, min_size=state_min_size)`` as the inner
    optimizer.

    It is exactly the chain::

      optax.chain(
          lowrank.project_lowrank(
              lowrank.scale_by_adam_in_basis(b1, b2, eps, eps_mode='galore'),
              rank=rank, update_proj_gap=update_proj_gap, scale=scale,
              proj_type=proj_type, projector=projector,
              on_refresh=on_refresh, dimension_numbers=dimension_numbers,
              mask=mask,
              pre_projection=lowrank.zo_sam_perturb(
                  rho, mu, num_probes, seed=seed,
                  perturb_unprojected=perturb_unprojected)),
          lowrank.decay_weights_after_update(weight_decay, learning_rate),
          optax.scale_by_learning_rate(learning_rate))

    **Around another inner optimizer**: pass it to :func:`project_lowrank` with
    the same ``projector``/``pre_projection`` arguments, e.g.
    ``project_lowrank(optax.scale_by_lion(), rank=r,
    projector=lowrank.randomized_projector(0, 0),
    pre_projection=lowrank.zo_sam_perturb())``
    followed by the learning rate; its state then lives in the subspace.

    Calls: ``tx.update(grads, state, params, value_fn=f, grad_fn=g)`` (``g``
    defaults to ``jax.grad(f)``), both on the same minibatch, inside the jitted
    step; with Flax NNX ``optimizer.update(model, grads, value_fn=..., grad_fn=...)``
    (see :func:`make_nnx_value_and_grad_fns`). Per step: :math:`2q` forward
    evaluations of ``f`` and one ``grad_fn``; ``grads`` (the gradient at
    :math:`W`) is only consumed at refresh steps, so a step may compute it under
    ``jax.lax.cond(step % update_proj_gap == 0, ...)`` and pass zeros otherwise.
    With ``rho=0`` the update is exactly GaLore-Adam with the same projector.

    Static arguments for :func:`optax.inject_hyperparams`: ``rank`` and, when
    passed, the integers ``update_proj_gap``, ``num_probes``, ``seed``,
    ``state_bits``, ``state_block_size``, ``state_min_size`` (their ``None``
    defaults need no listing) and ``dimension_numbers`` / ``mask`` when
    they are callables. Strings, booleans and :class:`Projector` objects pass
    through as static values whether listed or not. ``learning_rate``, ``b1``,
    ``b2``, ``eps``, ``weight_decay``, ``rho``, ``mu`` and ``scale`` are
    injectable (with bfloat16 parameters pass ``hyperparam_dtype=jnp.float32``,
    see :func:`galore_adamw`).

    Edge cases: a bare-array ``params`` (or any tree) with nothing projected and
    ``perturb_unprojected=False`` is not perturbed at all, and the step equals
    :func:`galore_adamw`'s bit for bit; ``None`` leaves are skipped. Inside
    :func:`optax.masked` / :func:`optax.multi_transform` the parameters hold
    :class:`optax.MaskedNode` placeholders: build ``value_fn``/``grad_fn`` with
    ``make_value_and_grad_fns(..., full_params=params)`` so that the loss sees
    the full parameters (a ``value_fn`` that fails on the placeholders raises a
    ``ValueError`` saying so). float16 parameters are computed in float32 (the
    state, the probes and ``value_fn``/``grad_fn``'s argument are float32; the
    update is cast back to float16); integer parameters raise. A NaN/Inf
    gradient gives a NaN update; a huge finite gradient (e.g. ``1e30``)
    overflows Adam's second moment to ``inf`` and freezes every later update at
    exactly 0. Adam sees what ``grad_fn`` returns (a clip chained before
    ``lorenza`` only reaches the basis refreshes), so clip there:
    ``clip = optax.clip_by_global_norm(1.0)`` and
    ``grad_fn = lambda p: clip.update(jax.grad(loss)(p), clip.init(p))[0]``.

    Defaults: every default is the **library's choice** (no official code and no
    stated defaults exist): ``update_proj_gap=200`` (GaLore),
    ``randomized_projector(oversampling=0, power_iterations=0)`` ("one Gaussian
    sketch + QR"),
    ``num_probes=1`` and ``mu=1e-3`` (MeZO, torchzero central differences),
    ``rho=0.05`` (SAM), ``b1=0.9``, ``b2=0.999`` (Adam), ``eps=1e-6`` with
    galore-torch's eps placement, decoupled ``weight_decay=0.0`` applied after the
    update (galore-torch order), ``scale=1.0``, ``proj_type='std'`` and
    ``on_refresh='keep'`` (galore-torch), ``perturb_unprojected=False``.

    .. warning::
      There is no official implementation. The description this follows uses
      probes :math:`Q\,\mathrm{diag}(u_j)\,Q^\top` (shape-incompatible with
      non-square weights) and a minus sign that makes the SAM step a descent
      step; the library uses Gaussian low-rank coordinates and the SAM plus sign
      (see :func:`zo_sam_perturb`). The TMLR version's Lorenza+ (reusing the
      discarded orthogonal component) is not implemented.

    Args:
      learning_rate: learning rate :math:`\eta` or schedule.
      b1: first-moment decay :math:`\beta_1`.
      b2: second-moment decay :math:`\beta_2`.
      eps: :math:`\epsilon`, added to :math:`\sqrt{V}` before bias correction.
      weight_decay: decoupled weight decay :math:`\lambda \geq 0`.
      rank: rank :math:`r \geq 1` of the subspace (clipped per leaf).
      update_proj_gap: refresh period :math:`T \geq 1` (``None``: 200).
      scale: factor :math:`\alpha > 0` on back-projected updates.
      rho: SAM radius :math:`\rho \geq 0` (``0`` gives randomized GaLore-Adam).
      mu: finite-difference step :math:`\mu > 0`.
      num_probes: number :math:`q \geq 1` of probe directions per step
        (``None``: 1).
      projector: how bases are computed (a :class:`Projector` or ``'svd'`` /
        ``'randomized'``); default ``randomized_projector(oversampling=0,
        power_iterations=0)``, whose own ``seed`` seeds the sketches.
      proj_type: projection side (see :func:`project_lowrank`).
      on_refresh: ``'keep'``, ``'reset'`` or ``'reproject'`` (see
        :func:`project_lowrank`).
      dimension_numbers: leaf selection / N-D views (see :func:`project_lowrank`).
      mask: extra leaf selection (see :func:`project_lowrank`).
      perturb_unprojected: also perturb unprojected leaves (full-shape probes).
      seed: seed :math:`\geq 0` of the probes' PRNG key (``None``: 0; a stream
        distinct from the projector's even when both seeds are equal).
      state_bits: ``None`` (full-precision moments) or 8 (moments stored in 8
        bits, block-wise: :func:`quantize_state`).
      state_block_size: elements per quantization block, ``>= 1`` (``None``:
        256); used with ``state_bits=8``.
      state_min_size: moment leaves with fewer elements stay in full precision,
        ``>= 0`` (``None``: 4096); used with ``state_bits=8``.

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs`.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.lorenza(1e-1, rank=2, update_proj_gap=10)
      >>> params = {'w': jnp.ones((6, 4)), 'b': jnp.ones(4)}
      >>> loss = lambda p: jnp.sum(p['w'] ** 2) + jnp.sum(p['b'] ** 2)
      >>> state = tx.init(params)
      >>> @jax.jit
      ... def step(params, state):
      ...   grads = jax.grad(loss)(params)
      ...   updates, state = tx.update(grads, state, params, value_fn=loss)
      ...   return optax.apply_updates(params, updates), state
      >>> for _ in range(5):
      ...   params, state = step(params, state)
      >>> print('Objective function: {:.2f}'.format(loss(params)))
      Objective function: 14.61

    References:
      Refael et al, `LORENZA: Enhancing Generalization in Low-Rank Gradient LLM
      Training and Fine-Tuning via Efficient Zeroth-Order Adaptive SAM
      Optimization <https://arxiv.org/abs/2502.19571>`_, 2025

      Zhao et al, `GaLore: Memory-Efficient LLM Training by Gradient Low-Rank
      Projection <https://arxiv.org/abs/2403.03507>`_, 2024

      Halko et al, `Finding structure with randomness
      <https://arxiv.org/abs/0909.4061>`_, 2009
    """
    v.check_nonnegative("learning_rate", learning_rate)
    v.check_beta("b1", b1)
    v.check_beta("b2", b2)
    v.check_nonnegative("eps", eps)
    v.check_nonnegative("weight_decay", weight_decay)
    inner = quantize_state_arg(
        scale_by_adam_in_basis(b1, b2, eps, eps_mode="galore"),
        state_bits=state_bits,
        state_block_size=state_block_size,
        state_min_size=state_min_size,
    )
    tx = optax.chain(
        project_lowrank(
            inner,
            rank=rank,
            update_proj_gap=update_proj_gap,
            scale=scale,
            proj_type=proj_type,
            projector=projector,
            on_refresh=on_refresh,
            dimension_numbers=dimension_numbers,
            mask=mask,
            pre_projection=zo_sam_perturb(
                rho, mu, num_probes, seed=seed, perturb_unprojected=perturb_unprojected
            ),
        ),
        decay_weights_after_update(weight_decay, learning_rate),
        optax.scale_by_learning_rate(learning_rate),
    )
    return float16_in_float32(tx, "lowrank.lorenza")
