"""Lookahead (Zhang et al., 2019) with the slow weights kept in the optimizer state."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lowrank_optax._src import validation
from lowrank_optax._src.holocron import checks


class LookaheadState(NamedTuple):
    """State of :func:`lookahead`.

    ``slow`` is param-shaped (it shards like the parameters); ``count`` counts
    inner steps; ``inner_state`` is the wrapped optimizer's state (never reset).
    """

    count: jax.Array  # int32 scalar
    slow: optax.Params
    inner_state: optax.OptState


def copy_params(params: Any) -> Any:
    """A fresh copy of ``params`` (the slow weights must not alias donated params)."""
    return jax.tree.map(lambda p: jnp.array(p, copy=True), params)


def sync_towards(slow: Any, params: Any, updates: Any, rate: Any) -> tuple[Any, Any]:
    r"""Lookahead synchronisation of one step.

    The fast weights after the inner step are :math:`\theta + u`. The slow
    weights move to :math:`\phi' = \phi + \rho(\theta + u - \phi)` (left as
    :math:`\phi` when :math:`\rho = 0`), and the emitted update
    :math:`\phi' - \theta` resets the fast weights onto them.

    Returns:
      ``(emitted updates, new slow weights)``.
    """

    def leaf(s: jax.Array, p: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array]:
        r = jnp.asarray(rate).astype(s.dtype)
        new = jnp.where(r > 0, s + r * ((p + u).astype(s.dtype) - s), s)
        return (new - p).astype(u.dtype), new

    pairs = jax.tree.map(leaf, slow, params, updates)
    treedef = jax.tree.structure(slow)
    emitted, new_slow = jax.tree.transpose(treedef, jax.tree.structure((0, 0)), pairs)
    return emitted, new_slow


def lookahead(
    inner: optax.GradientTransformation,
    sync_rate: jax.typing.ArrayLike = 0.5,
    sync_period: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Lookahead wrapper whose slow weights live in the optimizer state.

    The inner optimizer produces fast updates :math:`u_t` at the fast weights
    :math:`\theta_t` (the ``params`` passed to ``update``). Every
    :math:`k` = ``sync_period`` steps the slow weights :math:`\phi` (initialised
    to the params given to ``init``) move towards the fast ones and the fast
    weights are reset onto them:

    .. math::
      \begin{align*}
        u_t, s_t &\leftarrow \text{inner}(g_t, s_{t-1}, \theta_t) \\
        \phi &\leftarrow \phi + \rho\, (\theta_t + u_t - \phi)
          \quad\text{if } t \bmod k = 0 \\
        \theta_{t+1} &\leftarrow \begin{cases} \phi & t \bmod k = 0 \\
          \theta_t + u_t & \text{otherwise} \end{cases}
      \end{align*}

    i.e. the emitted update is :math:`\phi - \theta_t` on sync steps and
    :math:`u_t` otherwise. The inner state is never reset. With
    :math:`\rho = 0` the params return to their initial value every :math:`k`
    steps. Params stay a plain pytree, so the wrapper drops into
    ``nnx.Optimizer``, Linen ``TrainState`` and :func:`optax.chain`; extra
    keyword arguments of ``update`` are forwarded to ``inner``. The sync runs
    under :func:`jax.lax.cond`, so off-sync steps cost only the inner step.

    Static args for :func:`optax.inject_hyperparams`: ``sync_period`` when
    passed (``inner``, a transformation, passes through as a static value;
    ``sync_rate`` is injectable).

    .. seealso:: :func:`optax.lookahead` needs ``optax.LookaheadParams(fast,
      slow)`` as params and does not forward extra args; this function is *not*
      ``optax.lookahead``. ``holocron.optim.Lookahead`` is the parity reference.

    Args:
      inner: The fast optimizer.
      sync_rate: Slow-weight step :math:`\rho \in [0, 1]`.
      sync_period: Number :math:`k \ge 1` of fast steps between syncs (``None``:
        holocron's default 6; ``None`` keeps :func:`optax.inject_hyperparams`
        from turning the default into an array).

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs`; its
      ``update`` needs ``params``.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import lowrank_optax as lowrank
      >>> def f(x): return jnp.sum(x ** 2)  # simple quadratic function
      >>> solver = lowrank.lookahead(optax.adam(0.1), sync_rate=0.5, sync_period=2)
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
      Objective function: 1.28E+01
      Objective function: 1.17E+01
      Objective function: 1.17E+01
      Objective function: 1.07E+01

    References:
      Zhang et al, `Lookahead Optimizer: k steps forward, 1 step back
      <https://arxiv.org/abs/1907.08610>`_, 2019

      Fernandez, `Holocron <https://github.com/frgfm/Holocron>`_ (``holocron.optim.Lookahead``)
    """
    checks.sync_rate(sync_rate)
    period = checks.sync_period(6 if sync_period is None else sync_period)
    validation.check_transformation("inner", inner)
    inner = optax.with_extra_args_support(inner)

    # Branches are built once (stable identities keep eager ``lax.cond`` cached).
    def sync(operands: tuple[Any, Any, Any]) -> tuple[Any, Any]:
        slow, params, fast = operands
        return sync_towards(slow, params, fast, sync_rate)

    def skip(operands: tuple[Any, Any, Any]) -> tuple[Any, Any]:
        slow, _, fast = operands
        return fast, slow

    def init_fn(params: Any) -> LookaheadState:
        return LookaheadState(
            count=jnp.zeros([], jnp.int32),
            slow=copy_params(params),
            inner_state=inner.init(params),
        )

    def update_fn(
        updates: Any, state: LookaheadState, params: Any = None, **extra_args: Any
    ) -> tuple[Any, LookaheadState]:
        validation.require_params(params)
        fast, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        count = optax.safe_int32_increment(state.count)
        operands = (state.slow, params, fast)
        emitted, slow = jax.lax.cond(count % period == 0, sync, skip, operands)
        return emitted, LookaheadState(count=count, slow=slow, inner_state=inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
