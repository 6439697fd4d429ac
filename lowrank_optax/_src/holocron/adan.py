"""Adan (Xie et al., 2022) as in the authors' reference code, with holocron's API."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lowrank_optax._src.adam_in_basis import amsgrad_max
from lowrank_optax._src.holocron import checks, common
from lowrank_optax._src.holocron.proximal import proximal_decay


class ScaleByAdanState(NamedTuple):
    """State of :func:`scale_by_adan` (``nu_max`` is ``None`` without AMSGrad)."""

    count: jax.Array  # int32 scalar
    mu: optax.Updates  # m: EMA of gradients
    delta: optax.Updates  # v: EMA of gradient differences
    nu: optax.Updates  # n: EMA of squared Nesterov-corrected gradients
    nu_max: optax.Updates | None
    prev_grad: optax.Updates  # g_{t-1}


def scale_by_adan(
    b1: jax.typing.ArrayLike = 0.98,
    b2: jax.typing.ArrayLike = 0.92,
    b3: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    amsgrad: bool = False,
) -> optax.GradientTransformation:
    r"""Adan direction (see :func:`adan` for the formulas).

    Static args for :func:`optax.inject_hyperparams`: ``amsgrad`` (a boolean, static
    anyway); the rest is injectable.

    Args:
      b1: :math:`\beta_1 \in [0, 1)` (gradient EMA).
      b2: :math:`\beta_2 \in [0, 1)` (gradient-difference EMA and Nesterov factor).
      b3: :math:`\beta_3 \in [0, 1)` (second-moment EMA).
      eps: :math:`\epsilon \ge 0`.
      amsgrad: Use the running maximum of :math:`n` in the denominator.

    Returns:
      The corresponding :class:`optax.GradientTransformation`.
    """
    for name, value in (("b1", b1), ("b2", b2), ("b3", b3)):
        checks.beta(name, value)
    checks.eps(eps)

    def init_fn(params: Any) -> ScaleByAdanState:
        return ScaleByAdanState(
            count=jnp.zeros([], jnp.int32),
            mu=optax.tree.zeros_like(params),
            delta=optax.tree.zeros_like(params),
            nu=optax.tree.zeros_like(params),
            nu_max=common.zeros_or_none(params, amsgrad),
            prev_grad=optax.tree.zeros_like(params),
        )

    def update_fn(
        updates: Any, state: ScaleByAdanState, params: Any = None
    ) -> tuple[Any, ScaleByAdanState]:
        del params
        first = state.count == 0
        diff = jax.tree.map(
            lambda g, p: jnp.where(first, jnp.zeros_like(g), g - p), updates, state.prev_grad
        )
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        delta = optax.tree.update_moment(diff, state.delta, b2, 1)
        nesterov = jax.tree.map(lambda g, d: g + b2 * d, updates, diff)
        nu = optax.tree.update_moment_per_elem_norm(nesterov, state.nu, b3, 2)
        mu, delta, nu = (
            optax.tree.cast_like(mu, state.mu),
            optax.tree.cast_like(delta, state.delta),
            optax.tree.cast_like(nu, state.nu),
        )
        nu_max = amsgrad_max(state.nu_max, nu)
        count = optax.safe_int32_increment(state.count)
        mu_hat = optax.tree.bias_correction(mu, b1, count)
        delta_hat = optax.tree.bias_correction(delta, b2, count)
        numerator = jax.tree.map(lambda m, d: m + b2 * d, mu_hat, delta_hat)
        # adaptive_direction with b1 = 0 leaves the numerator uncorrected.
        nu_den = nu if nu_max is None else nu_max
        direction = common.adaptive_direction(numerator, nu_den, 0.0, b3, count, eps)
        new_state = ScaleByAdanState(
            count, mu, delta, nu, nu_max, optax.tree.cast_like(updates, state.prev_grad)
        )
        return optax.tree.cast_like(direction, updates), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def adan(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.98,
    b2: jax.typing.ArrayLike = 0.92,
    b3: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0.0,
    *,
    amsgrad: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Adan: adaptive Nesterov momentum with proximal weight decay.

    With gradient :math:`g_t`, :math:`\Delta_t = g_t - g_{t-1}`
    (:math:`\Delta_1 = 0`, the previous gradient is kept in the state), zero
    initial moments and :math:`bc_i = 1 - \beta_i^t`:

    .. math::
      \begin{align*}
        m_t &\leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        v_t &\leftarrow \beta_2 v_{t-1} + (1 - \beta_2) \Delta_t \\
        n_t &\leftarrow \beta_3 n_{t-1} + (1 - \beta_3) (g_t + \beta_2 \Delta_t)^2 \\
        u_t &\leftarrow \frac{m_t / bc_1 + \beta_2\, v_t / bc_2}
          {\sqrt{\bar n_t / bc_3} + \epsilon} \\
        \theta_{t+1} &\leftarrow \frac{\theta_t - \alpha_t u_t}{1 + \lambda\alpha_t}
      \end{align*}

    with :math:`\bar n_t` the running maximum of :math:`n_t` under ``amsgrad``.
    The decay is proximal only (:func:`proximal_decay`), no coupled L2. In this
    EMA convention the paper's :math:`(1-\beta_2)` coefficient of :math:`v` is
    :math:`\beta_2` (as in the authors' code).

    Static args for :func:`optax.inject_hyperparams`: ``amsgrad``.

    .. warning::
      holocron 0.3.0's code never updates its previous gradient, so its
      :math:`\Delta_t` is always :math:`g_t`, and it applies weight decay twice
      (L2 added to the gradient *and* the proximal division). This function
      follows the paper and the authors' code: :math:`\Delta_t` is tracked
      (:math:`\Delta_1 = 0`) and the decay is proximal only. holocron's docstring
      also differs (:math:`m_0 = g_0`, :math:`n_0 = g_0^2`, :math:`(1-\beta_2)\hat
      v_t`, :math:`\epsilon` inside the root); the authors' code is followed.

    .. seealso:: :func:`optax.adan` scales the gradient difference by
      :math:`(1-\beta_2)` and uses decoupled (AdamW) decay; the two coincide
      only for :math:`\beta_2 = 0.5`, ``eps_root = 0`` and no weight decay. This
      function is *not* ``optax.adan``.

    Args:
      learning_rate: Learning rate or schedule :math:`\alpha_t \ge 0`.
      b1: :math:`\beta_1 \in [0, 1)`.
      b2: :math:`\beta_2 \in [0, 1)`.
      b3: :math:`\beta_3 \in [0, 1)`.
      eps: :math:`\epsilon \ge 0`.
      weight_decay: Proximal decay :math:`\lambda \ge 0`.
      amsgrad: AMSGrad variant.

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs`.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import lowrank_optax as lowrank
      >>> def f(x): return jnp.sum(x ** 2)  # simple quadratic function
      >>> solver = lowrank.adan(learning_rate=0.1)
      >>> params = jnp.array([1., 2., 3.])
      >>> print('Objective function: ', f(params))
      Objective function:  14.0
      >>> opt_state = solver.init(params)
      >>> for _ in range(5):
      ...  grad = jax.grad(f)(params)
      ...  updates, opt_state = solver.update(grad, opt_state, params)
      ...  params = optax.apply_updates(params, updates)
      ...  print('Objective function: {:.2E}'.format(f(params)))
      Objective function: 1.28E+01
      Objective function: 1.17E+01
      Objective function: 1.07E+01
      Objective function: 9.69E+00
      Objective function: 8.77E+00

    References:
      Xie et al, `Adan: Adaptive Nesterov Momentum Algorithm for Faster
      Optimizing Deep Models <https://arxiv.org/abs/2208.06677>`_, 2022

      Fernandez, `Holocron <https://github.com/frgfm/Holocron>`_ (``holocron.optim.Adan``)
    """
    checks.learning_rate(learning_rate)
    checks.weight_decay(weight_decay)
    return common.alias(
        "adan",
        scale_by_adan(b1, b2, b3, eps, amsgrad=amsgrad),
        proximal_decay(weight_decay, learning_rate),
        optax.scale_by_learning_rate(learning_rate),
    )
