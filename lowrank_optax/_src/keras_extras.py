"""Pieces behind the Keras-style options of ``galore_adamw`` (clipnorm, EMA).

:func:`keras_preprocessing` and :func:`keras_wrappers` validate the options and
build the pieces in Keras's order, so that any alias can offer them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lowrank_optax._src import validation as v


def clip_by_leaf_norm(max_norm: jax.typing.ArrayLike) -> optax.GradientTransformation:
    r"""Clips every leaf to an L2 norm of at most ``max_norm`` (Keras ``clipnorm``).

    .. math::

      g \leftarrow g \cdot \min\left(1, \frac{c}{\lVert g \rVert_2}\right)

    Unlike :func:`optax.clip_by_global_norm` each leaf is clipped by its own norm;
    a zero leaf stays zero.

    Static args for :func:`optax.inject_hyperparams`: none (``max_norm`` is
    injectable).

    Args:
      max_norm: the largest allowed norm :math:`c > 0` of each leaf.

    Returns:
      The corresponding :class:`optax.GradientTransformation` (stateless).

    Examples:
      >>> import jax.numpy as jnp
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.clip_by_leaf_norm(1.0)
      >>> updates, _ = tx.update({'a': jnp.array([3.0, 4.0])}, tx.init(None))
      >>> print(updates['a'])
      [0.6 0.8]

    References:
      Chollet et al, `Keras optimizers: clipnorm
      <https://keras.io/api/optimizers/>`_, 2015
    """
    v.check_positive("max_norm", max_norm)

    def clip(g: jax.Array) -> jax.Array:
        norm = jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32))))
        factor = jnp.minimum(1.0, max_norm / jnp.where(norm > 0, norm, 1.0))
        return (g * factor).astype(g.dtype)

    return optax.stateless(lambda updates, params=None: jax.tree.map(clip, updates))


class ParamEmaState(NamedTuple):
    """State of :func:`param_ema`.

    Attributes:
      count: number of completed steps (int32 scalar).
      ema: exponential moving average of the parameters after each update.
      inner_state: state of the wrapped transformation.
    """

    count: jax.Array
    ema: optax.Params
    inner_state: optax.OptState


def param_ema(
    inner: optax.GradientTransformation,
    momentum: jax.typing.ArrayLike = 0.99,
    overwrite_frequency: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Keeps an EMA of the parameters; optionally overwrites them with it (Keras ``use_ema``).

    After the inner update :math:`u`, with :math:`p' = p + u`:

    .. math::

      \mathrm{ema} \leftarrow \begin{cases} p' & \text{first step} \\
        m\,\mathrm{ema} + (1-m)\,p' & \text{otherwise} \end{cases}

    If ``overwrite_frequency`` is :math:`k` and the step number (from 1) is a
    multiple of :math:`k`, the emitted update is :math:`\mathrm{ema} - p`, so the
    parameters become the EMA (Keras 3's ``ema_overwrite_frequency``). With
    ``None`` the parameters are never overwritten; read the average with
    :func:`ema_params`.

    Static args for :func:`optax.inject_hyperparams`: ``overwrite_frequency`` when
    passed (``inner`` passes through as a static value; ``momentum`` is injectable).

    Args:
      inner: the transformation producing the updates.
      momentum: EMA momentum :math:`m \in [0, 1]`.
      overwrite_frequency: ``None`` or an integer :math:`k \geq 1`.

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs` (params
      required).

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.param_ema(optax.sgd(0.1), momentum=0.9)
      >>> params = jnp.array([1.0, -2.0])
      >>> state = tx.init(params)
      >>> for _ in range(5):
      ...   updates, state = tx.update(2 * params, state, params)
      ...   params = optax.apply_updates(params, updates)
      >>> print('Objective function: {:.2f}'.format(jnp.sum(params**2)))
      Objective function: 0.54

    References:
      Chollet et al, `Keras 3 optimizers (use_ema)
      <https://keras.io/api/optimizers/>`_, 2023
    """
    v.check_transformation("inner", inner)
    v.check_range("momentum", momentum, low=0.0, high=1.0)
    overwrite_frequency = v.check_optional_int("overwrite_frequency", overwrite_frequency)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: optax.Params) -> ParamEmaState:
        return ParamEmaState(
            jnp.zeros([], jnp.int32), optax.tree.zeros_like(params), inner.init(params)
        )

    def update_fn(
        updates: optax.Updates,
        state: ParamEmaState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, ParamEmaState]:
        v.require_params(params)
        updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        new_params = optax.apply_updates(params, updates)
        first = state.count == 0
        m = jnp.where(first, 0.0, momentum)
        ema = jax.tree.map(
            lambda e, p: (m * e + (1 - m) * p).astype(e.dtype), state.ema, new_params
        )
        count = optax.safe_increment(state.count)
        if overwrite_frequency is not None:
            overwrite = count % overwrite_frequency == 0
            updates = jax.tree.map(
                lambda u, e, p: jnp.where(overwrite, (e - p).astype(u.dtype), u),
                updates,
                ema,
                params,
            )
        return updates, ParamEmaState(count, ema, inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def ema_params(state: optax.OptState) -> optax.Params:
    """Returns the parameter EMA held by the (first) :func:`param_ema` in ``state``.

    Args:
      state: an optimizer state containing a :class:`ParamEmaState` anywhere
        (for example the state of ``galore_adamw(..., use_ema=True)``).

    Returns:
      The EMA of the parameters, with the parameters' structure.

    Raises:
      ValueError: if ``state`` holds no :class:`ParamEmaState`.
    """
    found = [
        x
        for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, ParamEmaState))
        if isinstance(x, ParamEmaState)
    ]
    if not found:
        raise ValueError("`state` contains no ParamEmaState (was use_ema/param_ema used?).")
    return found[0].ema


def keras_preprocessing(
    *,
    loss_scale_factor: jax.typing.ArrayLike | None = None,
    clipnorm: jax.typing.ArrayLike | None = None,
    clipvalue: jax.typing.ArrayLike | None = None,
    global_clipnorm: jax.typing.ArrayLike | None = None,
) -> list[optax.GradientTransformation]:
    """Keras's gradient preprocessing as the first pieces of a chain (validated).

    ``loss_scale_factor`` → ``optax.scale(1/loss_scale_factor)``, then at most one
    of ``clipnorm`` → :func:`clip_by_leaf_norm`, ``clipvalue`` → :func:`optax.clip`,
    ``global_clipnorm`` → :func:`optax.clip_by_global_norm`; ``None`` = off.

    Raises:
      ValueError: on a non-positive value or more than one clipping option.
    """
    clips = [c for c in (clipnorm, clipvalue, global_clipnorm) if c is not None]
    if len(clips) > 1:
        raise ValueError(
            "Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. "
            f"Received: clipnorm={clipnorm}, clipvalue={clipvalue}, "
            f"global_clipnorm={global_clipnorm}"
        )
    named = {
        "loss_scale_factor": loss_scale_factor,
        "clipnorm": clipnorm,
        "clipvalue": clipvalue,
        "global_clipnorm": global_clipnorm,
    }
    for name, value in named.items():
        if value is not None:
            v.check_positive(name, value)
    pieces: list[optax.GradientTransformation] = []
    if loss_scale_factor is not None:
        pieces.append(optax.scale(1.0 / loss_scale_factor))
    if clipnorm is not None:
        pieces.append(clip_by_leaf_norm(clipnorm))
    if clipvalue is not None:
        pieces.append(optax.clip(clipvalue))
    if global_clipnorm is not None:
        pieces.append(optax.clip_by_global_norm(global_clipnorm))
    return pieces


def keras_wrappers(
    tx: optax.GradientTransformationExtraArgs,
    *,
    use_ema: bool = False,
    ema_momentum: jax.typing.ArrayLike = 0.99,
    ema_overwrite_frequency: int | None = None,
    gradient_accumulation_steps: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Keras's EMA and gradient accumulation around ``tx`` (validated).

    ``use_ema`` → :func:`param_ema` (inside), ``gradient_accumulation_steps`` →
    :class:`optax.MultiSteps` (outermost, with extra-args support).

    Raises:
      ValueError: on ``ema_momentum`` outside ``[0, 1]``, a non-integer or
        non-positive ``ema_overwrite_frequency``, or ``gradient_accumulation_steps``
        that is not an integer ``>= 2``.
    """
    if gradient_accumulation_steps is not None:
        v.check_int("gradient_accumulation_steps", gradient_accumulation_steps, minimum=2)
    v.check_range("ema_momentum", ema_momentum, low=0.0, high=1.0)
    v.check_optional_int("ema_overwrite_frequency", ema_overwrite_frequency)
    if use_ema:
        tx = param_ema(tx, ema_momentum, ema_overwrite_frequency)
    if gradient_accumulation_steps is not None:
        accumulate = optax.MultiSteps(tx, every_k_schedule=gradient_accumulation_steps)
        tx = optax.with_extra_args_support(accumulate.gradient_transformation())
    return tx
