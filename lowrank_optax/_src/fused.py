"""Fused per-layer updates: the optimizer runs inside the backward scan of stacked layers.

For layers stacked along a leading axis ``L`` and run with :func:`jax.lax.scan`,
the ordinary training step materialises the whole stacked gradient (one buffer
the size of the stacked parameters) before ``tx.update`` runs. Here the scanned
block is a :func:`jax.custom_vjp` function whose backward rule is a reverse scan
that, for layer ``l``, takes the layer's VJP, runs ``tx.update`` on that layer's
gradient with that layer's slice of the optimizer state, and writes the new
parameter and state slices in place. The new values leave the backward pass as
the "cotangents" of the parameter and state inputs; :func:`fused_value_and_grad`
and :func:`fused_train_step` hide this so that users never handle cotangents.

Integer state leaves (step counters, PRNG keys, the accumulation counter) cannot
carry cotangents (their tangent type is ``float0``), so while differentiating
they travel as exact float32 pairs of 16-bit halves (:func:`_encode_ints`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.custom_derivatives import SymbolicZero
from jax.extend.core import Literal

from lowrank_optax._src import validation as v
from lowrank_optax._src.subspace_accumulation import _accumulating_projections, _is_projection

LayerFn = Callable[..., Any]


class FusedLayersState(NamedTuple):
    """State of the per-layer optimizer of a :class:`FusedLayers` block.

    Attributes:
      layer_state: ``jax.vmap(tx.init)(stacked_params)``: every leaf has the
        leading layer axis ``L``, and slice ``l`` is a complete state of ``tx``
        for layer ``l`` (its own step counter, its own copy of PRNG keys).
      acc_grads: running mean of the micro-batch gradients of every layer
        (leading axis ``L``, ``accumulator_dtype``) when
        ``accumulation_steps > 1``; ``()`` otherwise.
      mini_step: int32 scalar, index of the next micro-batch inside the
        accumulation window (always 0 when ``accumulation_steps == 1``).
    """

    layer_state: optax.OptState
    acc_grads: optax.Updates
    mini_step: jax.Array


class FusedTrainState(NamedTuple):
    """State of a :func:`fused_train_step`.

    Attributes:
      opt_state: state of the transformation applied to the non-block
        parameters (wrapped in :class:`optax.MultiSteps` when the block
        accumulates micro-batches).
      layers_state: the :class:`FusedLayersState` of the scanned block.
    """

    opt_state: optax.OptState
    layers_state: FusedLayersState


class FusedTrainStep(NamedTuple):
    """Pure ``init``/``step`` functions returned by :func:`fused_train_step`.

    Attributes:
      init: ``init(params, stacked_params) -> FusedTrainState``.
      step: ``step(params, stacked_params, state, *args) -> (params,
        stacked_params, state, value)`` with ``value`` the loss (or ``(loss,
        aux)`` with ``has_aux=True``). Jit it with ``donate_argnums=(0, 1, 2)``.
    """

    init: Callable[..., FusedTrainState]
    step: Callable[..., tuple[Any, Any, FusedTrainState, Any]]


# -- integer leaves as exact float carriers -------------------------------------


def _is_key(dtype: Any) -> bool:
    return jnp.issubdtype(dtype, jax.dtypes.prng_key)


def _encode_int(x: jax.Array) -> jax.Array:
    """An integer/bool/key array as float32 ``(..., w, 2)`` 16-bit halves (exact)."""
    if _is_key(x.dtype):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_ or x.dtype.itemsize < 4:
        x = x.astype(jnp.uint32 if x.dtype == jnp.bool_ else jnp.int32)
    words = jax.lax.bitcast_convert_type(x, jnp.uint32)
    if words.ndim == x.ndim:  # 32-bit
        words = words[..., None]
    hi = (words >> 16).astype(jnp.float32)
    lo = (words & 0xFFFF).astype(jnp.float32)
    return jnp.stack([hi, lo], axis=-1)


class _IntLike(NamedTuple):
    """Static description of an integer leaf (its key implementation for keys)."""

    dtype: Any
    impl: Any

    @staticmethod
    def of(x: Any) -> _IntLike:
        dtype = jnp.result_type(x)
        return _IntLike(dtype, jax.random.key_impl(x) if _is_key(dtype) else None)


def _decode_int(c: jax.Array, like: _IntLike) -> jax.Array:
    """Inverse of :func:`_encode_int` for a leaf described by ``like``."""
    words = (c[..., 0].astype(jnp.uint32) << 16) | c[..., 1].astype(jnp.uint32)
    if like.impl is not None:
        return jax.random.wrap_key_data(words[..., 0], impl=like.impl)
    dtype = jnp.dtype(like.dtype)
    if dtype == jnp.bool_:
        return words[..., 0] != 0
    if dtype.itemsize < 4:
        signed = jnp.issubdtype(dtype, jnp.signedinteger)
        wide = jax.lax.bitcast_convert_type(words[..., 0], jnp.int32 if signed else jnp.uint32)
        return wide.astype(dtype)
    if dtype.itemsize == 4:
        return jax.lax.bitcast_convert_type(words[..., 0], dtype)
    return jax.lax.bitcast_convert_type(words, dtype)


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


class _Split(NamedTuple):
    """A pytree split into its floating leaves and its other (integer) leaves."""

    treedef: Any
    is_float: tuple[bool, ...]
    int_likes: tuple[Any, ...]

    @staticmethod
    def of(tree: Any) -> tuple[_Split, list[Any], list[Any]]:
        leaves, treedef = jax.tree.flatten(tree)
        mask = tuple(_is_float(x) for x in leaves)
        floats = [x for x, f in zip(leaves, mask, strict=True) if f]
        ints = [x for x, f in zip(leaves, mask, strict=True) if not f]
        likes = tuple(_IntLike.of(x) for x in ints)
        return _Split(treedef, mask, likes), floats, ints

    def join(self, floats: Sequence[Any], ints: Sequence[Any]) -> Any:
        fi, ii = iter(floats), iter(ints)
        leaves = [next(fi) if f else next(ii) for f in self.is_float]
        return jax.tree.unflatten(self.treedef, leaves)


# -- per-layer slicing -----------------------------------------------------------


def _take(tree: Any, i: jax.Array) -> Any:
    return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), tree)


def _put(tree: Any, new: Any, i: jax.Array) -> Any:
    return jax.tree.map(
        lambda a, b: jax.lax.dynamic_update_index_in_dim(a, b.astype(a.dtype), i, 0), tree, new
    )


def _num_layers(stacked: Any) -> int:
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in jax.tree.leaves(stacked)}
    if not sizes or None in sizes or len(sizes) != 1:
        raise ValueError(
            "`stacked_params` must be a non-empty pytree whose leaves all have the same "
            f"leading layer axis L; got leading sizes {sorted(map(str, sizes))}."
        )
    return int(next(iter(sizes)))


# -- leaf-wise check -------------------------------------------------------------

_SUBJAXPR_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def _open(j: Any) -> Any:
    return j.jaxpr if hasattr(j, "jaxpr") and hasattr(j, "consts") else j


def _discrete(aval: Any) -> bool:
    dtype = getattr(aval, "dtype", None)
    return (
        dtype is not None and not jnp.issubdtype(dtype, jnp.inexact) and dtype != jax.dtypes.float0
    )


def _jaxpr_deps(jaxpr: Any, in_deps: list[frozenset], mixed: list[str]) -> list[frozenset]:
    """Which input groups each output of ``jaxpr`` depends on (conservative).

    Calls and ``cond`` are followed into their sub-jaxprs; any other primitive
    with sub-computations (``scan``, ``while``) makes every output depend on
    every input. Integer/boolean intermediates combining two or more groups are
    recorded in ``mixed`` (a discrete decision over several leaves, such as a
    finiteness test of the whole tree, is invisible to derivatives).
    """
    env: dict[Any, frozenset] = {}
    empty: frozenset = frozenset()
    for var, d in zip(jaxpr.invars, in_deps, strict=True):
        env[var] = d

    def read(a: Any) -> frozenset:
        return env.get(a, empty) if not isinstance(a, Literal) else empty

    for eqn in jaxpr.eqns:
        ins = [read(a) for a in eqn.invars]
        name = eqn.primitive.name
        outs: list[frozenset] | None = None
        if name == "cond":
            index, ops = ins[0], ins[1:]
            outs = [index] * len(eqn.outvars)
            for branch in eqn.params["branches"]:
                got = _jaxpr_deps(_open(branch), ops, mixed)
                outs = [a | b for a, b in zip(outs, got, strict=True)]
        else:
            for key in _SUBJAXPR_PARAMS:
                sub = eqn.params.get(key)
                if sub is None:
                    continue
                sub = _open(sub)
                if len(sub.invars) == len(ins) and len(sub.outvars) == len(eqn.outvars):
                    outs = _jaxpr_deps(sub, ins, mixed)
                break
        if outs is None:
            union = frozenset().union(*ins)
            outs = [union] * len(eqn.outvars)
        for var, d in zip(eqn.outvars, outs, strict=True):
            env[var] = d
            if len(d) > 1 and _discrete(var.aval):
                mixed.append(f"`{name}` ({var.aval.str_short()})")
    return [read(var) for var in jaxpr.outvars]


def _probe_params(params: Any, seed: int) -> Any:
    """Small random params with the structure, ranks and dtypes of ``params``."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), max(len(leaves), 1))
    out = []
    for k, x in zip(keys, leaves, strict=False):
        shape = tuple(min(d, 6) for d in jnp.shape(x))
        dtype = jnp.result_type(x)
        if jnp.issubdtype(dtype, jnp.inexact):
            out.append(jax.random.normal(k, shape, jnp.float32).astype(dtype))
        else:
            out.append(jnp.zeros(shape, dtype))
    return jax.tree.unflatten(treedef, out)


def check_leafwise(tx: optax.GradientTransformation, params: optax.Params) -> None:
    r"""Checks that ``tx`` updates each parameter leaf from that leaf alone.

    A transformation qualifies for :func:`fused_layers` when the update of every
    leaf (and every new state leaf) depends on the gradient and parameter of at
    most one leaf: then running it layer by layer, as each layer's gradient
    appears, is the same as running it once on the whole gradient. Adam, SGD,
    AdamW, :func:`galore_adamw`, :func:`galore` around a leaf-wise inner, and
    per-leaf clipping qualify; :func:`optax.clip_by_global_norm`, global trust
    ratios and :func:`optax.apply_if_finite` (one decision for the whole tree)
    do not.

    The check runs on a miniature copy of ``params`` (same structure, ranks and
    dtypes, every axis cut to at most 6) at the first step:

    * **derivatives**: for each leaf :math:`j`, one forward-mode derivative of
      ``tx.update`` with a random tangent on gradient :math:`j` and parameter
      :math:`j` only, at gradients of scale :math:`10^4` (so that norm clipping
      with any usual threshold is active). The update of leaf :math:`i \neq j`
      must not move (by a finite amount: a NaN derivative, e.g. of a square root
      at zero, carries no information); a new state leaf may move for one
      :math:`j` at most.
    * **discrete decisions**: the traced ``tx.update`` may not contain an
      integer or boolean value computed from two or more leaves (e.g. an
      all-finite test), which derivatives cannot see.

    It cannot see a cross-leaf dependency that only appears at later steps, at
    other scales, or through the optimizer state alone; such transformations
    are the user's responsibility.

    Args:
      tx: the transformation to check (called as ``tx.update(g, s, p)``,
        without extra arguments).
      params: parameters of ONE layer (arrays or ``jax.ShapeDtypeStruct``).

    Raises:
      ValueError: naming the leaves whose updates mix, or the mixing discrete
        operation, or saying that ``tx.update`` needs extra arguments.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> import lowrank_optax as lowrank
      >>> layer = {'w': jnp.ones((4, 3)), 'b': jnp.ones(3)}
      >>> lowrank.check_leafwise(optax.adamw(1e-3), layer)  # passes silently
      >>> try:
      ...   lowrank.check_leafwise(
      ...       optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)), layer)
      ... except ValueError as e:
      ...   print('rejected')
      rejected
    """
    probe = _probe_params(params, seed=0)
    leaves, treedef = jax.tree.flatten(probe)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(probe)[0]]
    floating = [jnp.issubdtype(x.dtype, jnp.inexact) for x in leaves]
    keys = jax.random.split(jax.random.PRNGKey(1), 3 * max(len(leaves), 1))
    grads = [
        (1e4 * jax.random.normal(keys[i], x.shape, jnp.float32)).astype(x.dtype) if f else x
        for i, (x, f) in enumerate(zip(leaves, floating, strict=True))
    ]
    state = tx.init(probe)

    def update(g: list[Any], p: list[Any]) -> tuple[Any, Any]:
        return tx.update(jax.tree.unflatten(treedef, g), state, jax.tree.unflatten(treedef, p))

    try:
        closed = jax.make_jaxpr(update)(grads, leaves)
    except (TypeError, ValueError) as e:
        raise ValueError(
            "lowrank.fused_layers runs `tx.update(grads, state, params)` inside the backward "
            "pass, one layer at a time, without extra arguments; this transformation failed "
            f"to trace that way ({type(e).__name__}: {e}). Transformations that need extra "
            "arguments (lowrank.lorenza's `value_fn`, curvature closures) cannot be fused; "
            "a probe-free equivalent such as lowrank.galore_adamw(..., projector="
            "'randomized') can."
        ) from e
    n = len(leaves)
    in_deps = [frozenset({i}) for i in range(n)] * 2
    mixed: list[str] = []
    _jaxpr_deps(closed.jaxpr, in_deps, mixed)
    if mixed:
        raise ValueError(
            "lowrank.fused_layers needs a leaf-wise transformation, but this one takes a "
            f"discrete decision from several leaves at once ({mixed[0]}): e.g. "
            "optax.clip_by_global_norm comparing the global norm with its threshold, or "
            "optax.apply_if_finite testing the whole tree. Inside the backward pass each "
            "layer is updated before the next layer's gradient exists. Use a per-leaf "
            "version (lowrank.clip_by_leaf_norm, optax.clip) or the unfused path."
        )

    out_struct = jax.eval_shape(update, grads, leaves)
    out_leaves = jax.tree.leaves(out_struct)
    n_updates = len(jax.tree.leaves(out_struct[0]))
    update_paths = [
        jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(out_struct[0])[0]
    ]
    state_paths = [
        "state" + jax.tree_util.keystr(p)
        for p, _ in jax.tree_util.tree_flatten_with_path(out_struct[1])[0]
    ]

    @jax.jit
    def tangent_of(j_g: list[Any], j_p: list[Any]) -> list[Any]:
        _, t = jax.jvp(update, (grads, leaves), (j_g, j_p))
        return [
            jnp.zeros((), bool)
            if getattr(x, "dtype", None) == jax.dtypes.float0
            else jnp.any(jnp.isfinite(x) & (x != 0))
            for x in jax.tree.leaves(t)
        ]

    def zero_tangent(x: Any) -> Any:
        if jnp.issubdtype(x.dtype, jnp.inexact):
            return jnp.zeros(x.shape, x.dtype)
        return np.zeros(x.shape, jax.dtypes.float0)

    movers: list[set[int]] = [set() for _ in out_leaves]
    for j in range(n):
        if not floating[j]:
            continue
        t_g = [zero_tangent(x) for x in grads]
        t_p = [zero_tangent(x) for x in leaves]
        t_g[j] = jax.random.normal(keys[n + j], grads[j].shape, jnp.float32).astype(grads[j].dtype)
        t_p[j] = jax.random.normal(keys[2 * n + j], leaves[j].shape, jnp.float32).astype(
            leaves[j].dtype
        )
        for k, moved in enumerate(tangent_of(t_g, t_p)):
            if bool(moved):
                movers[k].add(j)
    for k, js in enumerate(movers):
        if k < n_updates:
            others = sorted(js - {k}) if n_updates == n else sorted(js)[1:]
            if others:
                raise ValueError(
                    "lowrank.fused_layers needs a leaf-wise transformation: here the update "
                    f"of {update_paths[k]} depends on the gradient/parameter of "
                    f"{', '.join(paths[j] for j in others)}. Reductions across leaves "
                    "(optax.clip_by_global_norm, global trust ratios, global norms) need the "
                    "whole gradient, which the fused backward pass never holds. Use a per-leaf "
                    "version (lowrank.clip_by_leaf_norm, optax.clip, optax.clip_by_block_rms) "
                    "or the unfused path."
                )
        elif len(js) > 1:
            raise ValueError(
                "lowrank.fused_layers needs a leaf-wise transformation: the new state leaf "
                f"{state_paths[k - n_updates]} depends on the gradients/parameters of "
                f"{', '.join(paths[j] for j in sorted(js))}."
            )


def _check_subspace_accumulation(tx: optax.GradientTransformation, params: Any, k: int) -> None:
    """Checks that ``tx`` changes nothing but its projections for ``k - 1`` calls, then emits."""
    probe = _probe_params(params, seed=2)
    state = tx.init(probe)
    step = jax.jit(tx.update)
    keys = jax.random.split(jax.random.PRNGKey(3), k)
    for i in range(k):
        grads = jax.tree.map(
            lambda x, key=keys[i]: jax.random.normal(key, x.shape, jnp.float32).astype(x.dtype),
            probe,
        )
        updates, new_state = step(grads, state, probe)
        moved = any(bool(jnp.any(u != 0)) for u in jax.tree.leaves(updates))
        outside = jax.tree.leaves(
            jax.tree.map(
                lambda o, n: None if _is_projection(n) else bool(jnp.any(o != n)),
                state,
                new_state,
                is_leaf=_is_projection,
            )
        )
        if i < k - 1 and (moved or any(outside)):
            raise ValueError(
                "The per-layer transformation accumulates in the subspace "
                "(project_lowrank/galore with accumulation_steps > 1), but with "
                f"fused_layers(..., accumulation_steps={k}) it "
                + ("emitted an update" if moved else "advanced state outside the projection")
                + f" at micro-batch {i + 1}. Give fused_layers the same accumulation_steps as "
                "the projection, and wrap chains around it in lowrank.subspace_accumulation "
                "so that weight decay and schedules run once per update."
            )
        if i == k - 1 and not moved:
            raise ValueError(
                f"With fused_layers(..., accumulation_steps={k}) the per-layer transformation "
                f"emitted no update at micro-batch {k}: give fused_layers the same "
                "accumulation_steps as its project_lowrank/galore."
            )
        state = new_state


# -- the fused block -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FusedLayers:
    """A scanned stack of layers whose optimizer update runs in the backward pass.

    Built by :func:`fused_layers`; see there. Attributes are the constructor's
    arguments.
    """

    layer_fn: LayerFn
    tx: optax.GradientTransformation
    accumulation_steps: int = 1
    accumulator_dtype: Any = jnp.float32
    check: bool = True
    _checked: set = dataclasses.field(default_factory=set, compare=False, repr=False)

    def init(self, stacked_params: optax.Params) -> FusedLayersState:
        """Per-layer optimizer state: ``jax.vmap(tx.init)`` over the layer axis.

        Also checks (once, on a miniature copy of one layer) that ``tx`` is
        leaf-wise (:func:`check_leafwise`) unless ``check=False``.
        """
        _num_layers(stacked_params)
        layer_state = jax.vmap(self.tx.init)(stacked_params)
        in_subspace = bool(_accumulating_projections(layer_state))
        one = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), stacked_params)
        signature = (jax.tree.structure(one), tuple(jax.tree.leaves(one)))
        if signature not in self._checked:
            # The probes depend on shapes only: run them eagerly even under a trace.
            with jax.ensure_compile_time_eval():
                if self.check:
                    check_leafwise(self.tx, one)
                if in_subspace:
                    _check_subspace_accumulation(self.tx, one, self.accumulation_steps)
            self._checked.add(signature)
        if self.accumulation_steps > 1 and not in_subspace:
            acc = optax.tree.zeros_like(stacked_params, dtype=self.accumulator_dtype)
        else:
            acc = ()  # k = 1, or tx accumulates (rank-sized) in the subspace itself
        return FusedLayersState(layer_state, acc, jnp.zeros([], jnp.int32))

    def forward(self, stacked_params: optax.Params, x: Any, *args: Any) -> Any:
        """The plain scan ``x ← layer_fn(params[l], x, *args)`` for ``l = 0..L-1``.

        No optimizer is involved: use it for evaluation (and as the unfused
        reference). Differentiating it gives the ordinary stacked gradient.
        """
        _num_layers(stacked_params)
        return jax.lax.scan(lambda h, p: (self.layer_fn(p, h, *args), None), x, stacked_params)[0]

    # The custom-VJP block. ``floats``/``codes`` are the state's float leaves and
    # its encoded integer leaves; their cotangents are the new state.
    def _apply(
        self,
        split: _Split,
        stacked: Any,
        floats: list[Any],
        codes: list[Any],
        x: Any,
        args: tuple[Any, ...],
    ) -> Any:
        layer_fn, tx, k = self.layer_fn, self.tx, self.accumulation_steps
        num_layers = _num_layers(stacked)
        # Which argument leaves need a cotangent: floating ones the caller
        # differentiates (set by ``fwd`` from JAX's ``perturbed`` flags).
        diff_args: list[bool] = [_is_float(a) for a in jax.tree.leaves(args)]

        def scan_forward(stacked: Any, x: Any, args: tuple[Any, ...], keep: bool) -> Any:
            def body(h: Any, p: Any) -> tuple[Any, Any]:
                return layer_fn(p, h, *args), (h if keep else None)

            return jax.lax.scan(body, x, stacked)

        @jax.custom_vjp
        def block(stacked: Any, floats: Any, codes: Any, x: Any, args: Any) -> Any:
            return scan_forward(stacked, x, args, keep=False)[0]

        def fwd(stacked: Any, floats: Any, codes: Any, x: Any, args: Any) -> tuple[Any, Any]:
            primal = lambda t: jax.tree.map(  # noqa: E731
                lambda a: a.value, t, is_leaf=lambda a: hasattr(a, "perturbed")
            )
            flags = [
                a.perturbed
                for a in jax.tree.leaves(args, is_leaf=lambda a: hasattr(a, "perturbed"))
            ]
            diff_args[:] = [d and f for d, f in zip(diff_args, flags, strict=True)]
            stacked, floats, codes, x, args = map(primal, (stacked, floats, codes, x, args))
            y, inputs = scan_forward(stacked, x, args, keep=True)
            return y, (stacked, floats, codes, inputs, args)

        def bwd(res: Any, dy: Any) -> tuple[Any, ...]:
            stacked, floats, codes, inputs, args = res
            dy = jax.tree.map(
                lambda t: (
                    jnp.zeros(t.aval.shape, t.aval.dtype) if isinstance(t, SymbolicZero) else t
                ),
                dy,
                is_leaf=lambda t: isinstance(t, SymbolicZero),
            )
            ints = [_decode_int(c, like) for c, like in zip(codes, split.int_likes, strict=True)]
            state: FusedLayersState = split.join(floats, ints)
            mini_step = state.mini_step
            own_acc = bool(jax.tree.leaves(state.acc_grads))
            arg_leaves, arg_def = jax.tree.flatten(args)

            def layer_step(
                i: jax.Array, stacked: Any, layer_state: Any, acc: Any, dx: Any
            ) -> tuple[Any, ...]:
                p, s, h = _take(stacked, i), _take(layer_state, i), _take(inputs, i)
                float_args = [a for a, d in zip(arg_leaves, diff_args, strict=True) if d]

                def run(p: Any, h: Any, fa: list[Any]) -> Any:
                    it = iter(fa)
                    leaves = [
                        next(it) if d else a for a, d in zip(arg_leaves, diff_args, strict=True)
                    ]
                    return layer_fn(p, h, *jax.tree.unflatten(arg_def, leaves))

                _, vjp = jax.vjp(run, p, h, float_args)
                g, dx, d_args = vjp(dx)
                if not own_acc:  # k = 1, or tx accumulates in the subspace itself
                    u, s = tx.update(g, s, p)
                    return optax.apply_updates(p, u), s, (), dx, d_args
                a = _take(acc, i)
                a = jax.tree.map(
                    lambda gi, ai: ai + (gi.astype(ai.dtype) - ai) / (mini_step + 1), g, a
                )

                def emit() -> tuple[Any, Any, Any]:
                    u, s2 = tx.update(optax.tree.cast_like(a, g), s, p)
                    return optax.apply_updates(p, u), s2, optax.tree.zeros_like(a)

                p2, s2, a2 = jax.lax.cond(mini_step == k - 1, emit, lambda: (p, s, a))
                return p2, s2, a2, dx, d_args

            def skip(i: jax.Array, stacked: Any, layer_state: Any, acc: Any, dx: Any) -> Any:
                zeros = [jnp.zeros_like(a) for a, d in zip(arg_leaves, diff_args, strict=True) if d]
                a = _take(acc, i) if own_acc else ()
                return _take(stacked, i), _take(layer_state, i), a, dx, zeros

            def body(carry: Any, i: jax.Array) -> tuple[Any, None]:
                dx, stacked, layer_state, acc, d_args = carry
                # The cond is a fusion barrier: it reads the stacked buffers and
                # returns materialised slices, so the in-place updates below never
                # race with reads of other buffers (which would make XLA copy every
                # stacked buffer on every layer). Its predicate is always true.
                p2, s2, a2, dx, da = jax.lax.cond(
                    i >= 0, layer_step, skip, i, stacked, layer_state, acc, dx
                )
                stacked = _put(stacked, p2, i)
                layer_state = _put(layer_state, s2, i)
                acc = _put(acc, a2, i) if own_acc else acc
                d_args = [t + u for t, u in zip(d_args, da, strict=True)]
                return (dx, stacked, layer_state, acc, d_args), None

            d_args0 = [jnp.zeros_like(a) for a, d in zip(arg_leaves, diff_args, strict=True) if d]
            carry = (dy, stacked, state.layer_state, state.acc_grads, d_args0)
            (dx, stacked, layer_state, acc, d_args), _ = jax.lax.scan(
                body, carry, jnp.arange(num_layers), reverse=True
            )
            new_state = FusedLayersState(layer_state, acc, (mini_step + 1) % k)
            _, new_floats, new_ints = _Split.of(new_state)
            new_codes = [_encode_int(x) for x in new_ints]
            it = iter(d_args)
            arg_cts = [next(it) if d else None for d in diff_args]
            return stacked, new_floats, new_codes, dx, jax.tree.unflatten(arg_def, arg_cts)

        block.defvjp(fwd, bwd, symbolic_zeros=True)
        return block(stacked, floats, codes, x, args)


def fused_layers(
    layer_fn: LayerFn,
    tx: optax.GradientTransformation,
    *,
    accumulation_steps: int = 1,
    accumulator_dtype: Any = jnp.float32,
    check_leafwise: bool = True,
) -> FusedLayers:
    r"""Fuses ``tx``'s per-layer update into the backward pass of a scanned layer stack.

    A stack of ``L`` identical layers with parameters stacked along a leading
    axis (``stacked_params`` leaves of shape ``(L, ...)``) runs forward as
    :math:`h_{l+1} = f(\theta_l, h_l, \text{args})`. The ordinary training step
    differentiates the whole scan, holds the stacked gradient
    :math:`(\nabla\theta_0, \dots, \nabla\theta_{L-1})` at once, then calls
    ``tx.update``. The fused block instead runs, in its backward reverse scan,

    .. math::

      \begin{align*}
        (g_l, \bar h_l) &= \mathrm{vjp}_{f}(\theta_l, h_l)(\bar h_{l+1}) \\
        (u_l, s_l') &= \mathrm{tx.update}(g_l, s_l, \theta_l), \quad
        \theta_l' = \theta_l + u_l,
      \end{align*}

    for :math:`l = L-1, \dots, 0`, writing :math:`\theta_l'` and :math:`s_l'` in
    place, so at most one layer's gradient exists at a time. The forward pass
    keeps each layer's input :math:`h_l` and the backward pass recomputes the
    layer (the memory of ``jax.checkpoint`` around each layer).

    **Per-layer state.** :meth:`FusedLayers.init` is ``jax.vmap(tx.init)`` over
    the layer axis: slice ``l`` is a complete state of ``tx`` for one layer.
    For element-wise transformations (Adam, SGD) the arrays equal those of
    ``tx.init(stacked_params)`` except that every scalar step counter becomes a
    vector of ``L`` equal counters. PRNG keys in the state are copied to every
    layer (all layers start from the same key and split it identically; a
    randomized projector then draws the same test matrix for every layer at a
    refresh, whereas the unfused path on a stacked leaf draws one per layer:
    same distribution, different numbers). ``tx`` sees one layer's parameters
    *without* the layer axis, so :func:`galore` projects 2-D per-layer kernels
    by default (the unfused stacked path needs ``dimension_numbers`` with the
    layer axis as a batch axis to do the same).

    **Which transformations qualify.** Those that update each leaf from that
    leaf alone (:func:`check_leafwise`): ``optax.adam``/``adamw``/``sgd``/
    ``lion``, :func:`galore_adamw`, :func:`galore` and :func:`project_lowrank`
    around such an inner, per-leaf clipping, the holocron element-wise
    optimizers, and per-leaf trust ratios (``optax.lamb``,
    :func:`lars`), which then act per layer, as for unstacked layers, not on
    the whole stacked leaf. Not :func:`optax.clip_by_global_norm`, global trust
    ratios, :func:`optax.apply_if_finite`, transformations needing extra
    arguments (:func:`lorenza`'s ``value_fn``; its probe-free form
    ``galore_adamw(..., projector='randomized')`` qualifies) or LRE with blocks
    spanning several leaves: :meth:`FusedLayers.init` raises ``ValueError``.

    **Gradient accumulation** (``accumulation_steps = k > 1``), two ways; in
    both, step counters, schedules and refresh clocks advance once per update
    (every k-th micro-batch), and the other micro-batches leave the parameters
    and everything but the accumulators untouched:

    * any ``tx``: each call of the block's backward adds the layer's gradient
      to a running mean kept in the state (full size, as
      :class:`optax.MultiSteps` does, in ``accumulator_dtype``) and
      ``tx.update`` runs once on the mean. The result equals
      ``optax.MultiSteps(tx, k)`` on the unfused path.
    * **in the subspace**: when ``tx`` contains
      ``project_lowrank(..., accumulation_steps=k)`` / ``galore(...,
      accumulation_steps=k)`` (chains around it wrapped in
      :func:`subspace_accumulation`), the block keeps no accumulator of its
      own: ``tx`` runs on every micro-batch and averages the rank-sized
      coordinates :math:`P^\top G_l` itself. At a refresh update the basis comes
      from the first micro-batch. :meth:`FusedLayers.init` checks that ``tx``
      emits exactly every k-th call.

    Use :func:`fused_value_and_grad` or :func:`fused_train_step` to train;
    :meth:`FusedLayers.forward` evaluates the block without an optimizer.

    Args:
      layer_fn: pure layer function ``layer_fn(layer_params, x, *args) -> x``;
        ``x`` (a pytree of floating arrays) keeps its structure and shapes,
        ``args`` are the same for every layer (masks, positions); floating
        ``args`` receive summed cotangents. It must not close over traced
        values (pass them through ``args``).
      tx: the per-layer transformation (called as ``tx.update(g, s, p)``).
      accumulation_steps: micro-batches per optimizer update, ``k >= 1``.
      accumulator_dtype: dtype of the running mean when ``k > 1``.
      check_leafwise: run :func:`check_leafwise` at ``init``.

    Returns:
      A :class:`FusedLayers` with ``init(stacked_params)`` and
      ``forward(stacked_params, x, *args)``.

    Raises:
      TypeError: ``tx`` is not a gradient transformation.
      ValueError: ``layer_fn`` is not callable or ``accumulation_steps < 1``.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import lowrank_optax as lowrank
      >>> def layer(p, x):
      ...   return x + jnp.tanh(x @ p['w'])
      >>> stacked = {'w': 0.1 * jnp.ones((3, 4, 4))}   # 3 layers
      >>> layers = lowrank.fused_layers(layer, optax.adam(1e-2))
      >>> state = layers.init(stacked)
      >>> def loss_fn(params, blocks, x):
      ...   return jnp.sum(blocks(x) ** 2)
      >>> step = jax.jit(lowrank.fused_value_and_grad(loss_fn, layers))
      >>> x = jnp.ones((2, 4))
      >>> for _ in range(5):
      ...   loss, _, stacked, state = step({}, stacked, state, x)
      >>> print('Objective function: {:.2f}'.format(loss))
      Objective function: 28.13

    References:
      Zhao et al, `GaLore: Memory-Efficient LLM Training by Gradient Low-Rank
      Projection <https://arxiv.org/abs/2403.03507>`_, 2024 (per-layer weight
      updates)

      Lv et al, `Full Parameter Fine-tuning for Large Language Models with
      Limited Resources <https://arxiv.org/abs/2306.09782>`_, 2023 (LOMO: the
      update fused into the backward pass)
    """
    if not callable(layer_fn):
        raise ValueError(f"`layer_fn` must be callable, got {layer_fn!r}.")
    v.check_transformation("tx", tx)
    k = v.check_int("accumulation_steps", accumulation_steps, minimum=1)
    return FusedLayers(layer_fn, tx, k, jnp.dtype(accumulator_dtype), bool(check_leafwise))


def fused_value_and_grad(
    loss_fn: Callable[..., Any], layers: FusedLayers, *, has_aux: bool = False
) -> Callable[..., tuple[Any, Any, Any, FusedLayersState]]:
    r"""``jax.value_and_grad`` for a loss whose scanned block updates itself.

    ``loss_fn(params, blocks, *args)`` computes the loss from the non-block
    parameters ``params`` and calls ``blocks(x, *layer_args)`` exactly once
    to run the stacked layers. The returned function

    ``fn(params, stacked_params, layers_state, *args) -> (value, grads,
    new_stacked_params, new_layers_state)``

    differentiates ``loss_fn`` once: ``grads`` is the gradient for ``params``
    (apply your optimizer to it), while the block's parameters and optimizer
    state come back already updated by ``layers.tx`` layer by layer during the
    backward pass (their stacked gradient never exists). ``value`` is the loss,
    or ``(loss, aux)`` with ``has_aux=True``.

    Jit ``fn`` (or the step using it) and donate ``stacked_params`` and
    ``layers_state`` so the in-place updates reuse their buffers.

    .. warning::
      ``blocks`` must be called exactly once, and ``stacked_params`` used
      nowhere else in ``loss_fn`` (their "gradient" is the new parameters);
      a second call raises ``ValueError``. The data-parallel mean of the
      gradient must happen inside the block (under :func:`jax.jit` with sharded
      batches XLA does this); under ``pmap``/``shard_map`` with manual
      ``pmean`` the fused path is not supported.

    Args:
      loss_fn: ``loss_fn(params, blocks, *args) -> loss`` (or ``(loss, aux)``).
      layers: the :class:`FusedLayers` block (from :func:`fused_layers`).
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``.

    Returns:
      ``fn(params, stacked_params, layers_state, *args)`` as described above.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import lowrank_optax as lowrank
      >>> layers = lowrank.fused_layers(lambda p, x: x @ p['w'], optax.sgd(0.1))
      >>> stacked = {'w': jnp.stack([jnp.eye(2)] * 2)}
      >>> params = {'head': jnp.ones(2)}
      >>> def loss_fn(params, blocks, x):
      ...   return jnp.sum(blocks(x) * params['head'])
      >>> fn = lowrank.fused_value_and_grad(loss_fn, layers)
      >>> loss, grads, stacked, state = fn(params, stacked, layers.init(stacked), jnp.ones(2))
      >>> print(loss, grads['head'], stacked['w'][0, 0])
      2.0 [1. 1.] [ 0.9 -0.1]
    """
    if not isinstance(layers, FusedLayers):
        raise ValueError(f"`layers` must come from lowrank.fused_layers, got {layers!r}.")

    def fn(
        params: Any, stacked: Any, layers_state: FusedLayersState, *args: Any
    ) -> tuple[Any, Any, Any, FusedLayersState]:
        split, floats, ints = _Split.of(layers_state)
        codes = [_encode_int(x) for x in ints]
        calls: list[int] = []

        def differentiable(params: Any, stacked: Any, floats: Any, codes: Any) -> Any:
            def blocks(x: Any, *layer_args: Any) -> Any:
                calls.append(1)
                if len(calls) > 1:
                    raise ValueError(
                        "`blocks` was called more than once in loss_fn: the fused block "
                        "returns its updated parameters as its gradient, so it must run "
                        "exactly once per differentiation."
                    )
                return layers._apply(split, stacked, floats, codes, x, layer_args)

            return loss_fn(params, blocks, *args)

        value, (grads, new_stacked, new_floats, new_codes) = jax.value_and_grad(
            differentiable, argnums=(0, 1, 2, 3), has_aux=has_aux
        )(params, stacked, floats, codes)
        if not calls:
            raise ValueError("loss_fn never called `blocks`: the fused block did not run.")
        new_ints = [
            _decode_int(c, like) for c, like in zip(new_codes, split.int_likes, strict=True)
        ]
        return value, grads, new_stacked, split.join(new_floats, new_ints)

    return fn


def fused_train_step(
    loss_fn: Callable[..., Any],
    layers: FusedLayers,
    tx: optax.GradientTransformation,
    *,
    has_aux: bool = False,
) -> FusedTrainStep:
    r"""A whole training step: fused block updates plus ``tx`` for the other params.

    ``loss_fn(params, blocks, *args)`` is as in :func:`fused_value_and_grad`.
    ``step(params, stacked_params, state, *args)`` runs one forward and one
    backward pass; the block's layers are updated by ``layers.tx`` during the
    backward pass and the remaining parameters (embeddings, head, final norm)
    by ``tx`` afterwards, on their ordinary gradient. With
    ``layers.accumulation_steps = k > 1``, ``tx`` is wrapped in
    ``optax.MultiSteps(tx, k)`` so both parts update on the same micro-batches.

    Args:
      loss_fn: ``loss_fn(params, blocks, *args) -> loss`` (or ``(loss, aux)``).
      layers: the fused block (:func:`fused_layers`).
      tx: transformation for ``params`` (need not be leaf-wise).
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``.

    Returns:
      A :class:`FusedTrainStep` ``(init, step)``; jit ``step`` with
      ``donate_argnums=(0, 1, 2)``.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import lowrank_optax as lowrank
      >>> layers = lowrank.fused_layers(
      ...     lambda p, x: x + jnp.tanh(x @ p['w']), lowrank.galore_adamw(1e-2, rank=2))
      >>> train = lowrank.fused_train_step(
      ...     lambda params, blocks, x: jnp.mean((blocks(x) @ params['head']) ** 2),
      ...     layers, optax.adamw(1e-2))
      >>> params = {'head': jnp.ones((4, 1))}
      >>> stacked = {'w': 0.3 * jnp.cos(jnp.arange(48.0) ** 2).reshape(3, 4, 4)}
      >>> x = jnp.sin(jnp.arange(8.0)).reshape(2, 4)
      >>> state = train.init(params, stacked)
      >>> step = jax.jit(train.step, donate_argnums=(0, 1, 2))
      >>> for _ in range(5):
      ...   params, stacked, state, loss = step(params, stacked, state, x)
      >>> print('Objective function: {:.2f}'.format(loss))
      Objective function: 1.82
    """
    value_and_grad = fused_value_and_grad(loss_fn, layers, has_aux=has_aux)
    if layers.accumulation_steps > 1:
        tx = optax.MultiSteps(tx, layers.accumulation_steps).gradient_transformation()

    def init(params: Any, stacked: Any) -> FusedTrainState:
        return FusedTrainState(tx.init(params), layers.init(stacked))

    def step(
        params: Any, stacked: Any, state: FusedTrainState, *args: Any
    ) -> tuple[Any, Any, FusedTrainState, Any]:
        value, grads, stacked, layers_state = value_and_grad(
            params, stacked, state.layers_state, *args
        )
        updates, opt_state = tx.update(grads, state.opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, stacked, FusedTrainState(opt_state, layers_state), value

    return FusedTrainStep(init, step)


def fused_gradient_bytes(params_or_report: Any, *, blocks: str = "blocks") -> int:
    r"""Gradient bytes that exist at once in a fused step: one layer's, not the stack's.

    In the ordinary step the whole gradient is held at once (what
    :func:`memory_report` counts as ``grads_bytes``). In a :func:`fused_layers`
    step the stacked block ``params[blocks]`` (leading layer axis :math:`L`)
    never has more than one layer's gradient alive, so the gradient bytes are
    those of the other floating parameters plus :math:`1/L` of the block's.

    Args:
      params_or_report: the full parameters (arrays or ``jax.ShapeDtypeStruct``),
        or a :func:`memory_report` of them.
      blocks: key of the stacked block in the top-level parameter dict (the
        report's leaf paths start with ``['<blocks>']``).

    Returns:
      The byte count (an ``int``).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import lowrank_optax as lowrank
      >>> f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
      >>> params = {'embed': f32(100, 8), 'blocks': {'w': f32(4, 8, 8)}}
      >>> lowrank.fused_gradient_bytes(params)  # 100*8*4 + 8*8*4
      3456
    """
    prefix = f"[{blocks!r}]"
    if isinstance(params_or_report, dict) and "leaves" in params_or_report:
        rows = [
            (r["path"], tuple(r["shape"]), jnp.dtype(r["dtype"]), r["bytes"])
            for r in params_or_report["leaves"]["params"]
        ]
    else:
        flat = jax.tree_util.tree_flatten_with_path(params_or_report)[0]
        rows = [
            (
                jax.tree_util.keystr(path),
                tuple(jnp.shape(x)),
                jnp.dtype(x.dtype),
                int(np.prod(jnp.shape(x))) * jnp.dtype(x.dtype).itemsize,
            )
            for path, x in flat
        ]
    total = 0
    for path, shape, dtype, nbytes in rows:
        if not jnp.issubdtype(dtype, jnp.inexact):
            continue
        total += nbytes // shape[0] if path.startswith(prefix) and shape else nbytes
    return int(total)


__all__ = [
    "FusedLayers",
    "FusedLayersState",
    "FusedTrainState",
    "FusedTrainStep",
    "check_leafwise",
    "fused_layers",
    "fused_train_step",
    "fused_gradient_bytes",
    "fused_value_and_grad",
]
