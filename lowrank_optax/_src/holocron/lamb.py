"""LAMB (You et al., 2019) with holocron's weight-norm clip."""

from typing import Any

import jax
import optax

from lowrank_optax._src import validation
from lowrank_optax._src.holocron import checks, common, trust_ratio


def scale_by_lamb(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0.0,
    scale_clip: tuple[jax.typing.ArrayLike, jax.typing.ArrayLike] | None = None,
) -> optax.GradientTransformation:
    r"""LAMB direction: Adam quotient plus weight decay, scaled by the clipped trust ratio.

    The moments are those of :func:`optax.scale_by_adam`, which this transform
    runs (its :class:`optax.ScaleByAdamState` is the state); the quotient is
    taken with a zero-safe division (with :math:`\epsilon = 0`, elements whose
    gradients were always zero get 0 instead of NaN). Then, per leaf,

    .. math::
      \begin{align*}
        u &\leftarrow \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon} + \lambda\theta \\
        \text{out} &\leftarrow \frac{\phi(\lVert\theta\rVert)}{\lVert u\rVert}\, u
          \quad(\text{ratio } 1 \text{ if } \phi(\lVert\theta\rVert) = 0
          \text{ or } \lVert u\rVert = 0)
      \end{align*}

    Static args for :func:`optax.inject_hyperparams`: none (``scale_clip``, a pair,
    passes through as a static value; the rest is injectable).

    Args:
      b1: Decay of the first moment, in :math:`[0, 1)`.
      b2: Decay of the second moment, in :math:`[0, 1)`.
      eps: :math:`\epsilon \ge 0` added to the denominator.
      weight_decay: :math:`\lambda \ge 0`, added to the Adam quotient.
      scale_clip: ``(lo, hi)`` clamp of the weight norm, ``None`` = ``(0, 10)``.

    Returns:
      The corresponding :class:`optax.GradientTransformation`; it needs
      ``params``.
    """
    checks.beta("b1", b1)
    checks.beta("b2", b2)
    checks.eps(eps)
    checks.weight_decay(weight_decay)
    clip = checks.scale_clip(scale_clip)
    adam = common.adam_moments(b1, b2, eps)

    def update_fn(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        validation.require_params(params)
        direction, state = common.adam_step(adam, updates, state, b1, b2, eps)
        direction = optax.tree.cast_like(direction, updates)
        return trust_ratio.apply_clipped_trust_ratio(direction, params, weight_decay, clip), state

    return optax.GradientTransformation(adam.init, update_fn)


def lamb(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0.0,
    scale_clip: tuple[jax.typing.ArrayLike, jax.typing.ArrayLike] | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""LAMB: Adam with a layer-wise trust ratio on a clipped weight norm.

    For each leaf :math:`\theta` with gradient :math:`g_t`, moments
    :math:`m, v` (:math:`m_0 = v_0 = 0`), bias corrections
    :math:`bc_i = 1 - \beta_i^t`, weight decay :math:`\lambda` and
    :math:`\phi(x) = \min(\max(x, lo), hi)`:

    .. math::
      \begin{align*}
        m_t &\leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        v_t &\leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        r_t &\leftarrow \frac{m_t / bc_1}{\sqrt{v_t / bc_2} + \epsilon} \\
        u_t &\leftarrow r_t + \lambda \theta_t \\
        \theta_{t+1} &\leftarrow \theta_t - \alpha_t\,
          \frac{\phi(\lVert\theta_t\rVert)}{\lVert u_t\rVert}\, u_t
      \end{align*}

    where the ratio is 1 if :math:`\phi(\lVert\theta_t\rVert) = 0` or
    :math:`\lVert u_t \rVert = 0`. Every leaf (biases included) is treated alike.

    Static args for :func:`optax.inject_hyperparams`: ``scale_clip``.

    .. warning::
      holocron 0.3.0's code has no bias correction (its documentation shows
      :math:`\hat m_t, \hat v_t`); this function bias-corrects, as documented and
      as in the paper. The two agree when :math:`\lambda = 0`,
      :math:`\epsilon = 0` and the ratio is not the fallback 1 (the correction
      factor then cancels in the ratio); a zero-norm leaf (e.g. a zero-initialised
      bias with ``lo = 0``) takes a step :math:`\sqrt{bc_2}/bc_1` times
      holocron's (about 0.32 on the first step with the default betas).
      holocron's formula also prints the normaliser as
      :math:`\lVert r_t + \theta_t\rVert`, a typo for :math:`\lVert u_t\rVert`
      (which its code and this function use).

    .. seealso:: :func:`optax.lamb` (``eps=1e-6``, masks, no weight-norm clip)
      matches this function with the same ``eps`` while
      :math:`\lVert\theta\rVert \le hi`. This function is *not* ``optax.lamb``.

    Args:
      learning_rate: Learning rate or schedule :math:`\alpha_t \ge 0`.
      b1: :math:`\beta_1 \in [0, 1)`.
      b2: :math:`\beta_2 \in [0, 1)`.
      eps: :math:`\epsilon \ge 0`.
      weight_decay: :math:`\lambda \ge 0`.
      scale_clip: ``(lo, hi)`` clamp of the weight norm; ``None`` = ``(0.0, 10.0)``.

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs`.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import lowrank_optax as lowrank
      >>> def f(x): return jnp.sum(x ** 2)  # simple quadratic function
      >>> solver = lowrank.lamb(learning_rate=0.1)
      >>> params = jnp.array([1., 2., 3.])
      >>> print('Objective function: ', f(params))
      Objective function:  14.0
      >>> opt_state = solver.init(params)
      >>> for _ in range(5):
      ...  grad = jax.grad(f)(params)
      ...  updates, opt_state = solver.update(grad, opt_state, params)
      ...  params = optax.apply_updates(params, updates)
      ...  print('Objective function: {:.2E}'.format(f(params)))
      Objective function: 1.15E+01
      Objective function: 9.56E+00
      Objective function: 7.94E+00
      Objective function: 6.62E+00
      Objective function: 5.54E+00

    References:
      You et al, `Large Batch Optimization for Deep Learning: Training BERT in
      76 minutes <https://arxiv.org/abs/1904.00962>`_, 2019

      Fernandez, `Holocron <https://github.com/frgfm/Holocron>`_ (``holocron.optim.LAMB``)
    """
    checks.learning_rate(learning_rate)
    return common.alias(
        "lamb",
        scale_by_lamb(b1, b2, eps, weight_decay, scale_clip),
        optax.scale_by_learning_rate(learning_rate),
    )
