"""Deterministic bases: the sign rule, the canonical SVD and the randomized range finder."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized
from core_np import canonical_signs, svd_basis
from optax._src import utils as optax_utils

import lowrank_optax as lowrank
from lowrank_optax._src import linalg

# jit once per shape/static config: eager dispatch compiles every primitive separately.
_randomized = jax.jit(
    lowrank.randomized_factors,
    static_argnums=1,
    static_argnames=("oversampling", "power_iterations", "sides"),
)
_svd = jax.jit(lowrank.svd_factors, static_argnums=1)


def _random(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _low_rank(m, n, k, seed=0):
    """An m×n matrix of rank k with well separated singular values."""
    rng = np.random.default_rng(seed)
    a = np.linalg.qr(rng.standard_normal((m, k)))[0]
    b = np.linalg.qr(rng.standard_normal((n, k)))[0]
    s = np.linspace(4.0, 1.0, k)
    return ((a * s) @ b.T).astype(np.float32)


class CanonicalizeSignsTest(parameterized.TestCase):
    def test_rule_on_hand_made_columns(self):
        u = np.array(
            [
                # col0: peak -0.9 (row 1) -> flip; col1: tie 0.5/-0.5 -> first index (+) kept;
                # col2: tie -0.5/0.5 -> first index (-) -> flip; col3: all zero -> kept, finite;
                # col4: peak +0.8 (row 2) -> kept.
                [0.1, 0.5, -0.5, 0.0, 0.3],
                [-0.9, -0.5, 0.5, 0.0, -0.1],
                [0.3, 0.0, 0.1, 0.0, 0.8],
            ],
            np.float32,
        )
        vh = np.arange(1.0, 11.0, dtype=np.float32).reshape(5, 2)
        cu, cvh = lowrank.canonicalize_signs(jnp.asarray(u), jnp.asarray(vh))
        flips = np.array([-1.0, 1.0, -1.0, 1.0, 1.0], np.float32)
        np.testing.assert_array_equal(np.asarray(cu), u * flips)
        np.testing.assert_array_equal(np.asarray(cvh), vh * flips[:, None])
        self.assertTrue(np.all(np.isfinite(np.asarray(cu))))
        np.testing.assert_array_equal(np.asarray(cu)[:, 3], 0.0)

    def test_differentiable_with_piecewise_constant_signs(self):
        # A refresh can be traced under jax.jvp/grad (the fused update's backward
        # scan); the sign rule must not need a JVP of its variadic reduction, and the
        # signs act as constants: d/du (u * s(u)) = s(u).
        u = jnp.asarray(_random((5, 3), seed=4))
        signs = np.sign(np.asarray(lowrank.canonicalize_signs(u, None)[0]) / np.asarray(u))
        tangent = jnp.asarray(_random((5, 3), seed=5))
        _, jvp = jax.jvp(lambda x: lowrank.canonicalize_signs(x, None)[0], (u,), (tangent,))
        np.testing.assert_allclose(np.asarray(jvp), np.asarray(tangent) * signs, rtol=1e-6)

    def test_product_is_invariant_and_rule_holds_on_random_batches(self):
        u = _random((3, 7, 4), seed=1)
        vh = _random((3, 4, 5), seed=2)
        cu, cvh = map(np.asarray, lowrank.canonicalize_signs(jnp.asarray(u), jnp.asarray(vh)))
        np.testing.assert_allclose(cu @ cvh, u @ vh, rtol=1e-6)
        for b in range(3):
            ref_u, ref_vh = canonical_signs(u[b], vh[b])
            np.testing.assert_array_equal(cu[b], ref_u.astype(np.float32))
            np.testing.assert_array_equal(cvh[b], ref_vh.astype(np.float32))

    def test_rule_on_tie_heavy_columns_against_numpy(self):
        # The rule is computed by reductions only (argmax of |u|, argmax and max of
        # u; no gather, so it runs on row-sharded columns): entries in {-2..2} give
        # many magnitude ties, constant negative and all-zero columns.
        u = np.random.default_rng(7).integers(-2, 3, size=(5, 200)).astype(np.float32)
        u[:, 0], u[:, 1], u[:, 2] = -1.0, 0.0, 2.0
        vh = _random((200, 3), seed=8)
        cu, cvh = map(np.asarray, lowrank.canonicalize_signs(jnp.asarray(u), jnp.asarray(vh)))
        ref_u, ref_vh = canonical_signs(u, vh)
        np.testing.assert_array_equal(cu, ref_u.astype(np.float32))
        np.testing.assert_array_equal(cvh, ref_vh.astype(np.float32))

    def test_idempotent(self):
        u, vh = jnp.asarray(_random((6, 3), 3)), jnp.asarray(_random((3, 4), 4))
        once = lowrank.canonicalize_signs(u, vh)
        twice = lowrank.canonicalize_signs(*once)
        for a, b in zip(once, twice, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class SvdFactorsTest(parameterized.TestCase):
    @parameterized.parameters(((8, 5), 3), ((5, 8), 3), ((6, 6), 6), ((4, 9), 1))
    def test_matches_numpy_canonical_svd(self, shape, rank):
        g = _random(shape, seed=sum(shape))
        u, vh = _svd(jnp.asarray(g), rank)
        self.assertEqual(u.shape, (shape[0], rank))
        self.assertEqual(vh.shape, (rank, shape[1]))
        ref_u, ref_vh = svd_basis(g, rank)
        np.testing.assert_allclose(np.asarray(u), ref_u, atol=2e-5)
        np.testing.assert_allclose(np.asarray(vh), ref_vh, atol=2e-5)

    def test_batched(self):
        g = _random((2, 3, 7, 5), seed=5)
        u, vh = _svd(jnp.asarray(g), 2)
        self.assertEqual(u.shape, (2, 3, 7, 2))
        self.assertEqual(vh.shape, (2, 3, 2, 5))
        for i in range(2):
            for j in range(3):
                ref_u, ref_vh = svd_basis(g[i, j], 2)
                np.testing.assert_allclose(np.asarray(u[i, j]), ref_u, atol=2e-5)
                np.testing.assert_allclose(np.asarray(vh[i, j]), ref_vh, atol=2e-5)

    def test_bf16_is_decomposed_in_float32(self):
        g = jnp.asarray(_random((7, 4), seed=6)).astype(jnp.bfloat16)
        u, vh = _svd(g, 2)
        self.assertEqual(u.dtype, jnp.float32)
        self.assertEqual(vh.dtype, jnp.float32)
        u32, vh32 = _svd(g.astype(jnp.float32), 2)
        np.testing.assert_array_equal(np.asarray(u), np.asarray(u32))
        np.testing.assert_array_equal(np.asarray(vh), np.asarray(vh32))

    def test_float64_stays_float64(self):
        with optax_utils.x64_precision(True):
            g = jnp.asarray(_random((6, 4), seed=7), jnp.float64)
            u, vh = _svd(g, 2)
            self.assertEqual(u.dtype, jnp.float64)
            ref_u, ref_vh = svd_basis(np.asarray(g), 2)
            np.testing.assert_allclose(np.asarray(u), ref_u, atol=1e-12)
            np.testing.assert_allclose(np.asarray(vh), ref_vh, atol=1e-12)

    def test_zero_matrix_gives_finite_factors(self):
        u, vh = _svd(jnp.zeros((5, 3)), 2)
        self.assertTrue(np.all(np.isfinite(np.asarray(u))))
        self.assertTrue(np.all(np.isfinite(np.asarray(vh))))

    @parameterized.parameters(np.inf, -np.inf, np.nan)
    def test_non_finite_matrix_gives_nan_factors_and_returns(self, bad):
        # LAPACK's gesdd never returns on a wide float32 matrix with an infinity (3×5
        # here): the library must not call it on one. Batch elements are independent.
        g = np.stack([_random((3, 5), seed=s) for s in (30, 31)])
        g[1, 0, 3] = bad
        u, vh = _svd(jnp.asarray(g), 2)
        ref_u, ref_vh = svd_basis(g[0], 2)
        np.testing.assert_allclose(np.asarray(u[0]), ref_u, atol=1e-5)
        np.testing.assert_allclose(np.asarray(vh[0]), ref_vh, atol=1e-5)
        self.assertTrue(np.all(np.isnan(np.asarray(u[1]))))
        self.assertTrue(np.all(np.isnan(np.asarray(vh[1]))))


class PositiveQrTest(absltest.TestCase):
    def test_diagonal_of_r_is_nonnegative(self):
        y = jnp.asarray(_random((2, 9, 4), seed=8))
        q = linalg.positive_qr(y)
        r = np.asarray(jnp.swapaxes(q, -1, -2) @ y)
        np.testing.assert_allclose(np.asarray(q @ r), np.asarray(y), atol=1e-5)
        self.assertTrue(np.all(np.diagonal(r, axis1=-2, axis2=-1) >= 0))
        np.testing.assert_allclose(np.tril(r, -1), 0.0, atol=1e-5)


_qr = jax.jit(linalg.qr_factors)


class QrFactorsTest(parameterized.TestCase):
    """CholeskyQR2 fast path and its Householder fallback give the same factorisation."""

    def _check(self, y, q, r, atol):
        q, r = np.asarray(q), np.asarray(r)
        k = y.shape[-1]
        np.testing.assert_allclose(
            np.swapaxes(q, -1, -2) @ q, np.broadcast_to(np.eye(k), r.shape), atol=atol
        )
        np.testing.assert_allclose(q @ r, y, atol=atol * max(1.0, float(np.abs(y).max())))
        self.assertTrue(np.all(np.diagonal(r, axis1=-2, axis2=-1) >= 0))
        np.testing.assert_allclose(np.tril(r, -1), 0.0, atol=atol)

    @parameterized.parameters(((300, 12),), ((3, 40, 7),))
    def test_full_rank_equals_householder_with_positive_diagonal(self, shape):
        y = _random(shape, seed=11)
        q, r = _qr(jnp.asarray(y))
        self._check(y, q, r, atol=2e-5)
        # The QR with diag(R) > 0 is unique: numpy's Householder QR, sign-fixed.
        qn, rn = np.linalg.qr(y.astype(np.float64))
        sign = np.sign(np.diagonal(rn, axis1=-2, axis2=-1))
        np.testing.assert_allclose(np.asarray(q), qn * sign[..., None, :], atol=2e-5)

    def test_rank_deficient_falls_back_to_an_orthonormal_q(self):
        # rank 2 < k = 6: the Cholesky of the Gram breaks down (or is inaccurate),
        # and the Householder fallback still returns an orthonormal Q with QR = Y.
        y = (_random((60, 2), seed=12) @ _random((2, 6), seed=13)).astype(np.float32)
        q, r = _qr(jnp.asarray(y))
        self._check(y, q, r, atol=2e-5)

    def test_ill_conditioned_falls_back(self):
        # Singular values over 6 decades, mixed by orthogonal factors: the Gram's
        # condition number (1e12) is beyond float32, CholeskyQR2 loses orthogonality.
        a = np.linalg.qr(_random((80, 5), seed=14).astype(np.float64))[0]
        b = np.linalg.qr(_random((5, 5), seed=16).astype(np.float64))[0]
        y = ((a * np.logspace(0, -6, 5)) @ b).astype(np.float32)
        q, r = _qr(jnp.asarray(y))
        self._check(y, q, r, atol=2e-5)

    @parameterized.parameters(0.0, 2.0, 3.5, 5.0, 7.0)
    def test_orthonormal_to_working_precision_across_conditioning(self, decades):
        # The fast path is accepted up to κ ≈ 10^3.5 in float32 and the fallback takes
        # over beyond; either way Q is as orthonormal as a Householder Q (~4e-7 here).
        rng = np.random.default_rng(17)
        a = np.linalg.qr(rng.standard_normal((500, 40)))[0]
        b = np.linalg.qr(rng.standard_normal((40, 40)))[0]
        y = ((a * np.logspace(0, -decades, 40)) @ b).astype(np.float32)
        q, r = _qr(jnp.asarray(y))
        q = np.asarray(q, np.float64)
        self.assertLess(np.abs(q.T @ q - np.eye(40)).max(), 2e-6)
        np.testing.assert_allclose(q @ np.asarray(r), y, atol=5e-6 * np.abs(y).max())

    def test_zero_matrix_gives_finite_orthonormal_q(self):
        q, r = _qr(jnp.zeros((10, 3)))
        self.assertTrue(np.all(np.isfinite(np.asarray(q))))
        np.testing.assert_allclose(np.asarray(q.T @ q), np.eye(3), atol=1e-6)
        np.testing.assert_allclose(np.asarray(r), 0.0, atol=1e-6)

    def test_float64(self):
        with jax.enable_x64(True):
            y = _random((50, 6), seed=15, dtype=np.float64)
            q, r = linalg.qr_factors(jnp.asarray(y))
            self.assertEqual(q.dtype, jnp.float64)
            self._check(y, q, r, atol=1e-12)


# Few distinct (shape, rank, oversampling, power_iterations) configurations: each one
# compiles the range finder once, and the tests below share them.
SPAN_CASES = ((20, 9, 3, 3, 0), (9, 20, 2, 4, 1), (16, 16, 4, 4, 2))  # m, n, rank(G), r, os


class RandomizedFactorsTest(parameterized.TestCase):
    @parameterized.parameters(*SPAN_CASES)
    def test_orthonormal_and_exact_span_when_rank_at_most_r(self, m, n, k, r, oversampling):
        g = _low_rank(m, n, k, seed=m + n)
        u, vh = _randomized(jnp.asarray(g), r, jax.random.PRNGKey(1), oversampling=oversampling)
        self.assertEqual(u.shape, (m, r))
        self.assertEqual(vh.shape, (r, n))
        u, vh = np.asarray(u, np.float64), np.asarray(vh, np.float64)
        np.testing.assert_allclose(u.T @ u, np.eye(r), atol=1e-5)
        np.testing.assert_allclose(vh @ vh.T, np.eye(r), atol=1e-5)
        np.testing.assert_allclose(u @ (u.T @ g), g, atol=1e-5)
        np.testing.assert_allclose((g @ vh.T) @ vh, g, atol=1e-5)
        if k == r:
            # Same singular vectors as the exact SVD, canonical signs included.
            ref_u, ref_vh = svd_basis(g, r)
            np.testing.assert_allclose(u, ref_u, atol=1e-4)
            np.testing.assert_allclose(vh, ref_vh, atol=1e-4)

    def test_same_key_same_basis_other_key_other_basis(self):
        g = jnp.asarray(_random((30, 20), seed=9))  # full rank: the sketch depends on the key
        run = lambda seed: _randomized(
            g, 3, jax.random.PRNGKey(seed), oversampling=1, power_iterations=0
        )
        a, b, c = run(0), run(0), run(1)
        np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
        np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))
        self.assertFalse(np.allclose(np.asarray(a[0]), np.asarray(c[0]), atol=1e-3))

    def test_power_iterations_approach_svd(self):
        # Full rank with a decaying spectrum (gaps the iterations can resolve).
        rng = np.random.default_rng(10)
        a = np.linalg.qr(rng.standard_normal((30, 20)))[0]
        b = np.linalg.qr(rng.standard_normal((20, 20)))[0]
        g = ((a * 0.7 ** np.arange(20)) @ b.T).astype(np.float32)
        ref_u, _ = svd_basis(g, 3)
        errs = []
        for q in (0, 4):
            # The error of one draw is random (a heavy tail over keys): take the
            # median over eight keys.
            err = []
            for seed in range(8):
                u, _ = _randomized(
                    jnp.asarray(g), 3, jax.random.PRNGKey(seed), oversampling=1, power_iterations=q
                )
                u = np.asarray(u, np.float64)
                err.append(np.linalg.norm(u @ u.T - ref_u @ ref_u.T))
            errs.append(np.median(err))
        self.assertLess(errs[1], 0.1 * errs[0])
        self.assertLess(errs[1], 1e-2)

    def test_bf16_is_decomposed_in_float32(self):
        g = jnp.asarray(_random((20, 9), seed=11)).astype(jnp.bfloat16)
        key = jax.random.PRNGKey(3)
        u, vh = _randomized(g, 3, key, oversampling=0)
        self.assertEqual(u.dtype, jnp.float32)
        self.assertEqual(vh.dtype, jnp.float32)
        u32, vh32 = _randomized(g.astype(jnp.float32), 3, key, oversampling=0)
        np.testing.assert_array_equal(np.asarray(u), np.asarray(u32))
        np.testing.assert_array_equal(np.asarray(vh), np.asarray(vh32))

    def test_batched_bases_are_independent(self):
        g = np.stack([_low_rank(10, 6, 2, seed=s) for s in (20, 21, 22)])
        u, vh = _randomized(jnp.asarray(g), 2, jax.random.PRNGKey(4))
        for b in range(3):
            ref_u, ref_vh = svd_basis(g[b], 2)
            np.testing.assert_allclose(np.asarray(u[b]), ref_u, atol=1e-4)
            np.testing.assert_allclose(np.asarray(vh[b]), ref_vh, atol=1e-4)


class OneSidedRandomizedTest(parameterized.TestCase):
    """``sides='left'``/``'right'``: one basis, sketched on its own side, same convention."""

    @parameterized.product(case=SPAN_CASES, side=("left", "right"))
    def test_one_basis_orthonormal_exact_span_and_canonical(self, case, side):
        m, n, k, r, oversampling = case
        g = _low_rank(m, n, k, seed=m + n)
        u, vh = _randomized(
            jnp.asarray(g), r, jax.random.PRNGKey(1), oversampling=oversampling, sides=side
        )
        ref_u, ref_vh = svd_basis(g, r)
        if side == "left":
            self.assertIsNone(vh)
            self.assertEqual(u.shape, (m, r))
            b, ref = np.asarray(u, np.float64), ref_u
            np.testing.assert_allclose(b @ (b.T @ g), g, atol=1e-5)
        else:
            self.assertIsNone(u)
            self.assertEqual(vh.shape, (r, n))
            b, ref = np.asarray(vh, np.float64).T, ref_vh.T
            np.testing.assert_allclose((g @ b) @ b.T, g, atol=1e-5)
        np.testing.assert_allclose(b.T @ b, np.eye(r), atol=1e-5)
        if k == r:  # the singular vectors themselves, signs set by the left vectors
            np.testing.assert_allclose(b, ref, atol=1e-4)

    @parameterized.parameters("left", "right")
    def test_power_iterations_approach_svd(self, side):
        rng = np.random.default_rng(10)
        a = np.linalg.qr(rng.standard_normal((30, 20)))[0]
        b = np.linalg.qr(rng.standard_normal((20, 20)))[0]
        g = ((a * 0.7 ** np.arange(20)) @ b.T).astype(np.float32)
        ref_u, ref_vh = svd_basis(g, 3)
        ref = ref_u if side == "left" else ref_vh.T
        errs = []
        for q in (0, 4):
            err = []
            for seed in range(8):  # median over keys: one draw's error has a heavy tail
                out = _randomized(
                    jnp.asarray(g),
                    3,
                    jax.random.PRNGKey(seed),
                    oversampling=1,
                    power_iterations=q,
                    sides=side,
                )
                x = np.asarray(out[0] if side == "left" else out[1].T, np.float64)
                err.append(np.linalg.norm(x @ x.T - ref @ ref.T))
            errs.append(np.median(err))
        self.assertLess(errs[1], 0.1 * errs[0])
        self.assertLess(errs[1], 1e-2)

    def test_batched_one_sided_bases_are_independent(self):
        g = np.stack([_low_rank(10, 6, 2, seed=s) for s in (20, 21, 22)])
        _, vh = _randomized(jnp.asarray(g), 2, jax.random.PRNGKey(4), sides="right")
        u, _ = _randomized(jnp.asarray(g), 2, jax.random.PRNGKey(4), sides="left")
        for b in range(3):
            ref_u, ref_vh = svd_basis(g[b], 2)
            np.testing.assert_allclose(np.asarray(u[b]), ref_u, atol=1e-4)
            np.testing.assert_allclose(np.asarray(vh[b]), ref_vh, atol=1e-4)

    @parameterized.parameters("both", "left", "right")
    def test_usability_flag_read_from_the_sketch(self, sides):
        g = np.stack([_random((9, 7), seed=s) for s in range(5)])
        g[1, 3, 2] = np.nan
        g[2, 0, 6] = np.inf
        g[3] = 0.0
        g[4, 8, 0] = -np.inf
        _, _, usable = linalg.randomized_factors_checked(
            jnp.asarray(g), 2, jax.random.PRNGKey(5), sides=sides
        )
        np.testing.assert_array_equal(np.asarray(usable), [True, False, False, False, False])

    @parameterized.product(sides=("both", "left", "right"), bad=(np.inf, np.nan))
    def test_non_finite_matrix_gives_nan_factors(self, sides, bad):
        g = np.stack([_low_rank(4, 7, 2, seed=s) for s in (32, 33)])
        g[1, 2, 5] = bad
        out = _randomized(jnp.asarray(g), 2, jax.random.PRNGKey(6), sides=sides)
        for x in out:
            if x is not None:
                self.assertTrue(np.all(np.isfinite(np.asarray(x[0]))))
                self.assertTrue(np.all(np.isnan(np.asarray(x[1]))))

    def test_invalid_sides_raises(self):
        with self.assertRaisesRegex(ValueError, "`sides`.*'both', 'left', 'right'"):
            lowrank.randomized_factors(jnp.ones((4, 3)), 2, jax.random.PRNGKey(0), sides="top")


class FullPrecisionTest(parameterized.TestCase):
    """Bases are computed with full-precision products whatever the default precision:
    TF32 (GPU) or bf16 passes (TPU) would cost orthonormality at the 1e-3 level."""

    @parameterized.parameters("both", "left", "right")
    def test_every_product_is_highest_under_a_reduced_default(self, sides):
        g, key = jnp.ones((12, 9)), jax.random.PRNGKey(0)
        with jax.default_matmul_precision("tensorfloat32"):
            text = (
                jax.jit(
                    lambda g, k: lowrank.randomized_factors(
                        g, 3, k, power_iterations=1, sides=sides
                    )
                )
                .lower(g, key)
                .as_text()
            )
            outside = jax.jit(lambda a: a @ a.T).lower(g).as_text()
        dots = [line for line in text.splitlines() if "dot_general" in line]
        self.assertGreaterEqual(len(dots), 4)
        for line in dots:
            self.assertIn("precision = [HIGHEST, HIGHEST]", line)
        # The setting is the library's own: it does not leak into the caller's code.
        self.assertNotIn("HIGHEST", outside)

    def test_qr_products_are_highest(self):
        with jax.default_matmul_precision("bfloat16"):
            text = jax.jit(linalg.qr_factors).lower(jnp.ones((12, 4))).as_text()
        dots = [line for line in text.splitlines() if "dot_general" in line]
        self.assertNotEmpty(dots)
        for line in dots:
            self.assertIn("precision = [HIGHEST, HIGHEST]", line)


if __name__ == "__main__":
    absltest.main()
