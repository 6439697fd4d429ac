"""LRG-Adam: a global low-rank gradient filter followed by (torch-style) Adam.

The public "Low-Rank Gradient Adam (LRG-Adam) Optimizer Experiment" defines
``LRGAdam``, a thin wrapper around :class:`torch.optim.Adam` that, before every
Adam step, concatenates all parameter gradients into one vector, zero-pads it to
a square matrix, replaces that matrix by its truncated SVD and writes the result
back into ``p.grad``. This module provides the filter as a stateless chainable
element (:func:`lrg`), the alias :func:`lrg_adam`, and the small torch-style
AMSGrad primitive (:func:`scale_by_torch_amsgrad`) that the alias uses for
``amsgrad=True``.
"""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from optax._src import base, numerics, utils

from lowrank_optax._src import validation
from lowrank_optax._src.linalg import finite_or_zero

FlattenFn = Callable[[Any], tuple[jax.Array, Callable[[jax.Array], Any]]]
SvdFn = Callable[[jax.Array], tuple[jax.Array, jax.Array, jax.Array]]

_EMPTY_TREE_MSG = (
    "lrg: the gradient pytree has no array leaves; the low-rank filter needs at least one "
    "parameter (got an empty tree)."
)


def _default_svd(matrix: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    return jnp.linalg.svd(matrix, full_matrices=False)


def _explicit_spec(x: Any) -> jax.sharding.PartitionSpec | None:
    """The partition spec of ``x`` if it lives on a mesh with Explicit axes, else None."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.empty:
        return None
    if not any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
        return None
    return sharding.spec


def _replicate(x: jax.Array) -> jax.Array:
    """Reshards an explicitly sharded array to fully replicated (no-op otherwise)."""
    if _explicit_spec(x) is None:
        return x
    return jax.sharding.reshard(x, jax.sharding.PartitionSpec())


def _check_nonempty(tree: Any) -> None:
    if not jax.tree.leaves(tree):
        raise ValueError(_EMPTY_TREE_MSG)


def _low_rank_filter(flat: jax.Array, rank: int, svd_fn: SvdFn) -> jax.Array:
    """Pads ``flat`` to an s x s matrix, truncates its SVD to ``rank``, crops back."""
    n = flat.shape[0]
    side = math.isqrt(n - 1) + 1 if n > 0 else 0  # ceil(sqrt(n)) in exact integer arithmetic
    if rank >= side:
        # No singular value is discarded: the filter is the identity (exactly, no SVD).
        return flat
    work_dtype = jnp.promote_types(flat.dtype, jnp.float32)
    matrix = jnp.pad(flat.astype(work_dtype), (0, side * side - n)).reshape(side, side)
    # LAPACK's SVD (gesdd) can loop forever on a matrix holding an infinity: it never
    # sees one (a non-finite G is passed through below whatever the SVD returns).
    safe, finite = finite_or_zero(matrix)
    u, s, vh = svd_fn(safe)
    approx = jnp.matmul(
        u[:, :rank] * s[:rank].astype(work_dtype),
        vh[:rank, :],
        precision=jax.lax.Precision.HIGHEST,
    )
    # The reference falls back to the raw gradient when the SVD raises. jnp's SVD
    # returns NaNs instead of raising, so fall back whenever G_k is not finite
    # (this also passes a non-finite G through unchanged).
    ok = jnp.all(jnp.isfinite(approx)) & finite
    filtered = jnp.where(ok, approx, matrix)
    return filtered.reshape(-1)[:n].astype(flat.dtype)


def _make_lrg(
    rank: int, flatten_fn: FlattenFn | None, svd_fn: SvdFn
) -> base.GradientTransformation:
    rank = validation.check_int("rank", rank, minimum=1)
    if flatten_fn is not None and not callable(flatten_fn):
        raise ValueError(f"`flatten_fn` must be None or a callable, got {flatten_fn!r}.")

    def init_fn(params: base.Params) -> base.EmptyState:
        # Only plain empty containers are rejected here: optax.tree_map_params calls
        # init on an opaque placeholder object that has no leaves either.
        if params is None or isinstance(params, (dict, list, tuple)):
            _check_nonempty(params)
        return base.EmptyState()

    def update_fn(
        updates: base.Updates, state: base.EmptyState, params: base.Params | None = None
    ) -> tuple[base.Updates, base.EmptyState]:
        del params
        _check_nonempty(updates)
        replicated = jax.tree.map(_replicate, updates)
        if flatten_fn is None:
            flat, unflatten = ravel_pytree(replicated)
        else:
            flat, unflatten = flatten_fn(replicated)
            flat = jnp.asarray(flat)
            if flat.ndim != 1:
                raise ValueError(
                    f"lrg: `flatten_fn` must return a 1-D vector, got shape {flat.shape}."
                )
        out = unflatten(_low_rank_filter(flat, rank, svd_fn))
        if flatten_fn is not None:
            in_struct = jax.tree.structure(updates)
            out_struct = jax.tree.structure(out)
            in_shapes = [jnp.shape(x) for x in jax.tree.leaves(updates)]
            out_shapes = [jnp.shape(x) for x in jax.tree.leaves(out)]
            if in_struct != out_struct or in_shapes != out_shapes:
                raise ValueError(
                    "lrg: the `unflatten` returned by `flatten_fn` must restore the structure "
                    f"and leaf shapes of the input; got {out_struct} with shapes {out_shapes}, "
                    f"expected {in_struct} with shapes {in_shapes}."
                )

        def restore(o: jax.Array, g: jax.Array) -> jax.Array:
            o = jnp.asarray(o).astype(jnp.asarray(g).dtype)
            spec = _explicit_spec(g)
            return o if spec is None else jax.sharding.reshard(o, spec)

        return jax.tree.map(restore, out, updates), state

    return base.GradientTransformation(init_fn, update_fn)


def lrg(rank: int, *, flatten_fn: FlattenFn | None = None) -> base.GradientTransformation:
    r"""Global low-rank gradient filter (the gradient rewrite of LRG-Adam).

    All gradient leaves are concatenated into one vector :math:`g \in \mathbb{R}^N`
    (``jax.flatten_util.ravel_pytree`` order: tree-leaf order, row-major inside a
    leaf, unless ``flatten_fn`` supplies another order). With
    :math:`s = \lceil \sqrt{N} \rceil`, the vector is zero-padded to :math:`s^2`
    entries and reshaped row-major into :math:`G \in \mathbb{R}^{s \times s}`.
    :math:`G` is replaced by its best rank-:math:`k` approximation :math:`G_k`
    (truncated SVD, :math:`k` = ``rank``), whose first :math:`N` entries are cut
    back into the original leaf shapes and dtypes:

    .. math::

      \begin{align*}
        G &= \operatorname{reshape}_{s \times s}\big([g; 0_{s^2 - N}]\big),
          \qquad G = U \Sigma V^\top, \\
        G_k &= U_{:, :k}\, \Sigma_{:k, :k}\, V_{:, :k}^\top, \\
        g' &= \operatorname{vec}(G_k)_{1:N}
          \quad (\text{or } \operatorname{vec}(G)_{1:N}
          \text{ if } G_k \text{ is not finite}).
      \end{align*}

    The transformation is stateless (``EmptyState``): a full SVD of the
    :math:`s \times s` matrix every step, :math:`O(N^{1.5})` time and one dense
    :math:`s \times s` temporary. It emits a full-shape gradient, so whatever is
    chained after it keeps full-size state: ``optax.chain(lrg(k), optax.adam(lr))``
    is a gradient *denoiser* and saves no optimizer memory.

    Behaviour on degenerate inputs:

    * :math:`k \ge s`: nothing is truncated and the gradient is returned exactly
      (no SVD is computed). In particular :math:`N = 1` is the identity.
    * :math:`N` a perfect square: no padding.
    * zero gradient: zero output.
    * SVD failure: if :math:`G` is finite but :math:`G_k` is not, the raw
      gradient is emitted (a ``jnp.where`` on a finiteness test, no Python
      branch); a non-finite gradient passes through unchanged, so
      :func:`optax.apply_if_finite` still sees it.
    * dtypes: mixed leaves are raveled to their promoted dtype, the SVD runs in at
      least float32 (bf16/f16 are upcast, float64 stays float64) and every leaf is
      cast back to its own dtype.
    * an empty tree (no leaves) raises :class:`ValueError` at ``update`` (and at
      ``init`` for ``None`` or an empty dict, list or tuple).
    * sharding: the global flatten needs the whole gradient on every device.
      In meshes with Explicit axes each leaf is resharded to replicated before the
      flatten and returned with its own sharding afterwards; this all-gather is a
      scaling limit of the method.

    The filter is **not** invariant to leaf order or layout: the :math:`s \times s`
    reshape mixes neighbouring leaves. Flax orders dict keys alphabetically
    (``bias`` before ``kernel``) and stores kernels as ``(in, out)``, whereas the
    PyTorch reference concatenates parameters in module registration order with
    ``(out, in)`` weights. Pass a ``flatten_fn`` reproducing the torch order to
    match the reference exactly.

    Args:
      rank: number :math:`k \ge 1` of singular values kept (static).
      flatten_fn: optional ``updates -> (vector, unflatten)`` defining the order
        and layout of the global vector; ``unflatten(vector)`` must return a tree
        with the structure and leaf shapes of ``updates`` (checked at trace time,
        :class:`ValueError` otherwise). Defaults to
        ``jax.flatten_util.ravel_pytree``. Static under
        :func:`optax.inject_hyperparams` (list it in ``static_args``).

    Returns:
      The corresponding :class:`optax.GradientTransformation` (state:
      :class:`optax.EmptyState`).

    Raises:
      ValueError: if ``rank`` is not an integer :math:`\ge 1`, or ``flatten_fn`` is
        neither None nor callable.

    Examples:
      >>> import optax
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import lowrank_optax as lowrank
      >>> def f(x):
      ...   return jnp.sum(x["w"] ** 2) + jnp.sum(x["b"] ** 2)
      >>> solver = optax.chain(lowrank.lrg(rank=1), optax.adam(learning_rate=0.1))
      >>> params = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "b": jnp.array([1.0, -1.0])}
      >>> print("Objective function: {:.2E}".format(f(params)))
      Objective function: 3.20E+01
      >>> opt_state = solver.init(params)
      >>> for _ in range(5):
      ...   grad = jax.grad(f)(params)
      ...   updates, opt_state = solver.update(grad, opt_state, params)
      ...   params = optax.apply_updates(params, updates)
      ...   print("Objective function: {:.2E}".format(f(params)))
      Objective function: 3.01E+01
      Objective function: 2.82E+01
      Objective function: 2.66E+01
      Objective function: 2.50E+01
      Objective function: 2.35E+01

    References:
      "Low-Rank Gradient Adam (LRG-Adam) Optimizer Experiment", public PyTorch
      experiment (README and ``optimizer.py`` defining ``LRGAdam``).

    .. warning::
      Deviations from the PyTorch reference ``LRGAdam``:

      * The reference catches ``torch.linalg.LinAlgError`` and then uses
        :math:`G`; ``jnp.linalg.svd`` returns NaNs instead of raising, so this
        filter falls back to :math:`G` whenever :math:`G_k` is not finite.
      * The reference allocates its padding buffer in torch's *default* dtype
        (float32 unless changed), so float64 gradients are filtered in float32
        there; here the SVD runs in the promoted dtype of the gradient (at least
        float32).
      * For :math:`k \ge s` the reference still reconstructs
        :math:`U \Sigma V^\top` (equal to :math:`G` up to roundoff); this filter
        returns :math:`G` exactly.
      * The reference silently does nothing when no parameter has a gradient;
        this filter raises :class:`ValueError` for an empty tree.
    """
    return _make_lrg(rank, flatten_fn, _default_svd)


class ScaleByTorchAmsgradState(NamedTuple):
    """State of :func:`scale_by_torch_amsgrad`."""

    count: jax.Array  # int32 scalar
    mu: base.Updates
    nu: base.Updates
    nu_max: base.Updates


def scale_by_torch_amsgrad(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    mu_dtype: Any | None = None,
) -> base.GradientTransformation:
    r"""Rescale updates with AMSGrad as :class:`torch.optim.Adam` (``amsgrad=True``) does.

    With gradient :math:`g_t`, decay rates :math:`\beta_1, \beta_2`, step
    :math:`t \ge 1` and bias corrections :math:`c_i = 1 - \beta_i^t`, the running
    maximum :math:`\bar v_t` is taken over the *raw* second moment and only then
    divided by :math:`c_2`:

    .. math::

      \begin{align*}
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \\
        \bar v_t &= \max(\bar v_{t-1}, v_t), \\
        u_t &= \frac{m_t / c_1}{\sqrt{\bar v_t} / \sqrt{c_2} + \epsilon}.
      \end{align*}

    Args:
      b1: decay rate of the first moment.
      b2: decay rate of the second moment.
      eps: term added to the denominator outside the square root.
      mu_dtype: optional dtype of the first moment; ``None`` keeps the dtype of
        the parameters.

    Returns:
      The corresponding :class:`optax.GradientTransformation`.

    Examples:
      >>> import optax
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import lowrank_optax as lowrank
      >>> def f(x):
      ...   return jnp.sum(x**2)
      >>> solver = optax.chain(lowrank.scale_by_torch_amsgrad(), optax.scale(-0.1))
      >>> params = jnp.array([1.0, 2.0, 3.0])
      >>> print("Objective function: {:.2E}".format(f(params)))
      Objective function: 1.40E+01
      >>> opt_state = solver.init(params)
      >>> for _ in range(5):
      ...   grad = jax.grad(f)(params)
      ...   updates, opt_state = solver.update(grad, opt_state, params)
      ...   params = optax.apply_updates(params, updates)
      ...   print("Objective function: {:.2E}".format(f(params)))
      Objective function: 1.28E+01
      Objective function: 1.17E+01
      Objective function: 1.07E+01
      Objective function: 9.69E+00
      Objective function: 8.78E+00

    References:
      Reddi et al, `On the Convergence of Adam and Beyond
      <https://openreview.net/forum?id=ryQu7f-RZ>`_, 2018

    .. warning::
      :func:`optax.scale_by_amsgrad` takes the maximum of the *bias-corrected*
      second moment :math:`v_t / c_2`; this primitive follows
      :class:`torch.optim.Adam` instead, so the two differ whenever the running
      maximum is attained at an earlier step.
    """
    validation.check_beta("b1", b1)
    validation.check_beta("b2", b2)
    validation.check_nonnegative("eps", eps)
    mu_dtype = utils.canonicalize_dtype(mu_dtype)

    def init_fn(params: base.Params) -> ScaleByTorchAmsgradState:
        return ScaleByTorchAmsgradState(
            count=jnp.zeros([], jnp.int32),
            mu=optax.tree.zeros_like(params, dtype=mu_dtype),
            nu=optax.tree.zeros_like(params),
            nu_max=optax.tree.zeros_like(params),
        )

    def update_fn(
        updates: base.Updates,
        state: ScaleByTorchAmsgradState,
        params: base.Params | None = None,
    ) -> tuple[base.Updates, ScaleByTorchAmsgradState]:
        del params
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu)
        count = numerics.safe_increment(state.count)
        mu_hat = optax.tree.bias_correction(mu, b1, count)
        # torch: sqrt(max(v)) / sqrt(1 - b2^t) + eps, i.e. the maximum of the raw moment.
        nu_max_hat = optax.tree.bias_correction(nu_max, b2, count)
        new_updates = jax.tree.map(
            lambda m, v: None if m is None else m / (jnp.sqrt(v) + eps),
            mu_hat,
            nu_max_hat,
            is_leaf=lambda x: x is None,
        )
        new_updates = optax.tree.cast_like(new_updates, updates)
        new_state = ScaleByTorchAmsgradState(
            count=count,
            mu=optax.tree.cast(mu, mu_dtype),
            nu=optax.tree.cast_like(nu, state.nu),
            nu_max=optax.tree.cast_like(nu_max, state.nu_max),
        )
        return new_updates, new_state

    return base.GradientTransformation(init_fn, update_fn)


def lrg_adam(
    learning_rate: base.ScalarOrSchedule,
    rank: int = 10,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: base.ScalarOrSchedule = 0.0,
    *,
    amsgrad: bool = False,
    flatten_fn: FlattenFn | None = None,
) -> base.GradientTransformationExtraArgs:
    r"""LRG-Adam: Adam (torch semantics) on a globally low-rank-filtered gradient.

    Every step the whole gradient is replaced by its low-rank filtered version
    :math:`\tilde g_t` (:func:`lrg`: global flatten, zero-pad to
    :math:`s \times s`, rank-:math:`k` truncated SVD, crop), the coupled L2 term
    :math:`\lambda \theta_{t-1}` is added (``torch.optim.Adam``'s
    ``weight_decay``, applied *after* the filter), and Adam with step size
    :math:`\eta_t` follows:

    .. math::

      \begin{align*}
        \tilde g_t &= \operatorname{lrg}_k(g_t) + \lambda \theta_{t-1}, \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) \tilde g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) \tilde g_t^2, \\
        \hat v_t &= \begin{cases} v_t & \text{(default)} \\
          \max(\hat v_{t-1}, v_t) & \text{(amsgrad)} \end{cases}, \\
        \theta_t &= \theta_{t-1} - \eta_t \,
          \frac{m_t / (1 - \beta_1^t)}{\sqrt{\hat v_t / (1 - \beta_2^t)} + \epsilon}.
      \end{align*}

    Adam's state after the filter is **full size**: LRG-Adam saves no optimizer
    memory compared with Adam; the filter is a gradient denoiser. Like the filter,
    the optimizer is not invariant to leaf order (see :func:`lrg`).

    Static arguments under :func:`optax.inject_hyperparams`: ``rank``,
    ``amsgrad``, ``flatten_fn``. ``learning_rate``, ``b1``, ``b2``, ``eps`` and
    ``weight_decay`` are injectable.

    Args:
      learning_rate: learning rate :math:`\eta` (scalar or schedule).
      rank: number :math:`k \ge 1` of singular values kept by the filter.
      b1: decay rate :math:`\beta_1` of the first moment, in :math:`[0, 1)`.
      b2: decay rate :math:`\beta_2` of the second moment, in :math:`[0, 1)`.
      eps: :math:`\epsilon \ge 0` added to the denominator.
      weight_decay: coupled L2 coefficient :math:`\lambda \ge 0` (scalar or
        schedule), as ``torch.optim.Adam(weight_decay=...)``. ``update`` needs
        ``params`` (as with :func:`optax.adamw`), whatever its value.
      amsgrad: use the torch AMSGrad variant (:func:`scale_by_torch_amsgrad`).
      flatten_fn: optional order/layout of the global vector (see :func:`lrg`).

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs`.

    Raises:
      ValueError: on ``rank`` not an integer :math:`\ge 1`, a negative
        ``learning_rate``, ``eps`` or ``weight_decay``, or ``b1``/``b2`` outside
        :math:`[0, 1)` (concrete scalars only; schedules and tracers are not
        checked).

    Examples:
      >>> import optax
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import lowrank_optax as lowrank
      >>> def f(x):
      ...   return jnp.sum(x["w"] ** 2) + jnp.sum(x["b"] ** 2)
      >>> solver = lowrank.lrg_adam(learning_rate=0.1, rank=1)
      >>> params = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "b": jnp.array([1.0, -1.0])}
      >>> print("Objective function: {:.2E}".format(f(params)))
      Objective function: 3.20E+01
      >>> opt_state = solver.init(params)
      >>> for _ in range(5):
      ...   grad = jax.grad(f)(params)
      ...   updates, opt_state = solver.update(grad, opt_state, params)
      ...   params = optax.apply_updates(params, updates)
      ...   print("Objective function: {:.2E}".format(f(params)))
      Objective function: 3.01E+01
      Objective function: 2.82E+01
      Objective function: 2.66E+01
      Objective function: 2.50E+01
      Objective function: 2.35E+01

    References:
      "Low-Rank Gradient Adam (LRG-Adam) Optimizer Experiment", public PyTorch
      experiment (``LRGAdam``, a wrapper around ``torch.optim.Adam``).

      Kingma et al, `Adam: A Method for Stochastic Optimization
      <https://arxiv.org/abs/1412.6980>`_, 2014

    .. warning::
      The deviations of :func:`lrg` from the reference filter apply (NaN-based
      fallback instead of catching ``LinAlgError``, SVD in the gradient's own
      precision instead of torch's default dtype, exact identity for
      :math:`k \ge s`, ``ValueError`` on an empty tree). With ``amsgrad=True`` the
      maximum is taken over the raw second moment, as in torch, not over the
      bias-corrected one as in :func:`optax.scale_by_amsgrad`.
    """
    validation.check_int("rank", rank, minimum=1)
    validation.check_nonnegative("learning_rate", learning_rate)
    validation.check_beta("b1", b1)
    validation.check_beta("b2", b2)
    validation.check_nonnegative("eps", eps)
    validation.check_nonnegative("weight_decay", weight_decay)
    if amsgrad:
        scaler = scale_by_torch_amsgrad(b1=b1, b2=b2, eps=eps)
    else:
        scaler = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
    return optax.chain(
        lrg(rank, flatten_fn=flatten_fn),
        optax.add_decayed_weights(weight_decay),
        scaler,
        optax.scale_by_learning_rate(learning_rate),
    )
