r"""Block-wise 8-bit quantization with the dynamic (tree) code map of Dettmers et al.

An array is stored as an 8-bit *code* per element and one *scale* per block, in one
of two formats: **signed** (``int8`` codes; any values, e.g. first moments) or
**unsigned** (``uint8`` codes; non-negative values, e.g. second moments). The
codes' dtype records the format.

* **Blocks.** The array is viewed as ``(*lead, C)`` where the trailing axis group
  (``C`` = the product of the trailing axes) is the smallest one holding at least
  ``block_size`` elements: the last axis alone when it is that long, else the last
  two axes merged, and so on. Each length-``C`` row is cut into
  ``num_blocks = ceil(C / block_size)`` consecutive blocks (the last one padded
  with zeros). Blocks never span two rows, so the layout depends only on the
  shape and ``block_size`` (never on a mesh) and a checkpoint restores onto any
  sharding.
* **Stored quantity.** The signed format stores :math:`r = x`; the unsigned one
  stores :math:`r = \sqrt{x}` (negative values count as 0) and decodes by
  squaring, so its 8 decades of codes span 16 decades of :math:`x`.
* **Scale.** A block's scale is :math:`s = \max_i |r_i|`, stored in the array's
  own dtype (rounded up where that dtype cannot hold it: square roots in
  bf16/f16). Scales have shape ``(*lead, num_blocks)``.
* **Code.** Each element is normalised, :math:`a = r / s \in [-1, 1]`, and
  stored as the index of the nearest value of a 256-entry code map.

The code map is the *dynamic tree* data type of Dettmers (2016) as used by
8-bit Adam (Dettmers et al., 2022): a code's bits are read as (1) a sign bit
(signed map only), (2) :math:`k` zero bits giving the decimal exponent
:math:`10^{-k}`, (3) an indicator bit set to one, (4) :math:`f` fraction bits
giving a linear position :math:`F \in [0, 2^f)` inside the decade:

.. math::

   v = \pm 10^{-k}\left(0.1 + 0.9\,\frac{F + 1}{2^f}\right),

and the code whose magnitude bits are all zero is 0. Each decade
:math:`(10^{-k-1}, 10^{-k}]` is split into :math:`2^f` equal steps ending at its
top, so :math:`\pm 1` and 0 are exact and the grid spacing is the same on both
sides of a decade boundary. The **signed** map has 7 magnitude bits:
:math:`k = 0..6`, :math:`f = 6 - k`, smallest non-zero magnitude :math:`10^{-6}`,
stored as ``int8`` codes ``c`` with :math:`v(-c) = -v(c)` (the code ``-128`` is
never written; it decodes to ``-1``). The **unsigned** map (the paper's "dynamic
quantization" re-purposes the sign bit as one more fraction bit) has 8 magnitude
bits: :math:`k = 0..7`, :math:`f = 7 - k`, smallest non-zero value
:math:`10^{-7}`.

Quantization error, in the stored quantity: for :math:`|a| \in [10^{-k-1},
10^{-k}]` the nearest code is at most half a step away,
:math:`|r - \hat r| \le s\cdot 0.45\cdot 10^{-k}/2^{f}` (at most
:math:`0.45/64 \approx 0.70\,\%` of the block maximum signed, and
:math:`0.45/128 \approx 0.35\,\%` unsigned, i.e. :math:`|x - \hat x| \le 0.71\,\%`
of the block's largest :math:`x`); below the smallest code the error is at most
half that code. Subnormal values count as zero (XLA's CPU arithmetic flushes
them; a block whose maximum is subnormal is stored as zeros on every backend).
Non-finite blocks: a block holding a NaN or :math:`\pm\infty` is stored with a
NaN scale and zero codes, so it dequantizes to NaN everywhere (the non-finite
value spreads to its block and no further).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lowrank_optax._src import sharding
from lowrank_optax._src import validation as v

BITS = 8


class QuantizedArray(NamedTuple):
    """A block-wise quantized array (see :func:`quantize_blockwise`).

    Attributes:
      codes: one code per element, with the shape (and sharding) of the stored
        array: ``int8`` for the signed format (codes of the values), ``uint8`` for
        the unsigned one (codes of their square roots).
      scales: per-block maxima of the coded quantity (``|x|``, or ``sqrt(x)``) in
        the stored array's dtype, of shape ``(*lead, num_blocks)`` (see
        :func:`block_layout`).
    """

    codes: jax.Array
    scales: jax.Array


class BlockLayout(NamedTuple):
    """Static block layout of an array shape: ``shape[:lead]`` x blocks of ``group``."""

    shape: tuple[int, ...]
    lead: int  # number of leading axes kept as they are
    group: int  # elements per row: product of shape[lead:]
    num_blocks: int  # blocks per row
    block_size: int

    @property
    def scales_shape(self) -> tuple[int, ...]:
        return (*self.shape[: self.lead], self.num_blocks)

    @property
    def padding(self) -> int:
        return self.num_blocks * self.block_size - self.group


def block_layout(shape: tuple[int, ...], block_size: int) -> BlockLayout:
    """The block layout of ``shape``: rows are the smallest trailing axis group of at
    least ``block_size`` elements (the whole array if it is smaller)."""
    shape = tuple(int(d) for d in shape)
    lead = len(shape)
    group = 1
    while lead > 0 and group < block_size:
        lead -= 1
        group *= shape[lead]
    if not shape:
        group = 1
    return BlockLayout(shape, lead, group, max(1, -(-group // block_size)), block_size)


def _magnitude_bits(signed: bool) -> int:
    return BITS - 1 if signed else BITS


def _magnitudes(num_bits: int) -> np.ndarray:
    """The ``2**num_bits`` magnitudes, indexed by the magnitude bits as an integer.

    An index ``i >= 1`` has its leading one at bit position ``f`` (``f`` fraction
    bits follow it) and ``k = num_bits - 1 - f`` zeros before it.
    """
    out = np.zeros(2**num_bits, np.float64)
    for i in range(1, 2**num_bits):
        f = i.bit_length() - 1
        k = num_bits - 1 - f
        fraction = i - 2**f  # the f bits after the indicator
        out[i] = 10.0**-k * (0.1 + 0.9 * (fraction + 1) / 2**f)
    return out


@functools.cache
def dynamic_code_map(signed: bool) -> np.ndarray:
    """The 256 values of the dynamic code map, as a read-only ``float32`` array.

    Entry ``c`` is the value of the ``uint8`` code ``c`` (unsigned map), or entry
    ``c + 128`` the value of the ``int8`` code ``c`` (signed map; entry 0, for the
    never-written code ``-128``, is ``-1``). Both are sorted ascending.

    Args:
      signed: the signed map (both signs, 7 magnitude bits) or the unsigned one
        (non-negative values, 8 magnitude bits).

    Returns:
      A ``(256,)`` float32 array.

    Examples:
      >>> import lowrank_optax as lowrank
      >>> m = lowrank.dynamic_code_map(signed=False)
      >>> print(m[0], m[1], m[255])
      0.0 1e-07 1.0
    """
    if signed:
        mags = _magnitudes(_magnitude_bits(True))  # 128 entries, index = |code|
        table = np.concatenate([[-1.0], -mags[:0:-1], mags])
    else:
        table = _magnitudes(_magnitude_bits(False))
    out = table.astype(np.float32)
    out.flags.writeable = False
    return out


@functools.cache
def _encoder_constants(num_bits: int) -> tuple[tuple[float, float, float, int], ...]:
    """Per decade ``k``: (threshold, bottom, 1/step, 2**f).

    Decade ``k`` covers ``[10^-(k+1), 10^-k]`` on a uniform grid of step
    ``0.9·10^-k / 2**f`` whose bottom point is the previous decade's top code; the
    last decade (a single code) rounds between 0 and ``10^-(num_bits-1)``.
    """
    out = []
    for k in range(num_bits):
        f = num_bits - 1 - k
        if k < num_bits - 1:
            bottom = 10.0 ** -(k + 1)
            inv_step = 2**f / (0.9 * 10.0**-k)
        else:
            bottom, inv_step = 0.0, 10.0**k
        out.append((10.0**-k, bottom, inv_step, 2**f))
    return tuple(out)


def _encode_magnitude(a: jax.Array, num_bits: int) -> jax.Array:
    """Index (``int32``) of the magnitude code nearest to ``a`` in ``[0, 1]``."""
    consts = _encoder_constants(num_bits)
    dtype = a.dtype
    _, bottom0, inv0, n0 = consts[0]
    bottom = jnp.full(a.shape, bottom0, dtype)
    inv_step = jnp.full(a.shape, inv0, dtype)
    count = jnp.full(a.shape, n0, jnp.int32)
    # Decade by comparisons: a few selects are far cheaper than a table gather or
    # a binary search over the 255 midpoints on CPU (measured).
    for top, b, inv, n in consts[1:]:
        below = a < np.asarray(top, dtype)
        bottom = jnp.where(below, np.asarray(b, dtype), bottom)
        inv_step = jnp.where(below, np.asarray(inv, dtype), inv_step)
        count = jnp.where(below, n, count)
    step = jnp.round((a - bottom) * inv_step).astype(jnp.int32)
    return count - 1 + jnp.clip(step, 0, count)


def _decode_magnitude(index: jax.Array, num_bits: int, dtype: Any) -> jax.Array:
    """The magnitude of code ``index`` (``int32`` in ``[0, 2**num_bits)``), arithmetically.

    An index with ``f`` fraction bits lies in ``[2^f, 2^{f+1})``; its value is its
    decade's top ``10^-k`` minus ``d`` steps, ``d = 2^{f+1} - 1 - index``. The
    decade is found with a few comparisons and selects: elementwise code (no table
    gather), which XLA fuses into every consumer instead of materialising the
    decoded array (a gathered array costs a full-size temporary per moment). Tops
    of decades (including 1) are exact; other values agree with
    :func:`dynamic_code_map` to within ``1e-6`` relative (float32 rounding).
    """
    top = jnp.full(index.shape, np.float32(10.0 ** -(num_bits - 1)))
    step = jnp.zeros(index.shape, jnp.float32)
    last = jnp.ones(index.shape, jnp.int32)
    for f in range(1, num_bits):
        k = num_bits - 1 - f
        above = index >= 2**f
        top = jnp.where(above, np.float32(10.0**-k), top)
        step = jnp.where(above, np.float32(0.9 * 10.0**-k / 2**f), step)
        last = jnp.where(above, 2 ** (f + 1) - 1, last)
    value = top - step * (last - index).astype(jnp.float32)
    return jnp.where(index == 0, 0, value).astype(dtype)


def _work_dtype(dtype: Any) -> Any:
    return jnp.promote_types(dtype, jnp.float32)


class _Specs(NamedTuple):
    work: sharding.Spec | None  # spec of the array while it is cut into blocks
    blocks: sharding.Spec | None  # spec of the (*lead, num_blocks, block_size) view
    scales: sharding.Spec | None
    array: sharding.Spec | None  # the array's own spec


def _axis_size(mesh: Any, entry: Any) -> int:
    names = entry if isinstance(entry, tuple) else (entry,)
    return math.prod(int(mesh.shape[n]) for n in names)


def _specs(x: jax.Array, layout: BlockLayout) -> _Specs:
    """Sharding specs of the block views, read from ``x``'s Explicit sharding type.

    The block axis takes the spec of the row group's major axis when the other
    axes of the group are unsharded and every shard holds whole blocks; otherwise
    the rows are gathered while they are cut into blocks and the scales' block
    axis is replicated.
    """
    spec = sharding.explicit_spec(x)
    if spec is None:
        return _Specs(None, None, None, None)
    lead, group = spec[: layout.lead], spec[layout.lead :]
    block_spec = None
    if group and group[0] is not None and all(s is None for s in group[1:]):
        mesh = jax.typeof(x).sharding.mesh
        shards = _axis_size(mesh, group[0])
        if layout.group % shards == 0 and (layout.group // shards) % layout.block_size == 0:
            block_spec = group[0]
    if block_spec is None:
        work = (*lead, *(None,) * len(group))
    else:
        work = spec
    return _Specs(work, (*lead, block_spec, None), (*lead, block_spec), spec)


def _reshape(x: jax.Array, shape: tuple[int, ...], spec: Any, like: Any) -> jax.Array:
    if spec is None:
        return jnp.reshape(x, shape)
    return jnp.reshape(x, shape, out_sharding=sharding._named(like, spec))


def _blocks_lead(layout: BlockLayout, specs: _Specs) -> tuple[int, ...]:
    """Leading shape of the block view: ``(*lead, num_blocks)`` on a mesh, else merged.

    Off a mesh, the blocks are one ``(rows, block_size)`` matrix: XLA's CPU
    reductions over the minor axis of a 2-D array are markedly faster than over a
    3-D one.
    """
    if specs.blocks is None:
        return (math.prod(layout.scales_shape),)
    return layout.scales_shape


def _to_blocks(x: jax.Array, layout: BlockLayout, specs: _Specs, like: Any) -> jax.Array:
    lead_shape = layout.shape[: layout.lead]
    blocks_shape = (*_blocks_lead(layout, specs), layout.block_size)
    if not layout.padding:
        return _reshape(x, blocks_shape, specs.blocks, like)
    rows_spec = None if specs.work is None else (*specs.work[: layout.lead], None)
    rows = _reshape(x, (*lead_shape, layout.group), rows_spec, like)
    rows = jnp.pad(rows, [(0, 0)] * layout.lead + [(0, layout.padding)])
    return _reshape(rows, blocks_shape, specs.blocks, like)


def _from_blocks(blocks: jax.Array, layout: BlockLayout, specs: _Specs, like: Any) -> jax.Array:
    lead_shape = layout.shape[: layout.lead]
    if layout.padding:
        rows_spec = None if specs.work is None else (*specs.work[: layout.lead], None)
        rows_shape = (*lead_shape, layout.num_blocks * layout.block_size)
        blocks = _reshape(blocks, rows_shape, rows_spec, like)[..., : layout.group]
    out = _reshape(blocks, layout.shape, specs.work, like)
    return sharding.reshard(out, specs.array if specs.array != specs.work else None, like)


def quantize_blockwise(
    x: jax.Array, *, signed: bool = True, block_size: int = 256
) -> QuantizedArray:
    r"""Quantizes ``x`` block-wise to 8-bit dynamic-map codes.

    The formats, the block layout and the code map are described in
    :doc:`/guides/quantized_state`.

    Args:
      x: a floating-point array (any shape; bf16/f16 are computed in float32).
      signed: the signed format (``int8`` codes of ``x``); ``False`` selects the
        unsigned format (``uint8`` codes of :math:`\sqrt{x}`, negative values
        stored as 0), for arrays that are never negative.
      block_size: elements per block (``>= 1``).

    Returns:
      A :class:`QuantizedArray`. On an Explicit mesh the codes have ``x``'s
      sharding; the scales' block axis is sharded like the row group's major axis
      where every shard holds whole blocks, and replicated otherwise.

    Examples:
      >>> import jax.numpy as jnp
      >>> import lowrank_optax as lowrank
      >>> x = jnp.array([0.5, -1.0, 0.0, 2.0])
      >>> q = lowrank.quantize_blockwise(x, block_size=2)
      >>> q.codes, q.scales
      (Array([  91, -127,    0,  127], dtype=int8), Array([1., 2.], dtype=float32))
      >>> lowrank.dequantize_blockwise(q, block_size=2)
      Array([ 0.49375004, -1.        ,  0.        ,  2.        ], dtype=float32)
      >>> q = lowrank.quantize_blockwise(jnp.array([4.0, 1.0, 0.25, 0.0]), signed=False,
      ...                                block_size=4)
      >>> q.scales  # sqrt(4): the unsigned format stores square roots
      Array([2.], dtype=float32)
      >>> lowrank.dequantize_blockwise(q, block_size=4)
      Array([4.        , 1.0031276 , 0.24533455, 0.        ], dtype=float32)
    """
    block_size = v.check_int("block_size", block_size, minimum=1)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"`x` must be a floating-point array, got dtype {x.dtype}.")
    layout = block_layout(x.shape, block_size)
    specs = _specs(x, layout)
    work = _work_dtype(x.dtype)
    xw = sharding.reshard(x.astype(work), specs.work if specs.work != specs.array else None, x)
    blocks = _to_blocks(xw, layout, specs, x)
    if not signed:
        # Square-root companding: the unsigned map's 8 decades cover 16 of x.
        blocks = jnp.sqrt(jnp.maximum(blocks, 0))
    absmax = jnp.max(jnp.abs(blocks), axis=-1)  # NaN if the block holds one
    finite = jnp.isfinite(absmax)
    # A block whose maximum is subnormal (its reciprocal overflows; XLA's CPU
    # arithmetic flushes such values to zero anyway) is stored as zeros.
    absmax = jnp.where(absmax < jnp.finfo(work).tiny, 0, absmax)
    # The stored scale, rounded up where the leaf's dtype cannot hold it exactly
    # (a square root in bf16/f16), so that every |a| <= 1.
    stored = absmax.astype(x.dtype)
    stored = jnp.where(stored.astype(work) < absmax, jnp.nextafter(stored, np.inf), stored)
    scale = stored.astype(work)
    # The reciprocal of a maximum near the top of the float range is subnormal
    # (flushed to zero): such blocks are pre-scaled by 2^-64 (one more multiply).
    pre = jnp.where(scale > 2.0**64, np.asarray(2.0**-64, work), np.asarray(1, work))
    usable = finite & (scale > 0)
    inv = jnp.where(usable, 1 / jnp.where(usable, scale * pre, 1), 0)
    a = (blocks * pre[..., None]) * inv[..., None]
    magnitude = jnp.where(finite[..., None], jnp.abs(a), 0)
    index = _encode_magnitude(magnitude, _magnitude_bits(signed))
    if signed:
        codes = jnp.where(a < 0, -index, index).astype(jnp.int8)
    else:
        codes = index.astype(jnp.uint8)
    codes = _from_blocks(codes, layout, specs, x)
    scales = jnp.where(finite, stored, jnp.nan)
    if specs.scales is None:
        scales = scales.reshape(layout.scales_shape)
    else:
        scales = sharding.reshard(scales, specs.scales, x)
    return QuantizedArray(codes, scales)


def dequantize_blockwise(q: QuantizedArray, *, block_size: int = 256) -> jax.Array:
    """The array stored in ``q`` (dtype of ``q.scales``, shape of ``q.codes``).

    ``int8`` codes are the signed format, ``uint8`` codes the unsigned one (decoded
    and squared); see :func:`quantize_blockwise`.

    Args:
      q: a :class:`QuantizedArray` from :func:`quantize_blockwise`.
      block_size: the block size it was quantized with.

    Returns:
      The dequantized array, sharded like ``q.codes``.
    """
    block_size = v.check_int("block_size", block_size, minimum=1)
    codes, scales = q
    signed = codes.dtype == jnp.int8
    if not signed and codes.dtype != jnp.uint8:
        raise ValueError(f"`q.codes` must be int8 or uint8, got {codes.dtype}.")
    layout = block_layout(codes.shape, block_size)
    if scales.shape != layout.scales_shape:
        raise ValueError(
            f"`q.scales` has shape {scales.shape}; codes of shape {codes.shape} with "
            f"block_size={block_size} need {layout.scales_shape}."
        )
    specs = _specs(codes, layout)
    work = _work_dtype(scales.dtype)
    codes = sharding.reshard(codes, specs.work if specs.work != specs.array else None, codes)
    c = codes.astype(jnp.int32)
    if signed:
        mag = _decode_magnitude(jnp.minimum(jnp.abs(c), 127), _magnitude_bits(True), work)
        values = jnp.where(c < 0, -mag, mag)
    else:
        values = _decode_magnitude(c, _magnitude_bits(False), work)
    scales = scales.astype(work).reshape(_blocks_lead(layout, specs))
    blocks = _to_blocks(values, layout, specs, codes) * scales[..., None]
    if not signed:
        blocks = jnp.square(blocks)  # the unsigned format stores square roots
    return _from_blocks(blocks, layout, specs, codes).astype(q.scales.dtype)
