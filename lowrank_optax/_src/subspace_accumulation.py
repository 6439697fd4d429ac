"""Gradient accumulation in the subspace for chains around ``project_lowrank``."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lowrank_optax._src import validation
from lowrank_optax._src.project_lowrank import ProjectLowrankState


class SubspaceAccumulationState(NamedTuple):
    """State of :func:`subspace_accumulation`: the wrapped transformation's state.

    Attributes:
      inner_state: state of the wrapped transformation.
    """

    inner_state: optax.OptState


def _is_projection(x: Any) -> bool:
    return isinstance(x, ProjectLowrankState)


def _accumulating_projections(state: Any) -> list[ProjectLowrankState]:
    nodes = jax.tree.leaves(state, is_leaf=_is_projection)
    return [
        n for n in nodes if _is_projection(n) and isinstance(n.inner_state, optax.MultiStepsState)
    ]


def subspace_accumulation(
    inner: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
    r"""Applies a chain around an accumulating projection once per update.

    ``project_lowrank(..., accumulation_steps=k)`` (and :func:`galore`) accumulate
    :math:`k` micro-batches in the subspace: every call projects the micro-batch
    gradient :math:`G_i` on the current basis :math:`P` and averages the
    rank-sized coordinates,

    .. math::

      \bar R = \frac1k \sum_{i=1}^{k} P^\top G_i ,

    and the inner optimizer runs once, on :math:`\bar R`, at the :math:`k`-th
    call (the other calls emit zeros). Transformations chained *around* the
    projection (decoupled weight decay, the learning-rate schedule, clipping)
    would still run on every call. This wrapper runs ``inner`` on every call but
    keeps its result only when the projection emits an update: on the other
    calls the parameters' updates are zeros and every part of the state except
    the projections' (bases, refresh clock, accumulated coordinates) is left as
    it was. Step counters and schedules outside the projection therefore
    advance once per update, as with :class:`optax.MultiSteps`, while the
    accumulator is rank-sized instead of full-size.

    **Refresh rule.** At an update whose index is a multiple of
    ``update_proj_gap``, the new basis is computed from the **first**
    micro-batch's gradient of that update (the only gradient available before
    the others are projected), and all :math:`k` micro-batches are projected on
    it. Where the basis does not change inside an update (every update but
    the refresh ones, or refresh updates whose micro-batch gradients agree) the
    result equals ``optax.MultiSteps(tx, k)`` of the same chain without
    accumulation, which refreshes from the mean gradient instead.

    Args:
      inner: a transformation containing at least one
        ``project_lowrank(..., accumulation_steps=k)`` (all with the same
        ``k``), e.g. ``optax.chain(lowrank.galore(scale_by_adam_in_basis(),
        rank=r, accumulation_steps=k), lowrank.decay_weights_after_update(wd,
        lr), optax.scale_by_learning_rate(lr))``.

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs`.

    Raises:
      TypeError: ``inner`` is not a gradient transformation.
      ValueError: at ``init`` when ``inner`` holds no accumulating projection.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.subspace_accumulation(optax.chain(
      ...     lowrank.galore(lowrank.scale_by_adam_in_basis(), rank=2,
      ...                    accumulation_steps=4),
      ...     lowrank.decay_weights_after_update(1e-2, 1e-1),
      ...     optax.scale_by_learning_rate(1e-1)))
      >>> params = {'w': jnp.arange(24.0).reshape(6, 4) % 5 - 2.0}
      >>> loss = lambda p: jnp.sum(p['w'] ** 2)
      >>> state = tx.init(params)
      >>> for _ in range(20):  # 20 micro-batches = 5 updates (of the same gradient here)
      ...   grads = jax.grad(loss)(params)
      ...   updates, state = tx.update(grads, state, params)
      ...   params = optax.apply_updates(params, updates)
      >>> print('Objective function: {:.2f}'.format(loss(params)))
      Objective function: 31.40
    """
    validation.check_transformation("inner", inner)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: optax.Params) -> SubspaceAccumulationState:
        state = inner.init(params)
        if not _accumulating_projections(state):
            raise ValueError(
                "lowrank.subspace_accumulation wraps a transformation that accumulates in "
                "the subspace, i.e. contains project_lowrank(..., accumulation_steps=k) / "
                "galore(..., accumulation_steps=k) with k > 1; this one does not. Use "
                "optax.MultiSteps for full-size accumulation."
            )
        return SubspaceAccumulationState(state)

    def update_fn(
        updates: optax.Updates,
        state: SubspaceAccumulationState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, SubspaceAccumulationState]:
        new_updates, new_state = inner.update(updates, state.inner_state, params, **extra_args)
        # MultiSteps' mini_step is back at 0 exactly after the call that emitted.
        emit = _accumulating_projections(new_state)[0].inner_state.mini_step == 0

        def keep(old: Any, new: Any) -> Any:
            if _is_projection(new):
                return new
            return jax.tree.map(lambda o, n: jnp.where(emit, n, o).astype(o.dtype), old, new)

        kept = jax.tree.map(keep, state.inner_state, new_state, is_leaf=_is_projection)
        new_updates = jax.tree.map(lambda u: jnp.where(emit, u, jnp.zeros_like(u)), new_updates)
        return new_updates, SubspaceAccumulationState(kept)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
