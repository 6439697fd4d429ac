"""A numpy reference of block-wise dynamic-map quantization, independent of the JAX code.

The code map is built by reading every 8-bit pattern as the paper describes it
(Dettmers 2016; Dettmers et al. 2022): [sign bit] | k zero bits (exponent 10^-k)
| an indicator 1 | f fraction bits F, value ±10^-k (0.1 + 0.9 (F + 1) / 2^f); a
pattern whose magnitude bits are all zero is 0. Quantization picks the nearest map
value by brute force (float64 argmin over all 256 values), per block of
``block_size`` consecutive elements of each row, where rows are the smallest
trailing axis group with at least ``block_size`` elements. The unsigned format
stores square roots (values ``x >= 0`` are quantized as ``sqrt(x)`` and decoded as
``(code value · scale)²``). Nothing here calls ``lowrank_optax``.
"""

from __future__ import annotations

import math

import numpy as np


def pattern_value(pattern: int, signed: bool) -> float:
    """The value of an 8-bit pattern under the signed or unsigned dynamic map."""
    if signed:
        sign = -1.0 if pattern & 0x80 else 1.0
        bits, width = pattern & 0x7F, 7
    else:
        sign, bits, width = 1.0, pattern, 8
    if bits == 0:
        return 0.0
    zeros = width - bits.bit_length()  # leading zeros after the sign bit
    fraction_bits = width - zeros - 1  # bits after the indicator
    fraction = bits - (1 << fraction_bits)
    return sign * 10.0**-zeros * (0.1 + 0.9 * (fraction + 1) / 2**fraction_bits)


def stored_code(pattern: int, signed: bool) -> int:
    """The integer stored for a pattern: sign-magnitude as int8 (``-0`` is -128) or uint8."""
    if not signed:
        return pattern
    bits = pattern & 0x7F
    if pattern & 0x80:
        return -bits if bits else -128
    return bits


def code_table(signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """(stored codes, float64 values) of the 255 (signed) or 256 (unsigned) distinct codes."""
    codes, values = [], []
    for pattern in range(256):
        if signed and pattern == 0x80:  # negative zero: never written
            continue
        codes.append(stored_code(pattern, signed))
        values.append(pattern_value(pattern, signed))
    return np.asarray(codes), np.asarray(values)


def rows_layout(shape: tuple[int, ...], block_size: int) -> tuple[int, int]:
    """(number of leading axes, row length) for ``shape``."""
    lead, row = len(shape), 1
    while lead > 0 and row < block_size:
        lead -= 1
        row *= shape[lead]
    return lead, row


def quantize(x: np.ndarray, *, signed: bool, block_size: int) -> dict[str, np.ndarray]:
    """Reference quantization: codes, scales, the stored quantity (``x`` or ``sqrt(x)``),
    its normalised values, their distance (in units of the block scale) to the chosen
    code and to the second-nearest one, and the dequantized values."""
    x = np.asarray(x, np.float64)
    # float32 subnormals count as zero (XLA's CPU arithmetic flushes them; documented).
    x = np.where(np.abs(x) < np.finfo(np.float32).tiny, 0.0, x)
    # The stored quantity: x itself (signed) or its square root (unsigned).
    with np.errstate(invalid="ignore"):
        stored = x if signed else np.sqrt(np.maximum(x, 0.0))
    stored = np.where(np.isnan(x), np.nan, stored)
    lead, row = rows_layout(x.shape, block_size)
    nblocks = max(1, math.ceil(row / block_size))
    rows = stored.reshape(-1, row)
    padded = np.zeros((rows.shape[0], nblocks * block_size))
    padded[:, :row] = rows
    blocks = padded.reshape(rows.shape[0], nblocks, block_size)
    with np.errstate(invalid="ignore"):
        absmax = np.max(np.abs(blocks), axis=-1)
    finite = np.isfinite(absmax)
    safe = np.where(finite & (absmax > 0), absmax, 1.0)
    a = np.where(finite[..., None], blocks / safe[..., None], 0.0)
    codes_table, values = code_table(signed)
    dist = np.abs(a[..., None] - values)
    nearest = np.argmin(dist, axis=-1)
    codes = codes_table[nearest]
    error = np.take_along_axis(dist, nearest[..., None], axis=-1)[..., 0]
    # Second-nearest distance: a tie (within rounding) makes either code correct.
    second = np.partition(dist, 1, axis=-1)[..., 1]
    scales = np.where(finite, absmax, np.nan)

    def unblock(v: np.ndarray) -> np.ndarray:
        return v.reshape(rows.shape[0], -1)[:, :row].reshape(x.shape)

    decoded = values[nearest] * scales[..., None]
    return {
        "codes": unblock(codes),
        "scales": scales.reshape(*x.shape[:lead], nblocks),
        "stored": stored,
        "normalised": unblock(a),
        "error": unblock(error),
        "tie_margin": unblock(second - error),
        "values": unblock(decoded if signed else decoded**2),
    }


def dequantize(
    codes: np.ndarray, scales: np.ndarray, *, signed: bool, block_size: int
) -> np.ndarray:
    """Reference dequantization of stored codes and per-block scales (float64)."""
    codes = np.asarray(codes).astype(np.int64)
    table = {stored_code(p, signed): pattern_value(p, signed) for p in range(256)}
    if signed:
        table[-128] = -1.0
    values = np.vectorize(table.__getitem__, otypes=[np.float64])(codes)
    lead, row = rows_layout(codes.shape, block_size)
    nblocks = max(1, math.ceil(row / block_size))
    per_element = np.repeat(np.asarray(scales, np.float64).reshape(-1, nblocks), block_size, axis=1)
    per_element = per_element[:, :row].reshape(codes.shape)
    decoded = values * per_element
    return decoded if signed else decoded**2


def half_gap(normalised: np.ndarray, *, signed: bool) -> np.ndarray:
    """Half the distance between the two map values that bracket ``|normalised|``."""
    _, values = code_table(signed)
    magnitudes = np.unique(np.abs(values))
    a = np.clip(np.abs(normalised), 0.0, 1.0)
    hi = np.clip(np.searchsorted(magnitudes, a, side="left"), 1, len(magnitudes) - 1)
    return (magnitudes[hi] - magnitudes[hi - 1]) / 2
