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
def _encoder_lines(num_bits: int) -> tuple[tuple[float, float], ...]:
    r"""The encoder's lines ``(A_f, B_f)``, ``f = 0 .. num_bits - 1``.

    On the decade of the codes with ``f >= 1`` fraction bits (indices ``2^f - 1``
    to ``2^{f+1} - 1``, the first being the previous decade's top), code values are
    equally spaced, so the real-valued index of a normalised magnitude ``a`` is
    linear: :math:`i = A_f a + B_f` with :math:`A_f = 10^n / (9 \cdot 5^f)` and
    :math:`B_f = (8 \cdot 2^f - 9) / 9` (``n = num_bits``). Below the smallest
    code, between 0 and :math:`10^{-(n-1)}`: :math:`i = 10^{n-1} a`. The index
    function is continuous with slopes that decrease from one piece to the next
    (it is concave), so it equals the smallest of the lines everywhere: the
    encoder needs no decade search.
    """
    lines = [(10.0 ** (num_bits - 1), 0.0)]
    for f in range(1, num_bits):
        lines.append((10.0**num_bits / (9 * 5**f), (8 * 2**f - 9) / 9))
    return tuple(lines)


_FLOAT_BITS = {np.dtype(np.float32): (np.int32, 23), np.dtype(np.float64): (np.int64, 52)}


def _as_bits(x: jax.Array) -> jax.Array:
    return jax.lax.bitcast_convert_type(x, _FLOAT_BITS[np.dtype(x.dtype)][0])


def _from_bits(x: jax.Array, dtype: Any) -> jax.Array:
    return jax.lax.bitcast_convert_type(x, dtype)


def _encode_blocks(r: jax.Array, coefficients: list[jax.Array], signed: bool) -> jax.Array:
    """Codes of ``r`` (the stored quantity, ``(..., block_size)``) given each block's
    line slopes ``A_f / scale`` (``(..., 1)``; 0 for a block stored as zeros).

    The index is the smallest of the lines, rounded to nearest (ties to even) by
    adding ``1.5 * 2^m`` (``m`` mantissa bits) and reading the low bits of the sum:
    two instructions, no float-to-integer conversion. Non-finite values (they
    occur only in blocks stored with a NaN scale, whose slopes are 0) count as 0.
    """
    dtype = r.dtype
    _, mantissa = _FLOAT_BITS[np.dtype(dtype)]
    magnitude = jnp.abs(r) if signed else r
    magnitude = jnp.where(magnitude < np.inf, magnitude, 0)  # NaN, inf -> 0
    index = None
    lines = _encoder_lines(_magnitude_bits(signed))
    for slope, (_, offset) in zip(coefficients, lines, strict=True):
        line = magnitude * slope + np.asarray(offset, dtype)
        index = line if index is None else jnp.where(line < index, line, index)
    if signed:  # the sign of r on the (non-negative) index
        sign = _as_bits(r) & _as_bits(np.asarray(-0.0, dtype))
        index = _from_bits(_as_bits(index) | sign, dtype)
    rounded = _as_bits(index + np.asarray(1.5 * 2.0**mantissa, dtype))
    return rounded.astype(jnp.int8 if signed else jnp.uint8)


def _decode_unit(codes: jax.Array, signed: bool) -> jax.Array:
    r"""The code map's value of each code (``float32``, ``[-1, 1]``), arithmetically.

    A magnitude index :math:`i \ge 1` with :math:`f` fraction bits lies in
    :math:`[2^f, 2^{f+1})`, so ``float32(i)`` has binary exponent :math:`f`: its
    exponent field is :math:`2^f`, and :math:`f`'s three bits pick
    :math:`5^f` (or :math:`10^f`) from two-way selects. With
    :math:`N = 9(i + 1) - 8 \cdot 2^f` (an integer),

    .. math::

       v = 10^{-k}\left(0.1 + 0.9\,\frac{F + 1}{2^f}\right)
         = 10^{-n}\, 5^f N
         = 10^{-(n-1)}\, 10^f \cdot \frac{N}{10 \cdot 2^f}.

    The unsigned map uses the first form; the signed one the second, whose factor
    ``N / (10 · 2^f)`` is exactly 1 at a decade top, so tops decode exactly. No
    gather and no division: XLA fuses the decoder into every consumer instead of
    materialising the decoded array. Other values agree with
    :func:`dynamic_code_map` to ``2e-7`` relative.
    """
    num_bits = _magnitude_bits(signed)
    f32 = np.float32
    value = codes.astype(jnp.float32)
    index = jnp.minimum(jnp.abs(value), f32(127)) if signed else value  # -128 reads as -127
    bits = _as_bits(index)
    exponent = bits & 0x7F800000  # the bits of 2^f
    count = bits + 0x00800000  # bits 23..25: the three bits of f
    n = index * f32(9) + f32(9) - _from_bits(exponent, jnp.float32) * f32(8)
    base = (10, 100, 10**4) if signed else (5, 25, 625)
    power = None
    for bit, factor in zip((1 << 23, 1 << 24, 1 << 25), base, strict=True):
        term = jnp.where((count & bit) != 0, f32(factor), f32(1))
        power = term if power is None else power * term
    if signed:
        # 2^-f, capped at 1 so that the unused index 0 stays finite.
        inverse = jnp.minimum(_from_bits(0x7F000000 - exponent, jnp.float32), f32(1))
        unit = (power * f32(10.0 ** -(num_bits - 1))) * ((n * inverse) * f32(0.1))
        return unit * jnp.clip(value, f32(-1), f32(1))  # the sign; 0 for code 0
    unit = (n * power) * f32(10.0**-num_bits)
    return jnp.where(codes == 0, f32(0), unit)


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
    """Leading shape of the block view: ``(*lead, num_blocks)``, or merged.

    Off a mesh, when the row group is the last axis alone, the blocks are one
    ``(rows, block_size)`` matrix: XLA's CPU reductions over the minor axis of a
    2-D array are markedly faster than over a 3-D one. When the group spans
    several trailing axes of an N-D array (e.g. ``(4, 448, 192)`` with blocks of
    256), the leading axes are kept: merging them too makes XLA's CPU kernels map
    every element between the N-D shape and the 2-D view with nested integer
    divisions, which is 2.5x slower (``benchmarks/quantize_state.py``).
    """
    if specs.blocks is None and (layout.lead == 0 or layout.lead == len(layout.shape) - 1):
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


class _Prepared(NamedTuple):
    x: jax.Array  # the original array
    layout: BlockLayout
    specs: _Specs
    blocks: jax.Array  # (..., block_size), work dtype
    signed: bool


def _prepare(x: jax.Array, signed: bool, block_size: int) -> _Prepared:
    layout = block_layout(x.shape, block_size)
    specs = _specs(x, layout)
    work = _work_dtype(x.dtype)
    xw = sharding.reshard(x.astype(work), specs.work if specs.work != specs.array else None, x)
    return _Prepared(x, layout, specs, _to_blocks(xw, layout, specs, x), signed)


def _max_keys(blocks: jax.Array, signed: bool) -> jax.Array:
    """Integer keys whose maximum over a block is the bit pattern of the block's
    largest coded value: ``|x|`` (signed) or ``max(x, 0)`` (unsigned; its square
    root is taken per block). The bits of a non-negative float order like the
    float, NaN above infinity, and an integer maximum needs no NaN handling."""
    if not signed:
        blocks = jnp.where(blocks < 0, 0, blocks)  # keeps NaN
    bits = _as_bits(blocks)
    return bits & ~_as_bits(np.asarray(-0.0, blocks.dtype))  # clear the sign bit


def _block_maxima(group: list[_Prepared]) -> list[jax.Array]:
    """Each array's per-block maximum of its coded quantity (NaN where a block holds
    a NaN), all from one variadic reduction.

    One reduction over several arrays of the same layout is one XLA fusion that
    computes its inputs (a decoded, updated moment) in registers. A lone array gets
    a second reduction, the keys' minimum, used in a test XLA cannot fold: a
    single-operand maximum is, on XLA's CPU backend, either handed to a library
    kernel (a float maximum) or split into a reduce-window (an integer one), and
    both read a materialised copy of the input.
    """
    keys = [_max_keys(p.blocks, p.signed) for p in group]
    ops = [jax.lax.max] * len(keys)
    if len(keys) == 1:
        keys, ops = [keys[0], keys[0]], [jax.lax.max, jax.lax.min]
    inits = tuple(
        np.zeros((), k.dtype) if op is jax.lax.max else np.iinfo(k.dtype).max
        for k, op in zip(keys, ops, strict=True)
    )

    def combine(a: tuple, b: tuple) -> tuple:
        return tuple(op(x, y) for op, x, y in zip(ops, a, b, strict=True))

    out = jax.lax.reduce(tuple(keys), inits, combine, (keys[0].ndim - 1,))
    if len(group) == 1:  # use the minimum (never negative) so that it is kept
        out = (jnp.where(out[1] < 0, 0, out[0]),)
    maxima = []
    for p, m in zip(group, out, strict=True):
        m = _from_bits(m, p.blocks.dtype)
        maxima.append(m if p.signed else jnp.sqrt(m))  # sqrt is monotone: max of sqrt
    return maxima


def _power_of_two(scale: jax.Array) -> jax.Array:
    """``2^e`` with ``scale = 1.m x 2^e`` (``e`` clipped so that ``2^e`` and ``2^-e``
    are normal numbers): ``scale / 2^e`` is in ``[1, 4)`` for any normal scale."""
    finfo = jnp.finfo(scale.dtype)
    bias = int(finfo.maxexp) - 1
    nmant = int(finfo.nmant)
    field = (_as_bits(scale) >> nmant) & (2 * bias + 1)  # the biased exponent
    return _from_bits(jnp.clip(field, 1, 2 * bias - 1) << nmant, scale.dtype)


def _finish(p: _Prepared, absmax: jax.Array) -> QuantizedArray:
    """Scales and codes of a prepared array given its blocks' maxima."""
    work, dtype = p.blocks.dtype, p.x.dtype
    finite = jnp.isfinite(absmax)
    # A block whose maximum is subnormal (XLA's CPU arithmetic flushes such values
    # to zero anyway) is stored as zeros.
    absmax = jnp.where(absmax < jnp.finfo(work).tiny, 0, absmax)
    # The stored scale, rounded up where the leaf's dtype cannot hold it exactly
    # (a square root in bf16/f16), so that every normalised value is <= 1.
    stored = absmax.astype(dtype)
    stored = jnp.where(stored.astype(work) < absmax, jnp.nextafter(stored, np.inf), stored)
    scale = stored.astype(work)
    # Per block, in one (small) array so that XLA computes it once per block in one
    # kernel: a power of two that brings the scale into [1, 4), 2^-e (applied to
    # every element, exactly), and each line's slope A_f / (scale 2^-e), 0 for a
    # block stored as zeros (an infinite divisor).
    lines = _encoder_lines(_magnitude_bits(p.signed))
    power = _power_of_two(scale)[..., None]
    reduced = jnp.where(finite & (scale > 0), scale, np.inf)[..., None] / power
    numerators = np.asarray([1.0] + [a for a, _ in lines], work)
    first = np.arange(len(numerators)) == 0
    per_block = numerators / jnp.where(first, power, reduced)
    factor = per_block[..., :1]
    slopes = [per_block[..., f : f + 1] for f in range(1, len(numerators))]
    r = p.blocks
    if not p.signed:
        # Square-root companding: the unsigned map's 8 decades cover 16 of x.
        r = jnp.sqrt(jnp.where(r < 0, 0, r))
    codes = _encode_blocks(r * factor, slopes, p.signed)
    codes = _from_blocks(codes, p.layout, p.specs, p.x)
    scales = jnp.where(finite, stored, jnp.nan)
    if p.specs.scales is None:
        scales = scales.reshape(p.layout.scales_shape)
    else:
        scales = sharding.reshard(scales, p.specs.scales, p.x)
    return QuantizedArray(codes, scales)


def _check_floating(x: jax.Array) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"`x` must be a floating-point array, got dtype {x.dtype}.")


def _after(x: jax.Array, previous: jax.Array) -> jax.Array:
    """``x`` plus an exact zero that depends on ``previous`` (a scheduling hint).

    ``previous`` holds block maxima (``>= 0`` or NaN), so ``previous < 0`` is never
    true, a fact XLA cannot fold."""
    zero = jnp.where(previous.reshape(-1)[0] < 0, 1, 0)
    return x + zero.astype(x.dtype)


def quantize_many(
    arrays: list[jax.Array], signed: list[bool], block_size: int, *, sequence: bool = False
) -> list[QuantizedArray]:
    """:func:`quantize_blockwise` of several arrays, the same result as one at a time.

    Arrays with the same block layout (shape, work dtype, sharding) share one
    block-maximum reduction, two at a time: a signed array with an unsigned one
    where there are both (Adam's ``mu`` and ``nu`` of a parameter, which read the
    same gradient), in order. Used by :func:`quantize_state`.

    With ``sequence``, each pair's reduction waits for the previous pair's
    (an exact zero added to its inputs, for arrays without Explicit sharding): XLA's
    CPU scheduler otherwise starts every pair at once and copies every donated code
    buffer up front. It changes no value.
    """
    prepared = [
        _prepare(jnp.asarray(x), s, block_size) for x, s in zip(arrays, signed, strict=True)
    ]
    groups: dict[Any, list[int]] = {}
    for i, p in enumerate(prepared):
        groups.setdefault((p.x.shape, p.blocks.dtype, p.specs), []).append(i)
    maxima: dict[int, jax.Array] = {}
    previous = None
    for members in groups.values():
        first = [i for i in members if prepared[i].signed]
        second = [i for i in members if not prepared[i].signed]
        paired = min(len(first), len(second))
        order = [i for pair in zip(first[:paired], second[:paired], strict=True) for i in pair]
        order += first[paired:] + second[paired:]
        for start in range(0, len(order), 2):
            chunk = order[start : start + 2]
            if sequence and previous is not None:
                for i in chunk:
                    if prepared[i].specs.array is None:
                        blocks = _after(prepared[i].blocks, previous)
                        prepared[i] = prepared[i]._replace(blocks=blocks)
            for i, m in zip(chunk, _block_maxima([prepared[i] for i in chunk]), strict=True):
                maxima[i] = m
            previous = maxima[chunk[0]]
    return [_finish(p, maxima[i]) for i, p in enumerate(prepared)]


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
      Array([ 0.49375, -1.     ,  0.     ,  2.     ], dtype=float32)
      >>> q = lowrank.quantize_blockwise(jnp.array([4.0, 1.0, 0.25, 0.0]), signed=False,
      ...                                block_size=4)
      >>> q.scales  # sqrt(4): the unsigned format stores square roots
      Array([2.], dtype=float32)
      >>> lowrank.dequantize_blockwise(q, block_size=4)
      Array([4.        , 1.0031273 , 0.24533446, 0.        ], dtype=float32)
    """
    block_size = v.check_int("block_size", block_size, minimum=1)
    x = jnp.asarray(x)
    _check_floating(x)
    return quantize_many([x], [signed], block_size)[0]


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
    scales = scales.astype(work).reshape(_blocks_lead(layout, specs))
    values = _decode_unit(codes, signed).astype(work)
    blocks = _to_blocks(values, layout, specs, codes) * scales[..., None]
    if not signed:
        blocks = jnp.square(blocks)  # the unsigned format stores square roots
    return _from_blocks(blocks, layout, specs, codes).astype(q.scales.dtype)
