"""AdamP (Heo et al., 2020): Adam with a projection for scale-invariant weights."""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from lowrank_optax._src import validation
from lowrank_optax._src.holocron import checks, common
from lowrank_optax._src.numerics import working_dtype

_COS_EPS = 1e-8  # torch.nn.functional.cosine_similarity's default eps


def project_if_scale_invariant(
    p: jax.Array, param: jax.Array, grad: jax.Array, delta: Any, eps: Any
) -> jax.Array:
    r"""AdamP's projection of the step ``p`` for one leaf.

    :math:`c = \langle\theta, g\rangle / (\max(\lVert\theta\rVert, 10^{-8})
    \max(\lVert g\rVert, 10^{-8}))`; if :math:`c < \delta/\sqrt{d}`,
    :math:`p \leftarrow p - \langle n, p\rangle n` with
    :math:`n = \theta / (\lVert\theta\rVert + \epsilon)`. When
    :math:`\lVert\theta\rVert + \epsilon = 0` the projection is the identity.
    """
    dtype = working_dtype(param.dtype)
    th, gr, pp = param.astype(dtype), grad.astype(dtype), p.astype(dtype)
    th_norm = jnp.sqrt(jnp.sum(th * th))
    g_norm = jnp.sqrt(jnp.sum(gr * gr))
    cos = jnp.sum(th * gr) / (jnp.maximum(th_norm, _COS_EPS) * jnp.maximum(g_norm, _COS_EPS))
    project = cos < delta / jnp.sqrt(jnp.asarray(param.size, dtype))
    n_den = th_norm + eps
    coef = common.safe_div(jnp.sum(th * pp), n_den * n_den)
    coef = jnp.where(project, coef, 0)
    return (pp - coef * th).astype(p.dtype)


def scale_by_adamp(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    delta: jax.typing.ArrayLike = 0.1,
    *,
    amsgrad: bool = False,
) -> optax.GradientTransformation:
    r"""AdamP direction (see :func:`adamp` for the formulas).

    The moments are those of :func:`optax.scale_by_adam`, or of
    :func:`scale_by_adam_in_basis` with ``amsgrad_decay=1`` under ``amsgrad``
    (maximum of the raw second moment, as torch), which this transform runs:
    their state is its state. The
    quotient uses a zero-safe division. The cosine test uses the incoming
    updates, so a weight decay added before this transform (as :func:`adamp`
    does) enters it.

    Static args for :func:`optax.inject_hyperparams`: ``amsgrad`` (a boolean, static
    anyway); the rest is injectable.

    Args:
      b1: :math:`\beta_1 \in [0, 1)`.
      b2: :math:`\beta_2 \in [0, 1)`.
      eps: :math:`\epsilon \ge 0`.
      delta: Projection threshold :math:`\delta \ge 0`.
      amsgrad: Use the running maximum of :math:`v` in the denominator.

    Returns:
      The corresponding :class:`optax.GradientTransformation`; it needs
      ``params``.
    """
    checks.beta("b1", b1)
    checks.beta("b2", b2)
    checks.eps(eps)
    checks.nonnegative("delta", delta)

    moments = common.adam_moments(b1, b2, eps, amsgrad=amsgrad)

    def update_fn(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        validation.require_params(params)
        steps, state = common.adam_step(moments, updates, state, b1, b2, eps)
        direction = jax.tree.map(
            lambda p, th, g: project_if_scale_invariant(p, th, g, delta, eps),
            steps,
            params,
            updates,
        )
        return optax.tree.cast_like(direction, updates), state

    return optax.GradientTransformation(moments.init, update_fn)


def adamp(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0.0,
    delta: jax.typing.ArrayLike = 0.1,
    *,
    amsgrad: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""AdamP: Adam that removes the radial component on scale-invariant weights.

    For each leaf :math:`\theta` of size :math:`d` with gradient :math:`g_t`
    (coupled weight decay :math:`g_t \leftarrow g_t + \lambda\theta_t` first),
    Adam moments :math:`m_t, v_t` (zero init) and :math:`bc_i = 1-\beta_i^t`:

    .. math::
      \begin{align*}
        p_t &\leftarrow \frac{m_t / bc_1}{\sqrt{\bar v_t}/\sqrt{bc_2} + \epsilon} \\
        c_t &\leftarrow \frac{\langle \theta_t, g_t\rangle}
          {\max(\lVert\theta_t\rVert, 10^{-8}) \max(\lVert g_t\rVert, 10^{-8})} \\
        n_t &\leftarrow \theta_t / (\lVert\theta_t\rVert + \epsilon) \\
        q_t &\leftarrow \begin{cases}
          p_t - \langle n_t, p_t\rangle n_t & c_t < \delta / \sqrt{d} \\
          p_t & \text{otherwise}
        \end{cases} \\
        \theta_{t+1} &\leftarrow \theta_t - \alpha_t q_t
      \end{align*}

    with :math:`\bar v_t` the running maximum of :math:`v_t` under ``amsgrad``.
    The cosine is signed and layer-wise (whole leaf, biases included).

    Static args for :func:`optax.inject_hyperparams`: ``amsgrad``.

    .. warning::
      holocron's docstring states :math:`m_0 = g_0` and
      :math:`\sqrt{\hat v_t + \epsilon}`; its code, the paper and this function
      use :math:`m_0 = 0` and :math:`\epsilon` outside the square root (holocron's
      code is the parity reference). The official AdamP (absolute cosine, channel-wise
      views, ``wd_ratio``, Nesterov) is not what holocron implements and is not
      offered here.

    Args:
      learning_rate: Learning rate or schedule :math:`\alpha_t \ge 0`.
      b1: :math:`\beta_1 \in [0, 1)`.
      b2: :math:`\beta_2 \in [0, 1)`.
      eps: :math:`\epsilon \ge 0`.
      weight_decay: Coupled L2 penalty :math:`\lambda \ge 0`.
      delta: Projection threshold :math:`\delta \ge 0`.
      amsgrad: AMSGrad variant.

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs`.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import lowrank_optax as lowrank
      >>> def f(x): return jnp.sum(x ** 2)  # simple quadratic function
      >>> solver = lowrank.adamp(learning_rate=0.1)
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
      Objective function: 8.78E+00

    References:
      Heo et al, `AdamP: Slowing Down the Slowdown for Momentum Optimizers on
      Scale-invariant Weights <https://arxiv.org/abs/2006.08217>`_, 2020

      Fernandez, `Holocron <https://github.com/frgfm/Holocron>`_ (``holocron.optim.AdamP``)
    """
    checks.learning_rate(learning_rate)
    checks.weight_decay(weight_decay)
    return common.alias(
        "adamp",
        common.coupled_weight_decay(weight_decay),
        scale_by_adamp(b1, b2, eps, delta, amsgrad=amsgrad),
        optax.scale_by_learning_rate(learning_rate),
    )
