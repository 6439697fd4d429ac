"""Scout: holocron's Lookahead variant with an update-coherence sync rate."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lowrank_optax._src import validation
from lowrank_optax._src.holocron import checks, common
from lowrank_optax._src.holocron.lookahead import copy_params, sync_towards
from lowrank_optax._src.numerics import working_dtype


class ScoutState(NamedTuple):
    """State of :func:`scout`.

    ``slow`` and the four window statistics of the inner updates are
    param-shaped (they shard like the parameters): the running ``update_mean``
    and sum of squared deviations ``update_m2`` (Welford), and the running
    ``update_max`` / ``update_min``. They replace holocron's buffer of
    :math:`k + 1` parameter snapshots.
    """

    count: jax.Array  # int32 scalar
    slow: optax.Params
    inner_state: optax.OptState
    update_mean: optax.Updates
    update_m2: optax.Updates
    update_max: optax.Updates
    update_min: optax.Updates


def accumulate(state: ScoutState, updates: Any, position: jax.Array) -> tuple[Any, ...]:
    """Welford/extrema update of the window statistics with the ``position``-th
    (1-based) update of the window; position 1 restarts them."""
    first = position == 1

    def leaf(u: jax.Array, mean: jax.Array, m2: jax.Array, mx: jax.Array, mn: jax.Array):
        n = position.astype(mean.dtype)
        prev_mean = jnp.where(first, jnp.zeros_like(mean), mean)
        prev_m2 = jnp.where(first, jnp.zeros_like(m2), m2)
        uu = u.astype(mean.dtype)
        dev = uu - prev_mean
        new_mean = prev_mean + dev / n
        new_m2 = prev_m2 + dev * (uu - new_mean)
        new_max = jnp.where(first, uu, jnp.maximum(mx, uu))
        new_min = jnp.where(first, uu, jnp.minimum(mn, uu))
        return new_mean, new_m2, new_max, new_min

    stats = jax.tree.map(
        leaf, updates, state.update_mean, state.update_m2, state.update_max, state.update_min
    )
    outer = jax.tree.structure(updates)
    return jax.tree.transpose(outer, jax.tree.structure((0, 0, 0, 0)), stats)


def coherence_rate(mean: Any, m2: Any, mx: Any, mn: Any, period: int, sync_rate: Any) -> jax.Array:
    r"""Scout's sync rate :math:`\max(1 - C, \rho)` from the window statistics.

    Per element :math:`r = \mathrm{std}_{unbiased}(U) / \max|U - \bar U|`; per
    leaf the mean of :math:`r` over elements with a non-zero max deviation;
    :math:`C` the mean over leaves having such elements. Without any valid
    element (constant updates, or :math:`k = 1`) the rate is ``sync_rate``.
    """
    dtype = common.tree_scalar_dtype(mean)

    def leaf(mu: jax.Array, s2: jax.Array, hi: jax.Array, lo: jax.Array):
        wd = working_dtype(mu.dtype)
        mu, s2, hi, lo = (x.astype(wd) for x in (mu, s2, hi, lo))
        max_dev = jnp.maximum(hi - mu, mu - lo)
        std = jnp.sqrt(jnp.maximum(s2, 0) / max(period - 1, 1))
        valid = max_dev > 0
        ratio = jnp.where(valid, std / jnp.where(valid, max_dev, 1), 0)
        n_valid = jnp.sum(valid)
        mean_ratio = jnp.sum(ratio) / jnp.maximum(n_valid, 1).astype(wd)
        return mean_ratio.astype(dtype), n_valid > 0

    leaves = [jax.tree.leaves(t) for t in (mean, m2, mx, mn)]
    per_leaf = [leaf(*xs) for xs in zip(*leaves, strict=True)]
    if not per_leaf:
        return jnp.asarray(sync_rate, dtype)
    ratios = jnp.stack([r for r, _ in per_leaf])
    valid = jnp.stack([v for _, v in per_leaf])
    n_leaves = jnp.sum(valid)
    coherence = jnp.sum(jnp.where(valid, ratios, 0)) / jnp.maximum(n_leaves, 1).astype(dtype)
    rate = jnp.asarray(sync_rate, dtype)
    return jnp.where(n_leaves > 0, jnp.maximum(1 - coherence, rate), rate)


def scout(
    inner: optax.GradientTransformation,
    sync_rate: jax.typing.ArrayLike = 0.5,
    sync_period: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Scout: Lookahead whose sync rate grows when the fast updates disagree.

    Like :func:`lookahead`, but at each sync the rate is computed from the
    :math:`k` inner updates :math:`U_1, \dots, U_k` of the window. Per leaf and
    element,

    .. math::
      \begin{align*}
        r &\leftarrow \frac{\mathrm{std}_{unbiased}(U)}{\max_i |U_i - \bar U|} \\
        s_{leaf} &\leftarrow \operatorname{mean}_{\text{valid elements}} r, \qquad
        C \leftarrow \operatorname{mean}_{\text{valid leaves}} s_{leaf} \\
        \rho' &\leftarrow \max(1 - C, \rho)
      \end{align*}

    then the Lookahead sync :math:`\phi \leftarrow \phi + \rho'(\theta + u - \phi)`
    and the fast weights are reset onto :math:`\phi`. Elements whose updates are
    constant over the window (max deviation 0) are left out, and so are leaves
    without any valid element (every leaf weighs the same in :math:`C`); if
    nothing is valid (e.g. :math:`k = 1`), :math:`\rho' = \rho`. Since
    :math:`r \ge \sqrt{k}/(k-1)`, :math:`1 - C \le 1 - \sqrt{k}/(k-1)`
    (:math:`\approx 0.51` at :math:`k = 6`): at the defaults the rate is at most
    slightly above ``sync_rate``; the adaptive term matters for small
    ``sync_rate``. The statistics are accumulated on the fly (Welford mean and
    squared deviations, running extrema: four param-shaped arrays) instead of
    storing the :math:`k` updates.

    Static args for :func:`optax.inject_hyperparams`: ``sync_period`` when
    passed (``inner``, a transformation, passes through as a static value;
    ``sync_rate`` is injectable).

    .. warning::
      holocron 0.3.0 divides by a zero max deviation for any element whose
      updates are constant over the window (a zero gradient, a frozen entry) and
      for ``sync_period=1``; its coherence is then NaN, ``max(NaN, rate)`` is
      NaN, the slow weights freeze and the fast weights revert to them every
      :math:`k` steps. This function leaves such elements out (NaN-safe
      coherence). On windows without constant elements it matches holocron.

    Args:
      inner: The fast optimizer.
      sync_rate: Minimal slow-weight step :math:`\rho \in [0, 1]`.
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
      >>> solver = lowrank.scout(optax.adam(0.1), sync_rate=0.5, sync_period=2)
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

      Fernandez, `Holocron <https://github.com/frgfm/Holocron>`_ (``holocron.optim.Scout``)
    """
    checks.sync_rate(sync_rate)
    period = checks.sync_period(6 if sync_period is None else sync_period)
    validation.check_transformation("inner", inner)
    inner = optax.with_extra_args_support(inner)

    # Branches are built once (stable identities keep eager ``lax.cond`` cached).
    def sync(operands: tuple[Any, Any, Any, Any]) -> tuple[Any, Any]:
        slow, params, fast, stats = operands
        return sync_towards(slow, params, fast, coherence_rate(*stats, period, sync_rate))

    def skip(operands: tuple[Any, Any, Any, Any]) -> tuple[Any, Any]:
        slow, _, fast, _ = operands
        return fast, slow

    def init_fn(params: Any) -> ScoutState:
        zeros = [optax.tree.zeros_like(params) for _ in range(4)]
        return ScoutState(jnp.zeros([], jnp.int32), copy_params(params), inner.init(params), *zeros)

    def update_fn(
        updates: Any, state: ScoutState, params: Any = None, **extra_args: Any
    ) -> tuple[Any, ScoutState]:
        validation.require_params(params)
        fast, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        position = state.count % period + 1
        stats = accumulate(state, fast, position)

        operands = (state.slow, params, fast, stats)
        emitted, slow = jax.lax.cond(position == period, sync, skip, operands)
        count = optax.safe_int32_increment(state.count)
        return emitted, ScoutState(count, slow, inner_state, *stats)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
