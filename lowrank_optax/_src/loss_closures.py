"""``value_fn``/``grad_fn`` extra arguments built from a loss and a minibatch.

Transformations that evaluate the loss themselves (:func:`zo_sam_perturb`,
:func:`lorenza`) take ``value_fn(params) -> loss`` and ``grad_fn(params) ->
grads`` as extra arguments of ``update``. Both close over the current minibatch
and are built inside the user's jitted step. The helpers return a ``dict`` meant
to be splatted into ``update``: ``tx.update(grads, state, params, **fns)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax


def _loss_only(out: Any, has_aux: bool) -> Any:
    if not has_aux:
        return out
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise ValueError(
            "With `has_aux=True` the loss function must return a pair (loss, aux), "
            f"got {type(out).__name__}."
        )
    return out[0]


def _fill_masked(params: Any, full_params: Any) -> Any:
    """``params`` with its :class:`optax.MaskedNode` placeholders taken from ``full_params``."""

    def is_masked(x: Any) -> bool:
        return isinstance(x, optax.MaskedNode)

    return jax.tree.map(
        lambda p, f: f if is_masked(p) else p, params, full_params, is_leaf=is_masked
    )


def make_value_and_grad_fns(
    loss_fn: Callable[..., Any],
    *args: Any,
    has_aux: bool = False,
    full_params: Any | None = None,
    **kwargs: Any,
) -> dict[str, Callable[[Any], Any]]:
    r"""Builds ``value_fn``/``grad_fn`` closures over a minibatch (plain JAX, Linen).

    With ``loss_fn(params, *args, **kwargs)`` returning a scalar loss (or
    ``(loss, aux)`` when ``has_aux``), returns

    .. math::

      \mathrm{value\_fn}(p) = \mathrm{loss\_fn}(p, \mathrm{args}), \qquad
      \mathrm{grad\_fn} = \nabla_p\, \mathrm{value\_fn}.

    Build it inside the jitted training step, on the step's minibatch, and pass
    it to ``tx.update(grads, state, params, **fns)``. Flax Linen's
    ``TrainState.apply_gradients`` forwards no extra arguments, so Linen loops call
    ``state.tx.update`` themselves (see the LORENZA guide). Auxiliary outputs are
    dropped (``value_fn`` returns the loss only).

    Inside :func:`optax.masked` or :func:`optax.multi_transform` (e.g.
    ``optax.masked(lowrank.lorenza(...), mask)``) the transformation sees the
    parameters with :class:`optax.MaskedNode` placeholders for the leaves it
    does not own; pass ``full_params=params`` and ``value_fn`` takes those leaves
    from ``params`` (they are not perturbed), while ``grad_fn`` returns
    gradients of the owned leaves only (placeholders elsewhere), as the
    masked transformation expects.

    Args:
      loss_fn: ``loss_fn(params, *args, **kwargs)``; params first.
      *args: the minibatch and any other positional arguments after params.
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
      full_params: the full parameters, when the transformation runs inside
        :func:`optax.masked` / :func:`optax.multi_transform`: ``value_fn`` then
        fills :class:`optax.MaskedNode` placeholders of its argument from them.
      **kwargs: keyword arguments for ``loss_fn``.

    Returns:
      ``{'value_fn': value_fn, 'grad_fn': grad_fn}``.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import lowrank_optax as lowrank
      >>> def loss_fn(params, x, y):
      ...   return jnp.mean((x @ params['w'] - y) ** 2)
      >>> params = {'w': jnp.zeros((3, 2))}
      >>> x, y = jnp.ones((8, 3)), jnp.ones((8, 2))
      >>> tx = lowrank.lorenza(1e-1, rank=1)
      >>> state = tx.init(params)
      >>> @jax.jit
      ... def step(params, state, x, y):
      ...   fns = lowrank.make_value_and_grad_fns(loss_fn, x, y)
      ...   grads = fns['grad_fn'](params)
      ...   updates, state = tx.update(grads, state, params, **fns)
      ...   return optax.apply_updates(params, updates), state
      >>> for _ in range(5):
      ...   params, state = step(params, state, x, y)
      >>> print('Objective function: {:.2f}'.format(loss_fn(params, x, y)))
      Objective function: 0.00
    """

    def value_fn(params: Any) -> Any:
        if full_params is not None:
            params = _fill_masked(params, full_params)
        return _loss_only(loss_fn(params, *args, **kwargs), has_aux)

    return {"value_fn": value_fn, "grad_fn": jax.grad(value_fn)}


def make_nnx_value_and_grad_fns(
    loss_fn: Callable[..., Any],
    model: Any,
    *args: Any,
    wrt: Any = None,
    has_aux: bool = False,
    **kwargs: Any,
) -> dict[str, Callable[[Any], Any]]:
    r"""Builds ``value_fn``/``grad_fn`` for ``nnx.Optimizer.update`` from a module loss.

    ``nnx.Optimizer.update(model, grads, **kwargs)`` forwards its keyword
    arguments to ``tx.update`` together with the parameters as a pure
    ``nnx.State`` (the variables selected by ``wrt``). This helper splits ``model``
    into ``(graphdef, params, rest)`` and returns

    .. math::

      \mathrm{value\_fn}(s) =
        \mathrm{loss\_fn}(\mathrm{merge}(\mathrm{graphdef}, s, \mathrm{rest}),
        \mathrm{args}), \qquad \mathrm{grad\_fn} = \nabla_s\,\mathrm{value\_fn}.

    Each evaluation merges a fresh copy of the module, so every call sees the
    same non-parameter state (``rest``: batch statistics, RNG counters, ...) and
    mutations made during the forward pass are discarded: the finite differences
    compare the loss at two points with everything else fixed (same dropout
    mask). Build it inside the jitted step, on the step's minibatch.

    Args:
      loss_fn: ``loss_fn(model, *args, **kwargs)``; the module first.
      model: the ``nnx.Module`` being trained (its current parameters are not
        used by the closures, only its structure and non-parameter state).
      *args: the minibatch and any other positional arguments after the module.
      wrt: the variable filter of the optimizer (default ``nnx.Param``).
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
      **kwargs: keyword arguments for ``loss_fn``.

    Returns:
      ``{'value_fn': value_fn, 'grad_fn': grad_fn}``, functions of an
      ``nnx.State`` of the ``wrt`` variables.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import lowrank_optax as lowrank
      >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
      >>> optimizer = nnx.Optimizer(model, lowrank.lorenza(1e-1, rank=1), wrt=nnx.Param)
      >>> loss_fn = lambda m, x, y: jnp.mean((m(x) - y) ** 2)
      >>> x, y = jnp.ones((8, 3)), jnp.ones((8, 2))
      >>> @nnx.jit
      ... def step(model, optimizer, x, y):
      ...   fns = lowrank.make_nnx_value_and_grad_fns(loss_fn, model, x, y)
      ...   grads = nnx.grad(loss_fn)(model, x, y)
      ...   optimizer.update(model, grads, **fns)
      >>> for _ in range(5):
      ...   step(model, optimizer, x, y)
      >>> print('Objective function: {:.2f}'.format(loss_fn(model, x, y)))
      Objective function: 0.04
    """
    from flax import nnx

    wrt = nnx.Param if wrt is None else wrt
    graphdef, _, rest = nnx.split(model, wrt, ...)

    def value_fn(params: Any) -> Any:
        merged = nnx.merge(graphdef, params, rest, copy=True)
        return _loss_only(loss_fn(merged, *args, **kwargs), has_aux)

    return {"value_fn": value_fn, "grad_fn": jax.grad(value_fn)}
