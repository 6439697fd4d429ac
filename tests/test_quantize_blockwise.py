"""Block-wise dynamic-map quantization against the independent numpy reference."""

from __future__ import annotations

import functools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import quantize_reference as ref
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lowrank_optax as lowrank

quantize = jax.jit(lowrank.quantize_blockwise, static_argnames=("signed", "block_size"))
dequantize = jax.jit(lowrank.dequantize_blockwise, static_argnames=("block_size",))

# A few fixed shapes (one compilation each) covering: rows of the last axis, padded
# last blocks, merged trailing axes, 1-D, a single block, fewer elements than a block.
SHAPES = [(300,), (5, 40), (3, 4, 6), (7,), (2, 130)]
BLOCKS = [1, 16, 64]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _roundtrip(x: np.ndarray, signed: bool, block_size: int) -> tuple[np.ndarray, ...]:
    q = quantize(jnp.asarray(x), signed=signed, block_size=block_size)
    y = dequantize(q, block_size=block_size)
    return np.asarray(q.codes), np.asarray(q.scales), np.asarray(y, np.float64)


def _stored(y: np.ndarray, signed: bool) -> np.ndarray:
    """The quantity a format stores: ``y`` (signed) or ``sqrt(y)`` (unsigned)."""
    y = np.asarray(y, np.float64)
    return y if signed else np.sqrt(np.maximum(y, 0.0))


def _tiny(signed: bool) -> float:
    """Below this a stored value may flush to zero (float32 subnormals)."""
    tiny = float(np.finfo(np.float32).tiny)
    return tiny if signed else float(np.sqrt(tiny))


def _element_scales(scales: np.ndarray, shape: tuple[int, ...], block_size: int) -> np.ndarray:
    """Each element's block scale."""
    _, row = ref.rows_layout(shape, block_size)
    nblocks = scales.shape[-1]
    per_row = np.repeat(scales.reshape(-1, nblocks), block_size, axis=1)[:, :row]
    return per_row.reshape(shape)


@st.composite
def arrays(draw: st.DrawFn) -> tuple[np.ndarray, bool, int]:
    shape = draw(st.sampled_from(SHAPES))
    block_size = draw(st.sampled_from(BLOCKS))
    signed = draw(st.booleans())
    # Values spanning many orders of magnitude, with exact zeros.
    exponents = draw(hnp.arrays(np.float64, shape, elements=st.floats(-12, 6)))
    mantissa = draw(hnp.arrays(np.float64, shape, elements=st.floats(-1, 1)))
    x = (mantissa * 10.0**exponents).astype(np.float32)
    if not signed:
        x = np.abs(x)
    return x, signed, block_size


class TestCodeMap:
    @pytest.mark.parametrize("signed", [True, False])
    def test_map_equals_bit_pattern_definition(self, signed):
        _, values = ref.code_table(signed)
        expected = np.sort(values).astype(np.float32)
        got = lowrank.dynamic_code_map(signed)
        if signed:
            assert got[0] == -1.0  # the never-written code -128
            got = got[1:]
        np.testing.assert_array_equal(got, expected)
        assert np.all(np.diff(got) > 0)
        nonzero = np.abs(got[got != 0])
        assert nonzero.min() == np.float32(1e-6 if signed else 1e-7)
        assert got.max() == 1.0 and 0.0 in got

    @pytest.mark.parametrize("signed", [True, False])
    def test_every_code_decodes_to_its_value(self, signed):
        codes = np.arange(-128, 128) if signed else np.arange(256)
        dtype = jnp.int8 if signed else jnp.uint8
        q = lowrank.QuantizedArray(jnp.asarray(codes, dtype), jnp.ones((1,), jnp.float32))
        got = np.asarray(lowrank.dequantize_blockwise(q, block_size=256), np.float64)
        expected = ref.dequantize(codes, np.ones(1), signed=signed, block_size=256)
        np.testing.assert_allclose(got, expected, rtol=2e-6, atol=0)
        if signed:  # decade tops (and ±1) decode exactly
            tops = np.isin(np.abs(expected), 10.0 ** -np.arange(8))
            np.testing.assert_array_equal(got[tops], expected[tops].astype(np.float32))
        else:  # the unsigned format squares its code value: 0 and 1 stay exact
            assert got[0] == 0.0 and got[-1] == 1.0


class TestAgainstReference:
    @SETTINGS
    @given(arrays())
    def test_codes_scales_and_error_bound(self, case):
        x, signed, block_size = case
        codes, scales, y = _roundtrip(x, signed, block_size)
        r = ref.quantize(x, signed=signed, block_size=block_size)
        np.testing.assert_array_equal(scales, r["scales"].astype(np.float32))
        # The nearest code, except where two codes are (within rounding) equally near.
        clear = r["tie_margin"] > 1e-5
        np.testing.assert_array_equal(codes[clear], r["codes"][clear])
        # Error per element in the stored domain (x, or sqrt(x) unsigned): the
        # nearest code's, plus float32 rounding (and a subnormal result flushed).
        scale = _element_scales(r["scales"], x.shape, block_size)
        truth, got = r["stored"], _stored(y, signed)
        nearest = _stored(r["values"], signed)
        bound = np.abs(nearest - truth) + 2e-6 * np.abs(truth) + 1e-6 * scale + _tiny(signed)
        assert np.all(np.abs(got - truth) <= bound)

    @SETTINGS
    @given(arrays())
    def test_block_error_bound(self, case):
        x, signed, block_size = case
        _, _, y = _roundtrip(x, signed, block_size)
        r = ref.quantize(x, signed=signed, block_size=block_size)
        gap = ref.half_gap(r["normalised"], signed=signed)
        scale = _element_scales(r["scales"], x.shape, block_size)
        # In the stored domain: |r - r̂| ≤ s · (half the local grid step), and
        # ≤ 0.45/2^f s overall; a block with a subnormal maximum is stored as zeros.
        err = np.abs(_stored(y, signed) - r["stored"])
        tiny = _tiny(signed)
        assert np.all(err <= scale * gap * (1 + 1e-5) + 1e-6 * scale + tiny)
        worst = (0.45 / 64) if signed else (0.45 / 128)
        assert np.all(err <= scale * worst * (1 + 1e-5) + tiny)
        if not signed:  # in x itself: |x - x̂| ≤ (2 · 0.0035 + 0.0035²) max(x)
            bound = (2 * worst + worst**2) * scale**2 * (1 + 1e-5) + 2 * tiny * scale
            assert np.all(np.abs(y - x) <= bound + np.finfo(np.float32).tiny)

    @SETTINGS
    @given(arrays())
    def test_dequantize_matches_reference_dequantize(self, case):
        x, signed, block_size = case
        codes, scales, y = _roundtrip(x, signed, block_size)
        expected = ref.dequantize(codes, scales, signed=signed, block_size=block_size)
        np.testing.assert_allclose(y, expected, rtol=2e-6, atol=np.finfo(np.float32).tiny)


class TestDegenerate:
    def test_all_zero_blocks_are_exact(self):
        x = np.zeros((4, 64), np.float32)
        x[1, :32] = np.linspace(-1, 1, 32)
        codes, scales, y = _roundtrip(x, True, 32)
        np.testing.assert_array_equal(scales[0], 0)
        np.testing.assert_array_equal(codes[0], 0)
        np.testing.assert_array_equal(y[0], 0)
        np.testing.assert_array_equal(y[1, 32:], 0)
        assert np.all(np.isfinite(y))

    @pytest.mark.parametrize("sign", [1.0, -1.0])
    def test_single_sign_blocks_keep_their_sign(self, sign):
        rng = np.random.default_rng(0)
        x = (sign * rng.uniform(1e-3, 2.0, (3, 100))).astype(np.float32)
        codes, scales, y = _roundtrip(x, True, 50)
        assert np.all(np.sign(y) == sign)
        assert np.all(np.sign(codes) == sign)
        # Bounds of the code map plus float32 rounding of values of the block's size
        # (a few ulps of the scale; how many depends on the compiler's use of FMAs).
        ulps = 4 * np.finfo(np.float32).eps
        bound = scales.repeat(50, axis=1) * (0.45 / 64 + ulps)
        assert np.all(np.abs(y - x) <= bound)
        if sign > 0:  # the unsigned format: one more bit, on sqrt(x)
            _, scales_u, y_u = _roundtrip(x, False, 50)
            err = np.abs(np.sqrt(y_u) - np.sqrt(x.astype(np.float64)))
            assert np.all(err <= scales_u.repeat(50, axis=1) * (0.45 / 128 + ulps))

    @pytest.mark.parametrize("huge", [1e30, 3.0e38, -3.0e38])
    def test_one_huge_value(self, huge):
        x = np.full((64,), 0.5, np.float32)
        x[7] = huge
        x[9] = -1e-3 * huge  # still above the smallest code
        codes, scales, y = _roundtrip(x, True, 64)
        assert scales[0] == np.float32(abs(huge))
        assert np.all(np.isfinite(y))
        np.testing.assert_allclose(y[7], huge, rtol=1e-6)
        np.testing.assert_allclose(y[9], x[9], rtol=0.05)
        # Relative to the huge block maximum, 0.5 is below the smallest code: stored as 0.
        np.testing.assert_array_equal(np.delete(y, [7, 9]), 0.0)

    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
    def test_non_finite_spreads_to_its_block_only(self, bad):
        x = np.linspace(-1, 1, 96, dtype=np.float32).reshape(3, 32)
        x[1, 5] = bad
        for signed in (True, False):
            xs = x if signed else np.abs(x)
            codes, scales, y = _roundtrip(xs, signed, 32)
            assert np.isnan(scales[1, 0]) and np.all(np.isfinite(scales[[0, 2], 0]))
            np.testing.assert_array_equal(codes[1], 0)
            assert np.all(np.isnan(y[1]))
            assert np.all(np.isfinite(y[[0, 2]]))
            expected = ref.quantize(xs[[0, 2]], signed=signed, block_size=32)["values"]
            np.testing.assert_allclose(y[[0, 2]], expected, rtol=1e-5, atol=1e-7)

    def test_negative_values_in_the_unsigned_map_are_zero(self):
        x = np.array([-2.0, 1.0, -0.5, 0.25], np.float32)
        codes, scales, y = _roundtrip(x, False, 4)
        assert scales[0] == 1.0  # sqrt of the largest non-negative value
        np.testing.assert_array_equal(y[[0, 2]], 0.0)
        np.testing.assert_allclose(np.sqrt(y[[1, 3]]), [1.0, 0.5], atol=0.45 / 128)

    @pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
    def test_half_precision_leaves(self, dtype):
        rng = np.random.default_rng(1)
        x = jnp.asarray(rng.standard_normal((4, 80)), dtype)
        q = quantize(x, signed=True, block_size=32)
        assert q.scales.dtype == dtype and q.codes.dtype == jnp.int8
        y = dequantize(q, block_size=32)
        assert y.dtype == dtype
        x64 = np.asarray(x, np.float64)
        r = ref.quantize(x64, signed=True, block_size=32)
        np.testing.assert_array_equal(np.asarray(q.scales, np.float64), r["scales"])
        # The reference's values, rounded once more to the half-precision dtype.
        eps = float(jnp.finfo(dtype).eps)
        np.testing.assert_allclose(np.asarray(y, np.float64), r["values"], rtol=eps, atol=1e-30)

    def test_subnormal_block_is_stored_as_zeros(self):
        x = np.full((8,), 1e-39, np.float32)  # float32 subnormals
        x[1] = -3e-40
        codes, scales, y = _roundtrip(np.concatenate([x, np.ones(8, np.float32)]), True, 8)
        np.testing.assert_array_equal(scales, [0.0, 1.0])
        np.testing.assert_array_equal(y[:8], 0.0)
        np.testing.assert_array_equal(y[8:], 1.0)

    @pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
    def test_half_precision_unsigned_scale_rounds_up(self, dtype):
        rng = np.random.default_rng(2)
        x = jnp.asarray(rng.uniform(0.0, 3.0, (4, 64)) ** 2, dtype)
        q = quantize(x, signed=False, block_size=32)
        y = np.asarray(dequantize(q, block_size=32), np.float64)
        x64 = np.asarray(x, np.float64).reshape(4, 2, 32)
        root_max = np.sqrt(x64.max(axis=-1))
        stored = np.asarray(q.scales, np.float64)
        # sqrt(max) is not a half-precision value: the stored scale is the next one up.
        assert np.all(stored >= root_max) and np.all(stored <= root_max * (1 + 2 * 2.0**-7))
        eps = float(jnp.finfo(dtype).eps)
        err = np.abs(y.reshape(4, 2, 32) - x64)
        assert np.all(err <= (2 * 0.45 / 128 + 3 * eps) * stored[..., None] ** 2)

    def test_float16_tiny_values(self):
        x = jnp.asarray([6e-8, -3e-8, 0.0, 1e-7], jnp.float16)  # subnormal halves
        y = dequantize(quantize(x, signed=True, block_size=4), block_size=4)
        assert np.all(np.isfinite(np.asarray(y, np.float32)))
        np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(x, np.float32), atol=2e-8)


class TestLayout:
    @pytest.mark.parametrize(
        ("shape", "block_size", "scales_shape"),
        [
            ((4, 1000), 256, (4, 4)),  # last axis, padded last block
            ((4, 512), 256, (4, 2)),
            ((64, 96), 256, (24,)),  # last axis shorter than a block: merged with rows
            ((2, 3, 100), 256, (2, 2)),  # rows of the last two axes (300 elements)
            ((10,), 256, (1,)),  # fewer elements than a block
            ((2, 3, 5), 7, (2, 3)),
        ],
    )
    def test_scales_shape(self, shape, block_size, scales_shape):
        layout = lowrank.block_layout(shape, block_size)
        expected = scales_shape
        assert layout.scales_shape == expected
        x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
        q = quantize(x, signed=True, block_size=block_size)
        assert q.codes.shape == shape and q.scales.shape == expected
        r = ref.quantize(np.asarray(x), signed=True, block_size=block_size)
        assert r["scales"].shape == expected

    def test_validation(self):
        x = jnp.ones((4,))
        with pytest.raises(ValueError, match="block_size"):
            lowrank.quantize_blockwise(x, block_size=0)
        with pytest.raises(ValueError, match="`x`"):
            lowrank.quantize_blockwise(jnp.ones((4,), jnp.int32))
        q = lowrank.quantize_blockwise(x, block_size=2)
        with pytest.raises(ValueError, match="scales"):
            lowrank.dequantize_blockwise(q, block_size=4)
        with pytest.raises(ValueError, match="codes"):
            lowrank.dequantize_blockwise(q._replace(codes=q.codes.astype(jnp.int32)), block_size=2)


@functools.cache
def _encode_all() -> tuple[np.ndarray, np.ndarray]:
    a = np.linspace(0.0, 1.0, 60_001, dtype=np.float32)
    codes = np.asarray(quantize(jnp.asarray(a), signed=False, block_size=a.size).codes)
    return a, codes


def test_dense_sweep_matches_reference_nearest():
    """Every normalised value on a fine grid gets the reference's nearest code."""
    a, codes = _encode_all()
    r = ref.quantize(a, signed=False, block_size=a.size)
    clear = r["tie_margin"] > 1e-6
    np.testing.assert_array_equal(codes[clear], r["codes"][clear])


def test_dense_sweep_signed_matches_reference_nearest():
    """The signed map on a fine grid of both signs: the reference's nearest code."""
    a = np.linspace(-1.0, 1.0, 40_001, dtype=np.float32)
    codes = np.asarray(quantize(jnp.asarray(a), signed=True, block_size=a.size).codes)
    r = ref.quantize(a, signed=True, block_size=a.size)
    clear = r["tie_margin"] > 1e-6
    np.testing.assert_array_equal(codes[clear], r["codes"][clear])


@pytest.mark.parametrize("signed", [True, False])
def test_extreme_block_maxima(signed):
    """Blocks whose maximum is the smallest normal float32, tiny, ordinary, huge, or
    the largest float32: codes and scales as the reference's (the encoder normalises
    by a power of two per block, so neither its slopes nor the values overflow)."""
    tiny = float(np.finfo(np.float32).tiny)
    top = float(np.finfo(np.float32).max)
    rng = np.random.default_rng(3)
    rows = []
    for peak in (tiny, 1e-30, 1.0, 1e30, top):
        row = rng.uniform(-1, 1, 16) * 10.0 ** rng.uniform(-8, 0, 16)
        row = row / np.max(np.abs(row)) * peak
        rows.append(row if signed else np.abs(row))
    x = np.asarray(rows, np.float32)
    x = np.where(np.abs(x) < tiny, 0, x).astype(np.float32)  # no subnormal inputs
    codes, scales, y = _roundtrip(x, signed, 16)
    r = ref.quantize(x, signed=signed, block_size=16)
    np.testing.assert_array_equal(scales, r["scales"].astype(np.float32))
    clear = r["tie_margin"] > 1e-5
    np.testing.assert_array_equal(codes[clear], r["codes"][clear])
    assert np.all(np.isfinite(y))


@pytest.mark.parametrize("sequence", [False, True])
def test_quantize_many_equals_one_at_a_time(sequence):
    """Grouped quantization (shared block-maximum reductions, paired and sequenced
    as quantize_state does) stores exactly what quantize_blockwise stores."""
    from lowrank_optax._src.blockwise import quantize_many

    rng = np.random.default_rng(4)
    arrays = [
        jnp.asarray(rng.standard_normal((5, 40)), jnp.float32),
        jnp.asarray(rng.standard_normal((5, 40)) ** 2, jnp.float32),
        jnp.asarray(rng.standard_normal((5, 40)), jnp.float32),  # third of its layout
        jnp.asarray(rng.standard_normal((3, 4, 6)) ** 2, jnp.float32),  # alone
        jnp.asarray(rng.standard_normal((5, 40)), jnp.bfloat16),
    ]
    arrays[0] = arrays[0].at[2, 7].set(jnp.nan)
    signed = [True, False, True, False, True]
    got = jax.jit(lambda xs: quantize_many(xs, signed, 16, sequence=sequence))(arrays)
    for x, s, q in zip(arrays, signed, got, strict=True):
        expected = quantize(x, signed=s, block_size=16)
        np.testing.assert_array_equal(np.asarray(q.codes), np.asarray(expected.codes))
        np.testing.assert_array_equal(np.asarray(q.scales), np.asarray(expected.scales))
