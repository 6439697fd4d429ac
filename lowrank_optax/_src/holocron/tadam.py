"""TAdam (Ilboudo et al., 2020): Adam with a Student-t robust first moment."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lowrank_optax._src.adam_in_basis import amsgrad_max
from lowrank_optax._src.holocron import checks, common
from lowrank_optax._src.numerics import working_dtype


class ScaleByTadamState(NamedTuple):
    """State of :func:`scale_by_tadam`.

    ``mu``, ``nu`` and ``nu_max`` (``None`` without AMSGrad) are param-shaped;
    ``weight_sum`` holds the per-leaf scalars :math:`W` as one vector (one entry
    per leaf, in ``jax.tree.leaves`` order) so that it is not mistaken for a
    parameter tree by :func:`optax.tree_map_params` (it stays replicated).
    """

    count: jax.Array  # int32 scalar
    mu: optax.Updates
    nu: optax.Updates
    nu_max: optax.Updates | None
    weight_sum: jax.Array  # (num_leaves,)


def _residual_sum(g: jax.Array, m: jax.Array, v: jax.Array, eps: Any) -> jax.Array:
    r""":math:`\sum_j (g_j - m_j)^2 / (v_j + \epsilon)` with ``0/0 = 0`` and ``x/0 = inf``."""
    dtype = working_dtype(g.dtype)
    sq = jnp.square(g.astype(dtype) - m.astype(dtype))
    den = v.astype(dtype) + eps
    if common.is_positive_constant(eps):
        return jnp.sum(sq / den)
    ok = den != 0
    terms = jnp.where(ok, sq / jnp.where(ok, den, 1), jnp.where(sq == 0, 0, jnp.inf))
    return jnp.sum(terms)


def scale_by_tadam(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    dof: jax.typing.ArrayLike | None = None,
    *,
    amsgrad: bool = False,
) -> optax.GradientTransformation:
    r"""TAdam direction (see :func:`tadam` for the formulas).

    Static args for :func:`optax.inject_hyperparams`: ``dof`` when passed (it
    changes the state's structure); the boolean ``amsgrad`` is static anyway.

    Args:
      b1: :math:`\beta_1 \in (0, 1)`; sets :math:`W_0 = \beta_1/(1-\beta_1)`.
      b2: :math:`\beta_2 \in [0, 1)`.
      eps: :math:`\epsilon \ge 0`.
      dof: Degrees of freedom :math:`\nu > 0`; ``None`` uses each leaf's size.
      amsgrad: Use the running maximum of :math:`v` in the denominator.

    Returns:
      The corresponding :class:`optax.GradientTransformation`.
    """
    checks.beta("b1", b1)
    if common.is_zero_constant(b1):
        raise ValueError("Invalid b1 value: 0. TAdam divides by `b1`; it must be in (0, 1).")
    checks.beta("b2", b2)
    checks.eps(eps)
    if dof is not None:
        checks.positive("dof", dof)

    def init_fn(params: Any) -> ScaleByTadamState:
        n_leaves = len(jax.tree.leaves(params))
        w0 = jnp.asarray(b1, common.tree_scalar_dtype(params)) / (1 - b1)
        return ScaleByTadamState(
            count=jnp.zeros([], jnp.int32),
            mu=optax.tree.zeros_like(params),
            nu=optax.tree.zeros_like(params),
            nu_max=common.zeros_or_none(params, amsgrad),
            weight_sum=jnp.full((n_leaves,), w0, w0.dtype),
        )

    def update_fn(
        updates: Any, state: ScaleByTadamState, params: Any = None
    ) -> tuple[Any, ScaleByTadamState]:
        del params
        grads, treedef = jax.tree.flatten(updates)
        moms = treedef.flatten_up_to(state.mu)
        vs = treedef.flatten_up_to(state.nu)
        big_w = state.weight_sum
        decay_w = (2 * b1 - 1) / b1
        new_moms, new_nus, new_w = [], [], []
        for i, (g, m, v) in enumerate(zip(grads, moms, vs, strict=True)):
            size = g.size
            nu_ = size if dof is None else dof
            residual = _residual_sum(g, m, v, eps)
            w = ((nu_ + size) / (nu_ + residual)).astype(big_w.dtype)
            new_v = optax.tree.update_moment_per_elem_norm(g, v, b2, 2)
            # Identical values (the sum is >= 0 or NaN), but the new v now depends on
            # the sum that reads the old v: XLA then updates the donated buffer in
            # place instead of copying the old v every step.
            new_nus.append(jnp.where(residual >= 0, new_v, new_v + residual).astype(v.dtype))
            total = big_w[i] + w
            keep, take = big_w[i] / total, w / total
            new_moms.append((keep.astype(m.dtype) * m + take.astype(g.dtype) * g).astype(m.dtype))
            new_w.append(big_w[i] * decay_w + w)
        mu, nu = treedef.unflatten(new_moms), treedef.unflatten(new_nus)
        nu_max = amsgrad_max(state.nu_max, nu)
        count = optax.safe_int32_increment(state.count)
        direction = common.adaptive_direction(
            mu, nu if nu_max is None else nu_max, b1, b2, count, eps
        )
        weight_sum = jnp.stack(new_w) if new_w else big_w
        new_state = ScaleByTadamState(count, mu, nu, nu_max, weight_sum.astype(big_w.dtype))
        return optax.tree.cast_like(direction, updates), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def tadam(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0.0,
    dof: jax.typing.ArrayLike | None = None,
    *,
    amsgrad: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""TAdam: Adam whose first moment is a Student-t weighted (robust) average.

    For each leaf of size :math:`d` with gradient :math:`g_t` (coupled weight
    decay :math:`g_t \leftarrow g_t + \lambda\theta_t` first), degrees of freedom
    :math:`\nu` (``dof``, default :math:`d`), :math:`m_0 = v_0 = 0` and
    :math:`W_0 = \beta_1/(1-\beta_1)`:

    .. math::
      \begin{align*}
        w_t &\leftarrow \frac{\nu + d}{\nu + \sum_j (g_{t,j} - m_{t-1,j})^2
          / (v_{t-1,j} + \epsilon)} \\
        m_t &\leftarrow \frac{W_{t-1}}{W_{t-1} + w_t} m_{t-1}
          + \frac{w_t}{W_{t-1} + w_t} g_t \\
        W_t &\leftarrow \frac{2\beta_1 - 1}{\beta_1} W_{t-1} + w_t \\
        v_t &\leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        \theta_{t+1} &\leftarrow \theta_t - \frac{\alpha_t}{1 - \beta_1^t}\,
          \frac{m_t}{\sqrt{\bar v_t}/\sqrt{1 - \beta_2^t} + \epsilon}
      \end{align*}

    where :math:`\bar v_t = \max(\bar v_{t-1}, v_t)` with ``amsgrad`` (raw
    moments, maximum used in the denominator only) and :math:`v_t` otherwise.
    Because :math:`v_0 = 0`, :math:`w_1 \approx 0` and the first step is
    :math:`\approx 0` by construction. With :math:`\epsilon = 0`, elements with
    :math:`v_{t-1} = 0` contribute :math:`+\infty` to the sum (``0`` if their
    residual is 0 too) and zero-gradient elements get a zero direction.

    Static args for :func:`optax.inject_hyperparams`: ``dof`` (it changes
    nothing structural but is read per leaf), ``amsgrad``.

    .. warning::
      holocron's docstring writes the second moment with
      :math:`(g_t - g_{t-1})`; that is a typo: the paper and holocron's code use
      :math:`g_t^2`, as here. The :math:`W_t` recursion and AMSGrad are
      undocumented in holocron; they follow its code, which is the parity
      reference. :math:`\beta_1 < 1/2` makes :math:`W_t` decrease and can make
      it negative (accepted, as in holocron); :math:`\beta_1 = 0` is rejected
      (holocron divides by it).

    Args:
      learning_rate: Learning rate or schedule :math:`\alpha_t \ge 0`.
      b1: :math:`\beta_1 \in (0, 1)`.
      b2: :math:`\beta_2 \in [0, 1)`.
      eps: :math:`\epsilon \ge 0`.
      weight_decay: Coupled L2 penalty :math:`\lambda \ge 0` (enters :math:`w_t`).
      dof: Degrees of freedom :math:`\nu > 0`; ``None`` = number of elements.
      amsgrad: AMSGrad variant.

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs`.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import lowrank_optax as lowrank
      >>> def f(x): return jnp.sum(x ** 2)  # simple quadratic function
      >>> # v starts at 0, so TAdam's first steps are strongly damped (w_1 ~ 0).
      >>> solver = lowrank.tadam(learning_rate=0.3, b2=0.9)
      >>> params = jnp.array([1., 2., 3.])
      >>> print('Objective function: ', f(params))
      Objective function:  14.0
      >>> opt_state = solver.init(params)
      >>> for _ in range(5):
      ...  grad = jax.grad(f)(params)
      ...  updates, opt_state = solver.update(grad, opt_state, params)
      ...  params = optax.apply_updates(params, updates)
      ...  print('Objective function: {:.2E}'.format(f(params)))
      Objective function: 1.40E+01
      Objective function: 1.36E+01
      Objective function: 1.27E+01
      Objective function: 1.15E+01
      Objective function: 9.88E+00

    References:
      Ilboudo et al, `TAdam: A Robust Stochastic Gradient Optimizer
      <https://arxiv.org/abs/2003.00179>`_, 2020

      Fernandez, `Holocron <https://github.com/frgfm/Holocron>`_ (``holocron.optim.TAdam``)
    """
    checks.learning_rate(learning_rate)
    checks.weight_decay(weight_decay)
    return common.alias(
        "tadam",
        common.coupled_weight_decay(weight_decay),
        scale_by_tadam(b1, b2, eps, dof, amsgrad=amsgrad),
        optax.scale_by_learning_rate(learning_rate),
    )
