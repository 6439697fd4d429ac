"""LARS (You et al., 2017) with holocron's hyperparameters."""

from typing import Any

import jax
import optax

from lowrank_optax._src import validation
from lowrank_optax._src.holocron import checks, common, trust_ratio
from lowrank_optax._src.holocron.momentum import trace_dampened


def scale_by_lars_trust_ratio(
    weight_decay: jax.typing.ArrayLike = 0.0,
    trust_coefficient: jax.typing.ArrayLike = 1.0,
    scale_clip: tuple[jax.typing.ArrayLike, jax.typing.ArrayLike] | None = None,
) -> optax.GradientTransformation:
    r"""Scales each leaf by LARS' layer-wise trust ratio (stateless).

    For a leaf :math:`\theta` with gradient :math:`g`, weight decay
    :math:`\lambda`, trust coefficient :math:`\eta` and weight-norm clip
    :math:`\phi(x) = \min(\max(x, lo), hi)`:

    .. math::
      \begin{align*}
        \gamma &\leftarrow \frac{\eta\, \phi(\lVert \theta \rVert)}
          {\lVert g \rVert + \lambda \lVert \theta \rVert}
          \quad (\gamma = 1 \text{ if } \lVert \theta \rVert = 0
          \text{ or the denominator is } 0) \\
        d &\leftarrow \gamma\, (g + \lambda \theta)
      \end{align*}

    Note the denominator is :math:`\lVert g \rVert + \lambda \lVert \theta \rVert`
    (LARS paper), not :func:`optax.scale_by_trust_ratio`'s
    :math:`\lVert g + \lambda \theta \rVert`. With :math:`\lambda > 0` and
    :math:`g = 0`, :math:`d = \eta\, \theta` whatever :math:`\lambda` (clip
    inactive).

    Static args for :func:`optax.inject_hyperparams`: none (``scale_clip``, a pair,
    passes through as a static value; the rest is injectable).

    Args:
      weight_decay: :math:`\lambda \ge 0`, added to the gradient (L2).
      trust_coefficient: :math:`\eta > 0`.
      scale_clip: ``(lo, hi)`` bounds of the weight norm, ``0 <= lo <= hi``;
        ``None`` means holocron's ``(0.0, 10.0)``.

    Returns:
      The corresponding :class:`optax.GradientTransformation`; it needs
      ``params``.
    """
    checks.weight_decay(weight_decay)
    checks.positive("trust_coefficient", trust_coefficient)
    clip = checks.scale_clip(scale_clip)

    def update_fn(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        validation.require_params(params)

        def leaf(g: jax.Array, p: jax.Array) -> jax.Array:
            p_norm = common.leaf_norm(p)
            den = common.leaf_norm(g) + weight_decay * p_norm
            phi = trust_ratio.clipped_weight_norm(p_norm, clip)
            gamma = trust_ratio.safe_trust_ratio(trust_coefficient * phi, den, reference=p_norm)
            decayed = g if common.is_zero_constant(weight_decay) else g + weight_decay * p
            return (gamma.astype(g.dtype) * decayed).astype(g.dtype)

        return jax.tree.map(leaf, updates, params), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def lars(
    learning_rate: optax.ScalarOrSchedule,
    momentum: jax.typing.ArrayLike = 0.0,
    dampening: jax.typing.ArrayLike = 0.0,
    weight_decay: jax.typing.ArrayLike = 0.0,
    trust_coefficient: jax.typing.ArrayLike = 1.0,
    scale_clip: tuple[jax.typing.ArrayLike, jax.typing.ArrayLike] | None = None,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""LARS: layer-wise adaptive rate scaling with momentum (holocron flavour).

    Every leaf :math:`\theta` with gradient :math:`g_t` gets the trust-ratio
    direction of :func:`scale_by_lars_trust_ratio`,
    :math:`d_t = \gamma_t (g_t + \lambda \theta_t)`; it is multiplied by the
    learning rate :math:`\alpha_t` and only then accumulated in the momentum
    buffer (:func:`trace_dampened`, momentum :math:`\mu`, dampening
    :math:`\tau`, :math:`v_0 = 0`):

    .. math::
      \begin{align*}
        \gamma_t &\leftarrow \frac{\eta\, \phi(\lVert \theta_t \rVert)}
          {\lVert g_t \rVert + \lambda \lVert \theta_t \rVert} \\
        v_t &\leftarrow \mu\, v_{t-1} + (1 - \tau)\, \alpha_t \gamma_t
          (g_t + \lambda \theta_t) \\
        \theta_{t+1} &\leftarrow \theta_t - v_t \quad\text{or, with Nesterov,}\quad
          \theta_t - \alpha_t \gamma_t (g_t + \lambda \theta_t) - \mu v_t
      \end{align*}

    The chain is ``scale_by_lars_trust_ratio -> scale_by_learning_rate ->
    trace_dampened`` (like :func:`optax.lars`, the learning rate comes before the
    momentum because the documented LARS accumulates learning-rate-scaled steps).

    The paper's polynomial decay :math:`\alpha_t = \alpha (1 - t/T)^2` is not
    built in: pass it as ``learning_rate``, e.g.
    ``optax.polynomial_schedule(alpha, 0.0, power=2, transition_steps=T)``.

    Static args for :func:`optax.inject_hyperparams`: ``scale_clip``,
    ``nesterov``.

    .. warning::
      holocron 0.3.0's code departs from its documentation, this function
      follows the documentation (and the paper):

      * holocron keeps torch-SGD's buffer of *unscaled* :math:`g + \lambda\theta`
        (first buffer equal to the first update) and multiplies the whole buffer
        by the current :math:`\alpha_t \gamma_t`; here :math:`\alpha_t\gamma_t`
        enters the buffer at each step. Both agree when ``momentum = 0``.
      * holocron stores ``scale_clip`` but never uses it; here it clamps the
        weight norm (default ``(0, 10)``, holocron's documented "bounds for the
        weight norm"), so leaves with :math:`\lVert\theta\rVert > 10` take
        smaller steps than in holocron.
      * ``trust_coefficient`` (:math:`\eta`) does not exist in holocron; the
        default 1 reproduces it. Dampening is applied on every step.

    .. seealso:: :func:`optax.lars` has a different denominator
      :math:`\lVert g + \lambda\theta \rVert`, ``trust_coefficient=0.001`` and
      ``momentum=0.9`` by default, masks and no weight-norm clip. This function
      is *not* ``optax.lars``.

    Args:
      learning_rate: Global learning rate or schedule :math:`\alpha_t \ge 0`.
      momentum: Momentum factor :math:`\mu \ge 0`.
      dampening: Dampening :math:`\tau \in [0, 1]` of the momentum input.
      weight_decay: L2 penalty :math:`\lambda \ge 0` (added to the gradient).
      trust_coefficient: :math:`\eta > 0`, multiplies the trust ratio.
      scale_clip: ``(lo, hi)`` bounds of the weight norm in the trust ratio;
        ``None`` means ``(0.0, 10.0)``.
      nesterov: Nesterov momentum (needs ``momentum > 0``, ``dampening = 0``).

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs`.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import lowrank_optax as lowrank
      >>> def f(x): return jnp.sum(x ** 2)  # simple quadratic function
      >>> schedule = optax.polynomial_schedule(0.1, 0.0, power=2, transition_steps=100)
      >>> solver = lowrank.lars(learning_rate=schedule, momentum=0.9)
      >>> params = jnp.array([1., 2., 3.])
      >>> print('Objective function: ', f(params))
      Objective function:  14.0
      >>> opt_state = solver.init(params)
      >>> for _ in range(5):
      ...  grad = jax.grad(f)(params)
      ...  updates, opt_state = solver.update(grad, opt_state, params)
      ...  params = optax.apply_updates(params, updates)
      ...  print('Objective function: {:.2E}'.format(f(params)))
      Objective function: 1.13E+01
      Objective function: 7.29E+00
      Objective function: 3.39E+00
      Objective function: 8.00E-01
      Objective function: 1.61E-03

    References:
      You et al, `Large Batch Training of Convolutional Networks
      <https://arxiv.org/abs/1708.03888>`_, 2017

      Fernandez, `Holocron <https://github.com/frgfm/Holocron>`_ (``holocron.optim.LARS``)
    """
    checks.learning_rate(learning_rate)
    return common.alias(
        "lars",
        scale_by_lars_trust_ratio(weight_decay, trust_coefficient, scale_clip),
        optax.scale_by_learning_rate(learning_rate),
        trace_dampened(momentum, dampening, nesterov=nesterov),
    )
