"""``trace_dampened``: torch-style momentum with dampening, built on :func:`optax.trace`."""

from typing import Any

import jax
import optax

from lowrank_optax._src.holocron import checks, common


def trace_dampened(
    momentum: jax.typing.ArrayLike,
    dampening: jax.typing.ArrayLike = 0.0,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    r"""Momentum trace with dampening, as in LARS and torch's SGD.

    With incoming update :math:`d_t`, momentum :math:`\mu` and dampening
    :math:`\tau`, the transform keeps a trace :math:`v_t` (with :math:`v_0 = 0`)
    and emits :math:`v_t`, or the Nesterov look-ahead:

    .. math::
      \begin{align*}
        v_t &\leftarrow \mu\, v_{t-1} + (1 - \tau)\, d_t \\
        \text{out}_t &\leftarrow v_t \quad\text{or}\quad d_t + \mu\, v_t
          \ \text{(nesterov)}
      \end{align*}

    The dampened input is handed to :func:`optax.trace`, so the state is an
    :class:`optax.TraceState` and with :math:`\tau = 0` the transform *is*
    :func:`optax.trace`. Dampening applies on every step (torch skips it on the
    first step, where its buffer is initialised to the raw update).

    Static args for :func:`optax.inject_hyperparams`: none (``nesterov``, a boolean,
    is static anyway; ``momentum`` and ``dampening`` are injectable).

    Args:
      momentum: Momentum factor :math:`\mu \ge 0`.
      dampening: Dampening :math:`\tau \in [0, 1]` of the incoming update
        (:math:`\tau > 1` would flip the step's sign).
      nesterov: Whether to emit the Nesterov look-ahead; requires
        :math:`\mu > 0` and :math:`\tau = 0`.

    Returns:
      The corresponding :class:`optax.GradientTransformation`.

    Raises:
      ValueError: if ``momentum < 0``, ``dampening`` is outside ``[0, 1]``, or
        ``nesterov`` with ``momentum <= 0`` or ``dampening != 0``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.trace_dampened(momentum=0.5, dampening=0.5)
      >>> state = tx.init(jnp.zeros(2))
      >>> for _ in range(3):
      ...   out, state = tx.update(jnp.ones(2), state)
      ...   print(out)
      [0.5 0.5]
      [0.75 0.75]
      [0.875 0.875]
    """
    checks.nonnegative("momentum", momentum)
    checks.unit_interval("dampening", dampening)
    checks.nesterov(nesterov, momentum, dampening)
    inner = optax.trace(decay=momentum, nesterov=nesterov)
    if common.is_zero_constant(dampening):
        return inner

    def update_fn(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        damped = jax.tree.map(lambda d: (1 - dampening) * d, updates)
        damped = optax.tree.cast_like(damped, updates)
        return inner.update(damped, state, params)

    return optax.GradientTransformation(inner.init, update_fn)
