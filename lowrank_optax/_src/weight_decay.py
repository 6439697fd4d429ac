"""Decoupled weight decay applied after the update (galore-torch / HF AdamW order)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lowrank_optax._src import validation as v


class DecayWeightsAfterUpdateState(NamedTuple):
    """State of :func:`decay_weights_after_update`: the step count for schedules."""

    count: jax.Array


def decay_weights_after_update(
    weight_decay: jax.typing.ArrayLike,
    learning_rate: optax.ScalarOrSchedule,
    mask: Any | None = None,
) -> optax.GradientTransformation:
    r"""Decoupled weight decay applied to the *updated* weights (galore-torch order).

    galore-torch and Hugging Face's ``AdamW`` first apply the Adam step and then
    shrink the already-updated weights: :math:`W_1 = (W_0 - \eta u)(1 - \eta\lambda)`.
    Placed just before :func:`optax.scale_by_learning_rate`, this transformation
    emits

    .. math::

      u' = (1 - \eta_t \lambda)\, u + \lambda W

    which after the sign flip and scaling by :math:`\eta_t` reproduces that order
    exactly (the :math:`\eta^2\lambda u` term included). :math:`\eta_t` is
    evaluated at the same step as ``scale_by_learning_rate`` (own counter).

    Static args for :func:`optax.inject_hyperparams`: ``mask`` when it is a
    callable (it would be taken for a schedule); ``weight_decay`` and
    ``learning_rate`` are injectable.

    Args:
      weight_decay: decay rate :math:`\lambda \geq 0`.
      learning_rate: the same learning rate (or schedule) given to
        ``scale_by_learning_rate``.
      mask: optional pytree (or callable) of booleans selecting decayed leaves.

    Returns:
      The corresponding :class:`optax.GradientTransformation`.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> import lowrank_optax as lowrank
      >>> tx = optax.chain(optax.scale_by_adam(),
      ...                  lowrank.decay_weights_after_update(0.1, 1e-1),
      ...                  optax.scale_by_learning_rate(1e-1))
      >>> params = jnp.array([1.0, -2.0, 3.0])
      >>> state = tx.init(params)
      >>> for _ in range(5):
      ...   updates, state = tx.update(2 * params, state, params)
      ...   params = optax.apply_updates(params, updates)
      >>> print('Objective function: {:.2f}'.format(jnp.sum(params**2)))
      Objective function: 7.86

    References:
      Loshchilov et al, `Decoupled Weight Decay Regularization
      <https://arxiv.org/abs/1711.05101>`_, 2019
    """
    v.check_nonnegative("weight_decay", weight_decay)
    v.check_nonnegative("learning_rate", learning_rate)

    def init_fn(params: optax.Params) -> DecayWeightsAfterUpdateState:
        del params
        return DecayWeightsAfterUpdateState(jnp.zeros([], jnp.int32))

    def update_fn(
        updates: optax.Updates,
        state: DecayWeightsAfterUpdateState,
        params: optax.Params | None = None,
    ) -> tuple[optax.Updates, DecayWeightsAfterUpdateState]:
        v.require_params(params)
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        shrink = 1 - lr * weight_decay
        new = jax.tree.map(
            lambda u, p: (shrink * u + weight_decay * p).astype(u.dtype), updates, params
        )
        return new, DecayWeightsAfterUpdateState(optax.safe_increment(state.count))

    tx = optax.GradientTransformation(init_fn, update_fn)
    if mask is not None:
        return optax.masked(tx, mask)
    return tx
