"""``proximal_decay``: the proximal (implicit) weight decay of Adan."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lowrank_optax._src import validation
from lowrank_optax._src.holocron import checks, common


class ProximalDecayState(NamedTuple):
    """State of :func:`proximal_decay`: the step count at which the learning
    rate schedule is evaluated."""

    count: jax.Array  # int32 scalar


def proximal_decay(
    weight_decay: jax.typing.ArrayLike,
    learning_rate: optax.ScalarOrSchedule,
) -> optax.GradientTransformation:
    r"""Proximal weight decay, placed before :func:`optax.scale_by_learning_rate`.

    Adan's step :math:`\theta \leftarrow (\theta - \eta_t u) / (1 + \lambda \eta_t)`
    written as an additive update: this transform emits

    .. math::
      \frac{u + \lambda \theta}{1 + \eta_t \lambda},

    so that the following ``scale_by_learning_rate(learning_rate)`` produces
    exactly :math:`\theta_{t} - \theta_{t-1}`. ``learning_rate`` must be the
    same scalar or schedule as the one given to ``scale_by_learning_rate``; a
    schedule is evaluated at this transform's own step count, which advances in
    lock-step with the one of ``scale_by_learning_rate``.

    Static args for :func:`optax.inject_hyperparams`: none (``weight_decay`` and
    ``learning_rate`` are injectable).

    Args:
      weight_decay: Decay strength :math:`\lambda \ge 0`.
      learning_rate: The learning rate :math:`\eta_t` (scalar or schedule).

    Returns:
      The corresponding :class:`optax.GradientTransformation`; it needs
      ``params`` unless ``weight_decay`` is a literal zero (then it is the
      identity, with the same state).

    Examples:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import lowrank_optax as lowrank
      >>> tx = optax.chain(lowrank.proximal_decay(0.5, 0.1), optax.scale_by_learning_rate(0.1))
      >>> params = jnp.array([2.0])
      >>> updates, _ = tx.update(jnp.array([1.0]), tx.init(params), params)
      >>> print(params + updates)  # (2 - 0.1 * 1) / (1 + 0.5 * 0.1)
      [1.8095238]
    """
    checks.weight_decay(weight_decay)
    checks.learning_rate(learning_rate)

    def init_fn(params: Any) -> ProximalDecayState:
        del params
        return ProximalDecayState(count=jnp.zeros([], jnp.int32))

    def update_fn(
        updates: Any, state: ProximalDecayState, params: Any = None
    ) -> tuple[Any, ProximalDecayState]:
        count = optax.safe_int32_increment(state.count)
        if common.is_zero_constant(weight_decay):
            return updates, ProximalDecayState(count=count)
        validation.require_params(params)
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        shrink = 1 + lr * weight_decay

        def leaf(u: jax.Array, p: jax.Array) -> jax.Array:
            return ((u + weight_decay * p) / jnp.asarray(shrink).astype(u.dtype)).astype(u.dtype)

        new_updates = jax.tree.map(leaf, updates, params)
        return new_updates, ProximalDecayState(count=count)

    return optax.GradientTransformation(init_fn, update_fn)
