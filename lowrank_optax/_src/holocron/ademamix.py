"""AdEMAMix (Pagliardini et al., 2024) with holocron's coupled weight decay."""

import jax
import optax
from optax import contrib

from lowrank_optax._src.holocron import checks, common

ScaleByAdemamixState = contrib.ScaleByAdemamixState


def scale_by_ademamix(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    b3: optax.ScalarOrSchedule = 0.9999,
    alpha: optax.ScalarOrSchedule = 5.0,
    eps: jax.typing.ArrayLike = 1e-8,
) -> optax.GradientTransformation:
    r"""AdEMAMix direction: :func:`optax.contrib.scale_by_ademamix` with ``eps_root = 0``.

    optax's primitive is exactly the documented formula (see :func:`ademamix`),
    so it is reused as is; this function adds holocron's defaults
    (``alpha = 5``) and validation. The state is
    :class:`optax.contrib.ScaleByAdemamixState`.

    Static args for :func:`optax.inject_hyperparams`: none (every argument is
    injectable; ``b3`` and ``alpha`` also accept schedules).

    Args:
      b1: :math:`\beta_1 \in [0, 1)` (fast EMA, bias-corrected).
      b2: :math:`\beta_2 \in [0, 1)` (second moment, bias-corrected).
      b3: :math:`\beta_3 \in [0, 1)` (slow EMA, not bias-corrected) or a schedule.
      alpha: Mixing weight :math:`\alpha \ge 0` of the slow EMA (NaN rejected), or
        a schedule.
      eps: :math:`\epsilon \ge 0`.

    Returns:
      The corresponding :class:`optax.GradientTransformation`.
    """
    for name, value in (("b1", b1), ("b2", b2), ("b3", b3)):
        checks.beta(name, value)
    checks.eps(eps)
    checks.nonnegative("alpha", alpha)
    return contrib.scale_by_ademamix(b1=b1, b2=b2, b3=b3, alpha=alpha, eps=eps, eps_root=0.0)


def ademamix(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    b3: optax.ScalarOrSchedule = 0.9999,
    alpha: optax.ScalarOrSchedule = 5.0,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0.0,
    *,
    decoupled_weight_decay: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""AdEMAMix: Adam with a mixture of a fast and a slow gradient EMA.

    With gradient :math:`g_t` (coupled L2 :math:`g_t \leftarrow g_t +
    \lambda\theta_t` first, unless ``decoupled_weight_decay``), zero initial
    moments and :math:`bc_i = 1 - \beta_i^t`:

    .. math::
      \begin{align*}
        m_{1,t} &\leftarrow \beta_1 m_{1,t-1} + (1 - \beta_1) g_t \\
        \nu_t &\leftarrow \beta_2 \nu_{t-1} + (1 - \beta_2) g_t^2 \\
        m_{2,t} &\leftarrow \beta_3 m_{2,t-1} + (1 - \beta_3) g_t \\
        \theta_{t+1} &\leftarrow \theta_t - \eta_t\,
          \frac{m_{1,t}/bc_1 + \alpha\, m_{2,t}}{\sqrt{\nu_t / bc_2} + \epsilon}
          \;[-\ \eta_t \lambda \theta_t \text{ if decoupled}]
      \end{align*}

    :math:`m_2` is not bias-corrected. ``alpha`` and ``b3`` accept schedules
    (evaluated at the 0-based step count) for the paper's warm-ups
    :math:`\alpha_t = \min(t\alpha/T_\alpha, \alpha)` and
    :math:`\beta_3(t) = \min\big(\exp\big(\frac{\ln\beta_1 \ln\beta_3}
    {(1 - t/T)\ln\beta_3 + (t/T)\ln\beta_1}\big), \beta_3\big)`; constants by
    default (holocron has no warm-up).

    Static args for :func:`optax.inject_hyperparams`: ``decoupled_weight_decay``.

    .. warning::
      holocron's docstring copies AdaBelief's :math:`s_t` (with
      :math:`(g_t - m_t)^2 + \epsilon`), calls :math:`\alpha` a decay rate and
      its functional docstring says "AdaBelief". Its code (the reference here)
      and the paper use :math:`g_t^2`, and :math:`\alpha` is the mixing weight.
      The default, holocron's, is the coupled "L2 penalty"; set
      ``decoupled_weight_decay=True`` for the paper's AdamW-style decay.

    .. seealso:: :func:`optax.contrib.ademamix` (decoupled decay, ``alpha=6``)
      equals ``ademamix(..., decoupled_weight_decay=True)`` with the same
      hyperparameters.

    Args:
      learning_rate: Learning rate or schedule :math:`\eta_t \ge 0`.
      b1: :math:`\beta_1 \in [0, 1)`.
      b2: :math:`\beta_2 \in [0, 1)`.
      b3: :math:`\beta_3 \in [0, 1)` or a schedule.
      alpha: Mixing weight :math:`\alpha \ge 0` (NaN rejected) or a schedule.
      eps: :math:`\epsilon \ge 0`.
      weight_decay: :math:`\lambda \ge 0`.
      decoupled_weight_decay: Decoupled (AdamW) instead of coupled (L2) decay.

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs`.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import lowrank_optax as lowrank
      >>> def f(x): return jnp.sum(x ** 2)  # simple quadratic function
      >>> solver = lowrank.ademamix(learning_rate=0.1)
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
      Pagliardini et al, `The AdEMAMix Optimizer: Better, Faster, Older
      <https://arxiv.org/abs/2409.03137>`_, 2024

      Fernandez, `Holocron <https://github.com/frgfm/Holocron>`_ (``holocron.optim.AdEMAMix``)
    """
    checks.learning_rate(learning_rate)
    checks.weight_decay(weight_decay)
    direction = scale_by_ademamix(b1, b2, b3, alpha, eps)
    decay = common.coupled_weight_decay(weight_decay)
    steps = (direction, decay) if decoupled_weight_decay else (decay, direction)
    return common.alias("ademamix", *steps, optax.scale_by_learning_rate(learning_rate))
