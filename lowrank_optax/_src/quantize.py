r"""``quantize_state``: any transformation with its large state leaves stored in 8 bits.

Which map a leaf gets (signed or unsigned) is *declared*, never guessed from
values (a second moment is all zeros at step 0): a leaf is non-negative when it
sits under a field registered with :func:`register_nonnegative_fields` (the
known second-moment fields of optax's and the library's states are registered
below), unless the ``nonnegative`` callable of :func:`quantize_state` says
otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from optax import contrib as optax_contrib
from optax.tree_utils import _state_utils

from lowrank_optax._src import validation as v
from lowrank_optax._src.adam_in_basis import ScaleByAdamInBasisState
from lowrank_optax._src.blockwise import (
    BITS,
    QuantizedArray,
    dequantize_blockwise,
    quantize_blockwise,
    quantize_many,
)
from lowrank_optax._src.holocron.adabelief import ScaleByAdaBeliefState
from lowrank_optax._src.holocron.adan import ScaleByAdanState as HolocronAdanState
from lowrank_optax._src.holocron.tadam import ScaleByTadamState
from lowrank_optax._src.lre.inner import ScaleByCubicAdamInBasisState
from lowrank_optax._src.subspace import is_box

_NONNEGATIVE_FIELDS: dict[type, frozenset[str]] = {}


def register_nonnegative_fields(state_cls: type, *fields: str) -> type:
    """Declares fields of a NamedTuple state class as non-negative (second moments).

    Under :func:`quantize_state`, every floating leaf below a declared field is
    stored in the unsigned format (the unsigned code map, one bit more precise
    than the signed one, applied to the square root). Declare only fields that
    can never hold a negative value: a negative value in such a leaf is stored
    as 0.

    Args:
      state_cls: a ``NamedTuple`` class (an optimizer state type).
      *fields: names of its fields holding non-negative arrays (added to any
        earlier declaration of the class).

    Returns:
      ``state_cls`` (so it can be used as a decorator with ``functools.partial``).

    Raises:
      ValueError: if ``state_cls`` is not a NamedTuple class or a field is not
        one of its fields.

    Examples:
      >>> from typing import NamedTuple
      >>> import jax
      >>> import lowrank_optax as lowrank
      >>> class MyState(NamedTuple):
      ...   momentum: jax.Array
      ...   sum_sq: jax.Array
      >>> _ = lowrank.register_nonnegative_fields(MyState, 'sum_sq')
    """
    known = getattr(state_cls, "_fields", None)
    if not isinstance(state_cls, type) or known is None:
        raise ValueError(f"`state_cls` must be a NamedTuple class, got {state_cls!r}.")
    for name in fields:
        if name not in known:
            raise ValueError(
                f"`fields` must name fields of {state_cls.__name__} ({', '.join(known)}); "
                f"got {name!r}."
            )
    _NONNEGATIVE_FIELDS[state_cls] = _NONNEGATIVE_FIELDS.get(state_cls, frozenset()) | set(fields)
    return state_cls


# Second moments (EMAs or sums of squares, running maxima of those) of known states.
for _cls, _fields in (
    (optax.ScaleByAdamState, ("nu",)),  # adam, adamw, nadam, radam, adamax, yogi, lamb
    (optax.ScaleByAmsgradState, ("nu", "nu_max")),
    (optax.ScaleByBeliefState, ("nu",)),
    (optax.ScaleByRmsState, ("nu",)),
    (optax.ScaleByRStdDevState, ("nu",)),
    (optax.ScaleByRssState, ("sum_of_squares",)),
    (optax.ScaleByAdaDeltaState, ("e_g", "e_x")),
    (optax.ScaleByAdanState, ("n",)),
    (optax.ScaleByNovogradState, ("nu",)),
    (optax.ScaleBySM3State, ("nu",)),
    (optax.FactoredState, ("v_row", "v_col", "v")),
    (optax_contrib.ScaleByAdemamixState, ("nu",)),
    (ScaleByAdamInBasisState, ("nu", "nu_max")),
    (ScaleByCubicAdamInBasisState, ("nu",)),
    (ScaleByAdaBeliefState, ("nu", "nu_max")),
    (HolocronAdanState, ("nu", "nu_max")),
    (ScaleByTadamState, ("nu", "nu_max")),
):
    register_nonnegative_fields(_cls, *_fields)


def _is_declared(x: Any) -> bool:
    return type(x) in _NONNEGATIVE_FIELDS


def _is_stop(x: Any) -> bool:
    return isinstance(x, QuantizedArray) or is_box(x)


def _declared_flags(tree: Any, nonnegative: bool = False) -> Any:
    """``tree`` with every leaf (and Flax box) replaced by its declared non-negativity."""

    def flag(node: Any) -> Any:
        if _is_declared(node):
            fields = _NONNEGATIVE_FIELDS[type(node)]
            return type(node)(
                *(
                    _declared_flags(getattr(node, name), nonnegative or name in fields)
                    for name in node._fields
                )
            )
        return nonnegative

    return jax.tree.map(flag, tree, is_leaf=lambda x: _is_declared(x) or _is_stop(x))


def _raw(x: Any) -> Any:
    if is_box(x):
        return x.get_value() if hasattr(x, "get_value") else x.value
    return x


def quantize_state(
    inner: optax.GradientTransformation,
    *,
    bits: int | None = None,
    block_size: int | None = None,
    min_size: int | None = None,
    nonnegative: Callable[[str, jax.Array], bool | None] | None = None,
    mask: Callable[[str, jax.Array], bool] | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Runs ``inner`` with its large floating-point state leaves stored in 8 bits.

    Block-wise quantization as in 8-bit Adam (Dettmers et al.), for any
    transformation: every floating-point state leaf of ``inner`` with at least
    ``min_size`` elements (and at least one axis) is stored as a
    :class:`QuantizedArray`, an ``int8``/``uint8`` code per element plus one scale
    (the block's largest magnitude) per block of ``block_size`` elements; the code
    indexes the dynamic (tree) code map (:func:`dynamic_code_map`). See
    :doc:`/guides/quantized_state`. Each step
    dequantizes, runs ``inner.update`` in the leaves' dtype, and quantizes the new
    state back, inside the same (jitted) function:

    .. math::

      \begin{align*}
        \hat S_{t-1} &= \mathrm{dequantize}(Q_{t-1}) \\
        u_t, S_t &= \mathrm{inner.update}(g_t, \hat S_{t-1}) \\
        Q_t &= \mathrm{quantize}(S_t), \qquad
        \mathrm{quantize}(x)_i = \mathrm{code}\!\left(x_i / \max_{j \in B(i)} |x_j|\right)
      \end{align*}

    where :math:`B(i)` is the block of element :math:`i`. Other leaves (counters,
    scalars, integer and complex leaves, small leaves) are stored as they are.
    The state keeps ``inner``'s own structure (its NamedTuples, with
    :class:`QuantizedArray` nodes in place of the quantized arrays), so
    ``optax.tree.get``, basis-aware checks of :func:`project_lowrank` and other
    wrappers see the same state types.

    **Signed or unsigned format, declared.** Leaves under a declared non-negative
    field (second moments: optax's ``ScaleByAdamState.nu``,
    ``ScaleByAmsgradState.nu`` and ``nu_max``, :class:`ScaleByAdamInBasisState`
    ``nu``/``nu_max``, holocron's AdaBelief/Adan/TAdam ``nu``/``nu_max``, and the
    others registered with :func:`register_nonnegative_fields`) use the unsigned
    format: the unsigned map (8 magnitude bits, ``uint8`` codes) applied to
    :math:`\sqrt{v}`. Every other leaf uses the signed map (7 magnitude bits,
    ``int8`` codes). Non-negativity is never guessed from values; ``nonnegative``
    overrides the declaration per leaf.

    **Degenerate values.** An all-zero block is stored exactly (scale 0). A block
    holding a NaN or an infinity dequantizes to NaN in every element (its scale is
    NaN): the non-finite value spreads to its block, and the update is whatever
    ``inner`` makes of it (wrap with :func:`optax.apply_if_finite` to skip such
    steps). Values below :math:`10^{-6}` (signed) of their block's largest
    magnitude, or second moments below :math:`10^{-14}` of their block's largest,
    are stored as 0. bf16/f16 leaves are quantized in float32 and their scales
    stored in their own dtype.

    **Sharding.** Codes have the leaf's shape and sharding. Scales have shape
    ``(*lead, num_blocks)`` (blocks tile the last axis, or the smallest group of
    trailing axes with at least ``block_size`` elements); their block axis is
    sharded like that axis group when every shard holds whole blocks and is
    replicated otherwise (the rows are then gathered for quantization). ``jax.jit
    (tx.init)`` on an Explicit mesh produces this layout and
    :func:`state_sharding` returns it.

    Static arguments for :func:`optax.inject_hyperparams`: ``bits``,
    ``block_size``, ``min_size`` when passed (their ``None`` defaults need no
    listing) and ``nonnegative`` / ``mask`` (callables, which it would otherwise
    take for schedules); ``inner`` passes through as a static value.

    Args:
      inner: the transformation whose state is stored quantized (anything with
        ``init`` and ``update``; its ``update`` receives the extra arguments).
      bits: bits per code; 8 (the only width implemented: codes are stored one
        per byte; ``None``: 8).
      block_size: elements per block (``>= 1``; ``None``: 256); smaller blocks
        are more accurate and cost ``4/block_size`` bytes of scale per element
        (float32).
      min_size: leaves with fewer elements stay unquantized (``>= 0``; ``None``:
        4096).
      nonnegative: optional ``f(path, leaf) -> bool | None`` called at ``init``
        for each leaf to be quantized (``path`` is its ``jax.tree_util.keystr``
        in ``inner``'s state, e.g. ``"[0].nu['w']"``): ``True`` selects the
        unsigned map, ``False`` the signed one, ``None`` keeps the declaration.
      mask: optional ``f(path, leaf) -> bool`` called at ``init``; leaves for which
        it is false stay unquantized.

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs`.

    Raises:
      TypeError: if ``inner`` has no ``init``/``update``.
      ValueError: on invalid ``bits``, ``block_size`` or ``min_size``.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.quantize_state(optax.adam(1e-1), min_size=16)
      >>> params = {'w': jnp.linspace(-2.0, 2.0, 64).reshape(8, 8)}
      >>> state = tx.init(params)
      >>> state[0].mu['w'].codes.dtype, state[0].nu['w'].codes.dtype
      (dtype('int8'), dtype('uint8'))
      >>> loss = lambda p: jnp.sum(p['w'] ** 2)
      >>> for _ in range(5):
      ...   grads = jax.grad(loss)(params)
      ...   updates, state = tx.update(grads, state, params)
      ...   params = optax.apply_updates(params, updates)
      >>> print('Objective function: {:.2f}'.format(loss(params)))
      Objective function: 38.18

    References:
      Dettmers et al, `8-bit Optimizers via Block-wise Quantization
      <https://arxiv.org/abs/2110.02861>`_, 2022

      Dettmers, `8-Bit Approximations for Parallelism in Deep Learning
      <https://arxiv.org/abs/1511.04561>`_, 2016

    .. warning::
      Non-negative leaves are stored as codes of :math:`\sqrt{v}`, not of
      :math:`v` as in the paper. Coding :math:`v` directly, its 7 decades below the
      block maximum cover only 3.5 decades of gradient scale, against 6 for the
      first moment: an element whose gradient is :math:`10^{-3.5}` to
      :math:`10^{-6}` of its block's largest keeps :math:`m \neq 0` but gets
      :math:`v = 0`, hence the step :math:`m/\epsilon` (measured on mnist1d: steps
      up to 400 times Adam's largest regular step). With :math:`\sqrt{v}` the
      second moment's range covers the first moment's.

      The code map follows the papers' bit layout (sign, exponent zeros,
      indicator, linear fraction) but each decade's grid ends at its top value
      (so 0 and ±1 are exact and the step is uniform across decade boundaries)
      where bitsandbytes uses bin midpoints; blocks tile rows of the trailing
      axes rather than the flattened tensor, and the signed map leaves one code
      unused. Codes are therefore not interchangeable with bitsandbytes'.
    """
    v.check_transformation("inner", inner)
    if v.check_optional_int("bits", bits, default=BITS) != BITS:
        raise ValueError(f"`bits` must be 8 (one code per byte), got {bits!r}.")
    block_size = v.check_optional_int("block_size", block_size, default=256)
    min_size = v.check_optional_int("min_size", min_size, minimum=0, default=4096)
    inner = optax.with_extra_args_support(inner)

    def selected(path: str, x: Any) -> bool:
        dtype = getattr(x, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating) or jnp.ndim(x) == 0:
            return False
        if jnp.size(x) < min_size:
            return False
        return mask is None or bool(mask(path, x))

    def init_fn(params: optax.Params) -> optax.OptState:
        state = inner.init(params)
        if isinstance(params, _state_utils._ParamsPlaceholder):
            # optax.tree_map_params: whether a leaf is quantized depends on its size,
            # unknown here, so no subtree is reported as parameter-shaped.
            return jax.tree.map(
                lambda x: 0 if isinstance(x, _state_utils._ParamsPlaceholder) else x,
                state,
                is_leaf=lambda x: isinstance(x, _state_utils._ParamsPlaceholder),
            )
        paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_stop)
        flags = treedef.flatten_up_to(_declared_flags(state))
        if any(isinstance(leaf, QuantizedArray) for _, leaf in paths_leaves):
            raise ValueError(
                "`inner`'s state already holds quantized leaves: quantize_state cannot be "
                "nested (wrap the innermost transformation once)."
            )
        out = []
        for (path, leaf), declared in zip(paths_leaves, flags, strict=True):
            raw = _raw(leaf)
            name = jax.tree_util.keystr(path)
            if not selected(name, raw):
                out.append(leaf)
                continue
            choice = None if nonnegative is None else nonnegative(name, raw)
            unsigned = declared if choice is None else bool(choice)
            # inner.init's leaves are usually constants (zeros): without the barrier
            # XLA constant-folds the block maxima of jit(init), seconds per leaf.
            raw = jax.lax.optimization_barrier(raw)
            out.append(quantize_blockwise(raw, signed=not unsigned, block_size=block_size))
        return treedef.unflatten(out)

    def update_fn(
        updates: optax.Updates,
        state: optax.OptState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, optax.OptState]:
        stored, treedef = jax.tree.flatten(state, is_leaf=lambda x: isinstance(x, QuantizedArray))
        full = [
            dequantize_blockwise(x, block_size=block_size) if isinstance(x, QuantizedArray) else x
            for x in stored
        ]
        new_updates, new_state = inner.update(
            updates, treedef.unflatten(full), params, **extra_args
        )
        new_leaves = treedef.flatten_up_to(new_state)
        out = list(new_leaves)
        where, arrays, signed = [], [], []
        for i, (old, new) in enumerate(zip(stored, new_leaves, strict=True)):
            if isinstance(old, QuantizedArray):
                # Stored codes carry no derivative (piecewise constant): stopping it
                # lets forward-mode checks trace the update (fused_layers' check_leafwise).
                where.append(i)
                arrays.append(jax.lax.stop_gradient(new.astype(old.scales.dtype)))
                signed.append(old.codes.dtype == jnp.int8)
        # On CPU, each pair of leaves is quantized after the previous one (see
        # blockwise.quantize_many): XLA's CPU scheduler otherwise copies every
        # leaf's old codes before quantizing any.
        sequence = jax.default_backend() == "cpu"
        quantized = quantize_many(arrays, signed, block_size, sequence=sequence)
        for i, q in zip(where, quantized, strict=True):
            out[i] = q
        return new_updates, treedef.unflatten(out)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def quantize_state_arg(
    inner: optax.GradientTransformation,
    *,
    state_bits: int | None,
    state_block_size: int | None,
    state_min_size: int | None,
) -> optax.GradientTransformation:
    """The aliases' ``state_bits`` option: ``inner``, or ``quantize_state(inner, ...)``.

    Validates ``state_bits`` (``None``: full precision, or 8),
    ``state_block_size`` (``>= 1``, ``None``: 256) and ``state_min_size``
    (``>= 0``, ``None``: 4096) with errors naming those arguments, whether or
    not ``state_bits`` is set.
    """
    if state_bits is not None and v.check_int("state_bits", state_bits) != BITS:
        raise ValueError(
            f"`state_bits` must be None (full precision) or {BITS} (8-bit state), "
            f"got {state_bits!r}."
        )
    block_size = v.check_optional_int("state_block_size", state_block_size, default=256)
    min_size = v.check_optional_int("state_min_size", state_min_size, minimum=0, default=4096)
    if state_bits is None:
        return inner
    return quantize_state(inner, bits=BITS, block_size=block_size, min_size=min_size)
