"""RaLars: rectified Adam (RAdam) with LAMB's clipped trust ratio."""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from lowrank_optax._src import validation
from lowrank_optax._src.holocron import checks, common, trust_ratio


def rectification(b2: Any, count: jax.Array, dtype: Any) -> tuple[jax.Array, jax.Array]:
    r"""RAdam's ``(r_t, rho_t > 4)`` at step ``count`` (>= 1), in ``dtype``.

    :math:`\rho_\infty = 2/(1-\beta_2) - 1`,
    :math:`\rho_t = \rho_\infty - 2 t \beta_2^t / (1 - \beta_2^t)` and
    :math:`r_t = \sqrt{(\rho_t-4)(\rho_t-2)\rho_\infty /
    ((\rho_\infty-4)(\rho_\infty-2)\rho_t)}`; ``r_t`` is 1 (unused) where
    :math:`\rho_t \le 4`, so the discarded branch stays finite.
    """
    t = count.astype(dtype)
    b2 = jnp.asarray(b2, dtype)
    b2t = b2**t
    rho_inf = 2 / (1 - b2) - 1
    rho_t = rho_inf - 2 * t * b2t / (1 - b2t)
    rectified = rho_t > 4
    num = (rho_t - 4) * (rho_t - 2) * rho_inf
    den = (rho_inf - 4) * (rho_inf - 2) * rho_t
    ratio = jnp.where(rectified, num / jnp.where(rectified, den, 1), 1)
    return jnp.sqrt(ratio), rectified


def scale_by_ralars(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0.0,
    scale_clip: tuple[jax.typing.ArrayLike, jax.typing.ArrayLike] | None = None,
    *,
    force_adaptive_momentum: bool = False,
) -> optax.GradientTransformation:
    r"""RaLars direction: RAdam's rectified step, then LAMB's clipped trust ratio.

    The moments are those of :func:`optax.scale_by_adam`, which this transform
    runs (its :class:`optax.ScaleByAdamState` is the state); the Adam quotient
    uses a zero-safe division, so with :math:`\epsilon = 0` zero-gradient
    elements stay finite in both branches. See :func:`ralars` for the formulas.

    Static args for :func:`optax.inject_hyperparams`: none (``scale_clip`` and the
    boolean ``force_adaptive_momentum`` pass through as static values; the rest is
    injectable).

    Args:
      b1: :math:`\beta_1 \in [0, 1)`.
      b2: :math:`\beta_2 \in [0, 1)`.
      eps: :math:`\epsilon \ge 0`.
      weight_decay: :math:`\lambda \ge 0`, added before the trust ratio.
      scale_clip: ``(lo, hi)`` clamp of the weight norm; ``None`` = ``(0, 10)``.
      force_adaptive_momentum: Use the un-rectified Adam quotient while
        :math:`\rho_t \le 4` instead of the plain first moment.

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
        adam_dir, state = common.adam_step(adam, updates, state, b1, b2, eps)
        mu_hat = optax.tree.bias_correction(state.mu, b1, state.count)
        r_t, rectified = rectification(b2, state.count, common.tree_scalar_dtype(updates))
        if force_adaptive_momentum:
            adaptive, plain = r_t, jnp.zeros_like(r_t)
        else:
            adaptive = jnp.where(rectified, r_t, 0)
            plain = jnp.where(rectified, 0, 1).astype(r_t.dtype)

        def leaf(a: jax.Array, m: jax.Array) -> jax.Array:
            return (adaptive.astype(a.dtype) * a + plain.astype(m.dtype) * m).astype(a.dtype)

        direction = jax.tree.map(leaf, adam_dir, mu_hat)
        return trust_ratio.apply_clipped_trust_ratio(direction, params, weight_decay, clip), state

    return optax.GradientTransformation(adam.init, update_fn)


def ralars(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0.0,
    scale_clip: tuple[jax.typing.ArrayLike, jax.typing.ArrayLike] | None = None,
    *,
    force_adaptive_momentum: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""RaLars: RAdam's variance rectification with a LAMB trust ratio.

    With Adam moments :math:`m_t, v_t` (zero init), :math:`bc_i = 1-\beta_i^t`,
    :math:`\rho_\infty = 2/(1-\beta_2) - 1` and
    :math:`\rho_t = \rho_\infty - 2t\beta_2^t / bc_2`:

    .. math::
      \begin{align*}
        r_t &\leftarrow \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}
          {(\rho_\infty-4)(\rho_\infty-2)\rho_t}} \\
        u_t &\leftarrow \begin{cases}
          r_t\, \dfrac{m_t/bc_1}{\sqrt{v_t/bc_2} + \epsilon} & \rho_t > 4 \\
          \dfrac{m_t/bc_1}{\sqrt{v_t/bc_2} + \epsilon} & \rho_t \le 4,
            \text{ force\_adaptive\_momentum} \\
          m_t / bc_1 & \text{otherwise}
        \end{cases} \\
        u_t &\leftarrow u_t + \lambda\theta_t \\
        \theta_{t+1} &\leftarrow \theta_t - \alpha_t\,
          \frac{\phi(\lVert\theta_t\rVert)}{\lVert u_t\rVert}\, u_t
      \end{align*}

    with :math:`\phi(x) = \min(\max(x, lo), hi)` and the ratio 1 when
    :math:`\phi(\lVert\theta_t\rVert) = 0` or :math:`\lVert u_t\rVert = 0`. The
    threshold is strictly :math:`\rho_t > 4` (paper), so with
    :math:`\beta_2 = 0.999` rectification starts at step 5
    (:math:`\rho_5 \approx 4.996`).

    Static args for :func:`optax.inject_hyperparams`: ``scale_clip``,
    ``force_adaptive_momentum``.

    .. warning::
      holocron's docstring calls ``scale_clip`` "the maximal upper bound for the
      scale factor"; its code (and this function, and the LAMB paper's
      :math:`\phi`) clamps the *weight norm* instead. holocron's code is
      otherwise the reference: trajectories match it.

    .. seealso:: :func:`optax.radam` rectifies from :math:`\rho_t \ge 5` and has
      neither a trust ratio nor ``force_adaptive_momentum``.

    Args:
      learning_rate: Learning rate or schedule :math:`\alpha_t \ge 0`.
      b1: :math:`\beta_1 \in [0, 1)`.
      b2: :math:`\beta_2 \in [0, 1)`.
      eps: :math:`\epsilon \ge 0`.
      weight_decay: :math:`\lambda \ge 0`.
      scale_clip: ``(lo, hi)`` clamp of the weight norm; ``None`` = ``(0.0, 10.0)``.
      force_adaptive_momentum: Use the Adam quotient while the variance is not
        tractable (:math:`\rho_t \le 4`).

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs`.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import lowrank_optax as lowrank
      >>> def f(x): return jnp.sum(x ** 2)  # simple quadratic function
      >>> solver = lowrank.ralars(learning_rate=0.1)
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
      Objective function: 9.19E+00
      Objective function: 7.44E+00
      Objective function: 6.03E+00
      Objective function: 4.97E+00

    References:
      Liu et al, `On the Variance of the Adaptive Learning Rate and Beyond
      <https://arxiv.org/abs/1908.03265>`_, 2019

      You et al, `Large Batch Optimization for Deep Learning: Training BERT in
      76 minutes <https://arxiv.org/abs/1904.00962>`_, 2019

      Fernandez, `Holocron <https://github.com/frgfm/Holocron>`_ (``holocron.optim.RaLars``)
    """
    checks.learning_rate(learning_rate)
    return common.alias(
        "ralars",
        scale_by_ralars(
            b1, b2, eps, weight_decay, scale_clip, force_adaptive_momentum=force_adaptive_momentum
        ),
        optax.scale_by_learning_rate(learning_rate),
    )
