"""LRE linear algebra and bases against dense numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

import lowrank_optax as lowrank
from lowrank_optax._src.lre import linalg
from lowrank_optax._src.lre.bases import BasisSpec
from lowrank_optax._src.lre.curvatures import Correction


def np_regularize(lam, truncate=None, tol=None, damping=0.0, rdamping=0.0):
    """The reference's regularize_eigh on ascending eigenvalues, in numpy (values only)."""
    lam = np.sort(lam[np.isfinite(lam)])
    lam_max = lam[-1]
    if tol is not None:
        lam = lam[lam > tol * lam_max]
    if truncate is not None:
        lam = lam[-truncate:]
    return lam + damping + rdamping * lam_max


def orthonormal(rng, n, r):
    return np.linalg.qr(rng.normal(size=(n, r)))[0]


def projector(q):
    return q @ q.T


class RegularizeTest(parameterized.TestCase):
    @parameterized.parameters(
        dict(truncate=None, tol=None, damping=0.0, rdamping=0.0),
        dict(truncate=3, tol=None, damping=0.5, rdamping=0.0),
        dict(truncate=None, tol=0.1, damping=0.0, rdamping=0.01),
        dict(truncate=2, tol=-0.5, damping=1e-3, rdamping=1e-2),
    )
    def test_matches_reference(self, **kw):
        lam = np.array([-2.0, 0.05, 0.3, np.nan, 1.0, 4.0, np.inf, 0.2], np.float32)
        out, valid = linalg.regularize(jnp.asarray(lam), jnp.ones(lam.shape, bool), **kw)
        out, valid = np.asarray(out), np.asarray(valid)
        # inf is non-finite: dropped like NaN
        expected = np_regularize(np.where(np.isinf(lam), np.nan, lam), **kw)
        np.testing.assert_allclose(np.sort(out[valid]), expected, rtol=1e-6)
        self.assertTrue(np.all(out[~valid] == 0))

    def test_mask_is_respected(self):
        lam = jnp.array([5.0, 1.0, 3.0])
        out, valid = linalg.regularize(lam, jnp.array([False, True, True]), truncate=1)
        np.testing.assert_array_equal(valid, [False, False, True])
        np.testing.assert_allclose(out, [0.0, 0.0, 3.0])

    def test_nothing_valid(self):
        out, valid = linalg.regularize(jnp.zeros(3), jnp.zeros(3, bool), tol=0.1, damping=1.0)
        self.assertFalse(np.any(valid))
        np.testing.assert_array_equal(out, 0)


class EighUpdateTest(parameterized.TestCase):
    """Rank-k update of a truncated eigendecomposition vs dense eigh (top r, up to sign)."""

    @parameterized.parameters(
        dict(k=1, signed=False, asym=False),
        dict(k=3, signed=False, asym=False),
        dict(k=2, signed=True, asym=False),
        dict(k=2, signed=False, asym=True),
    )
    def test_top_r_matches_dense(self, k, signed, asym):
        rng = np.random.default_rng(k + 10 * signed + 100 * asym)
        n, r = 20, 5
        q = orthonormal(rng, n, r)
        lam = np.sort(rng.uniform(1, 10, r))
        y = rng.normal(size=(n, k))
        z = rng.normal(size=(n, k)) if asym else None
        alpha = np.where(np.arange(k) % 2 == 1, -0.3, 1.0) if signed else np.ones(k)
        w1, w2 = 0.9, 0.5
        corr = y @ np.diag(alpha) @ (z if asym else y).T
        dense = w1 * q @ np.diag(lam) @ q.T + w2 * (corr + corr.T) / 2
        ev, evec = np.linalg.eigh(dense)

        @jax.jit
        def update(q, lam, y, alpha, z):
            lam_all, eig_valid, s, v = linalg.eigh_update(
                q, lam, jnp.ones(r, bool), y, alpha, jnp.ones(k, bool), z=z, w1=w1, w2=w2
            )
            return linalg.select_columns(q, v, s, lam_all, eig_valid, r)

        f32 = lambda a: None if a is None else jnp.asarray(a, jnp.float32)  # noqa: E731
        q_new, lam_new, valid_new, _ = update(f32(q), f32(lam), f32(y), f32(alpha), f32(z))
        q_new, lam_new = np.asarray(q_new), np.asarray(lam_new)
        self.assertTrue(np.all(np.asarray(valid_new)))
        order = np.argsort(-lam_new)
        np.testing.assert_allclose(lam_new[order], ev[::-1][:r], rtol=1e-4, atol=1e-4)
        # eigenvectors up to sign (the spectrum is generic: no repeated eigenvalues)
        top = evec[:, ::-1][:, :r]
        overlap = np.abs(np.sum(q_new[:, order] * top, axis=0))
        np.testing.assert_allclose(overlap, 1.0, atol=1e-3)

    def test_column_in_span_and_masked_columns(self):
        rng = np.random.default_rng(0)
        n, r = 10, 4
        q = orthonormal(rng, n, r)
        q[:, 3] = 0  # masked column
        valid = np.array([True, True, True, False])
        lam = np.array([1.0, 2.0, 3.0, 0.0])
        y = q[:, :2] @ np.array([[1.0], [2.0]])  # inside span(Q)
        out = jax.jit(linalg.eigh_update)(
            jnp.asarray(q, jnp.float32),
            jnp.asarray(lam, jnp.float32),
            jnp.asarray(valid),
            jnp.asarray(y, jnp.float32),
            jnp.ones(1),
            jnp.ones(1, bool),
        )
        lam_all, eig_valid, s, v = out
        self.assertEqual(int(np.sum(eig_valid)), 3)  # no new direction, masked one stays out
        np.testing.assert_allclose(np.asarray(v), 0)
        dense = q @ np.diag(lam) @ q.T + y @ y.T
        ev = np.linalg.eigvalsh(dense)
        np.testing.assert_allclose(
            np.sort(np.asarray(lam_all)[np.asarray(eig_valid)]), ev[-3:], rtol=1e-5
        )


def run_basis(basis, columns, *, has_z=False, signed=False, zs=None, alphas=None):
    """Feeds correction columns (lists of (n, k) arrays) to a basis; returns last result."""
    n, k = columns[0].shape
    spec = BasisSpec(n, k, jnp.float32, has_z, signed)
    state = basis.init(spec, jax.random.PRNGKey(0))
    update = jax.jit(lambda s, c, key: basis.update(spec, s, c, key))
    res = None
    for t, y in enumerate(columns):
        a = jnp.ones(k) if alphas is None else jnp.asarray(alphas[t], jnp.float32)
        z = None if zs is None else jnp.asarray(zs[t], jnp.float32)
        corr = Correction(jnp.asarray(y, jnp.float32), z, a, jnp.ones(k, bool))
        res = update(state, corr, jax.random.PRNGKey(t + 1))
        state = res.state
    q = np.asarray(basis.unproject(state, jnp.eye(basis.rank(spec))))
    return res, q


class BasesTest(parameterized.TestCase):
    def test_ggt_is_svd_of_history(self):
        rng = np.random.default_rng(1)
        n, h = 15, 4
        cols = [rng.normal(size=(n, 1)) for _ in range(h + 3)]
        res, q = run_basis(lowrank.bases.ggt(h, eig_tol=None), cols)
        m = np.concatenate(cols[-h:], axis=1)
        u, sv, _ = np.linalg.svd(m, full_matrices=False)
        valid = np.asarray(res.valid)
        lam = np.asarray(res.eigenvalues)[valid]
        order = np.argsort(-lam)
        np.testing.assert_allclose(lam[order], sv**2, rtol=1e-4)
        overlap = np.abs(np.sum(q[:, valid][:, order] * u, axis=0))
        np.testing.assert_allclose(overlap, 1.0, atol=1e-4)

    def test_ggt_signed_and_asymmetric(self):
        rng = np.random.default_rng(2)
        n, h = 12, 3
        ys = [rng.normal(size=(n, 1)) for _ in range(5)]
        zs = [rng.normal(size=(n, 1)) for _ in range(5)]
        alphas = [[1.0], [-1.0], [1.0], [-0.5], [2.0]]
        for mode in ("signed", "asym"):
            if mode == "signed":
                res, q = run_basis(
                    lowrank.bases.ggt(h, eig_tol=None), ys, signed=True, alphas=alphas
                )
                m = np.concatenate(ys[-h:], 1)
                dense = m @ np.diag(np.ravel(alphas[-h:])) @ m.T
            else:
                res, q = run_basis(lowrank.bases.ggt(h, eig_tol=None), ys, has_z=True, zs=zs)
                dense = np.concatenate(ys[-h:], 1) @ np.concatenate(zs[-h:], 1).T
                dense = (dense + dense.T) / 2
            valid = np.asarray(res.valid)
            lam = np.asarray(res.eigenvalues)[valid]
            qv = q[:, valid]
            np.testing.assert_allclose(qv @ np.diag(lam) @ qv.T, dense, atol=1e-4)
            np.testing.assert_allclose(qv.T @ qv, np.eye(len(lam)), atol=1e-5)

    @parameterized.parameters((1, 1), (3, 2), (1, 2))
    def test_ggt_rotation_and_projection(self, k_spec, k):
        # k_spec < k: wider corrections than declared (the non-prefetched path)
        rng = np.random.default_rng(3)
        n, h = 10, 3
        basis = lowrank.bases.ggt(h)
        spec = BasisSpec(n, k_spec, jnp.float32, False, False)
        state = basis.init(spec, jax.random.PRNGKey(0))
        update = jax.jit(lambda s, c, x: basis.update(spec, s, c, jax.random.PRNGKey(0), x=x))
        explicit = jax.jit(lambda s: basis.unproject(s, jnp.eye(h)))
        cols = []
        for t in range(5):
            y = rng.normal(size=(n, k))
            valid = np.array([True] * k) if t != 2 else np.array([False] + [True] * (k - 1))
            corr = Correction(jnp.asarray(y, jnp.float32), None, jnp.ones(k), jnp.asarray(valid))
            x = jnp.asarray(rng.normal(size=n), jnp.float32)
            res = update(state, corr, x)
            q_old = np.asarray(explicit(state))
            q_new = np.asarray(explicit(res.state))
            np.testing.assert_allclose(np.asarray(res.rotation), q_new.T @ q_old, atol=1e-5)
            np.testing.assert_allclose(
                np.asarray(res.projection), q_new.T @ np.asarray(x), atol=1e-5
            )
            cols += [y[:, i] for i in range(k) if valid[i]]
            m = np.stack(cols[-h:], 1)  # the basis spans exactly the last h valid columns
            valid_q = q_new[:, np.asarray(res.valid)]
            np.testing.assert_allclose(valid_q @ valid_q.T @ m, m, atol=1e-4)
            state = res.state

    @parameterized.parameters(None, 0.9)
    def test_eigen_matches_accumulated_matrix(self, beta):
        rng = np.random.default_rng(4)
        n, steps = 12, 6
        cols = [rng.normal(size=(n, 1)) for _ in range(steps)]
        basis = lowrank.bases.eigen(rank=steps, beta=beta, eig_tol=None, update_damping=0.0)
        res, q = run_basis(basis, cols)
        if beta is None:
            dense = sum(c @ c.T for c in cols)
        else:  # debiased EMA
            dense = sum((1 - beta) * beta ** (steps - 1 - t) * c @ c.T for t, c in enumerate(cols))
            dense = dense / (1 - beta**steps)
        ev = np.linalg.eigvalsh(dense)[::-1][:steps]
        valid = np.asarray(res.valid)
        lam = np.sort(np.asarray(res.eigenvalues)[valid])[::-1]
        np.testing.assert_allclose(lam, ev, rtol=1e-4)
        qv = q[:, valid]
        lam_v = np.asarray(res.eigenvalues)[valid]
        np.testing.assert_allclose(qv @ np.diag(lam_v) @ qv.T, dense, atol=1e-4 * ev[0])

    @parameterized.parameters("randomized_eigen", "nystrom")
    def test_randomized_recover_top_eigenpairs(self, name):
        rng = np.random.default_rng(5)
        n, rank = 40, 5
        u = orthonormal(rng, n, n)
        lam = 2.0 ** -np.arange(n)  # fast decay
        factor = u * np.sqrt(lam)[None, :]
        # first correction (even columns): exact eigendecomposition, all 20 kept; the
        # second (odd columns) goes through the sketch, which must then find the top 5
        # of the whole matrix. Equal widths: one compilation.
        cols = [factor[:, 0::2], factor[:, 1::2]]
        basis = getattr(lowrank.bases, name)(
            rank=rank, beta=None, oversampling=10, update_damping=0.0
        )
        res, q = run_basis(basis, cols)
        valid = np.asarray(res.valid)
        got = np.asarray(res.eigenvalues)[valid]
        order = np.argsort(-got)
        np.testing.assert_allclose(got[order], lam[:rank], rtol=1e-3)
        overlap = np.abs(np.sum(q[:, valid][:, order] * u[:, :rank], axis=0))
        np.testing.assert_allclose(overlap, 1.0, atol=1e-3)

    @parameterized.parameters("adamg", "gd", "stiefel_gd")
    def test_hebbian_finds_principal_subspace(self, opt):
        rng = np.random.default_rng(6)
        n, r, batch, steps = 16, 3, 8, 300
        u = orthonormal(rng, n, n)
        scales = np.concatenate([[3.0, 2.5, 2.0], np.full(n - 3, 0.3)])
        basis = lowrank.bases.hebbian(rank=r, lr=0.05 if opt == "adamg" else 0.02, opt=opt)
        spec = BasisSpec(n, batch, jnp.float32, False, False)
        samples = jnp.asarray(
            np.einsum("ij,tjb->tib", u * scales[None, :], rng.normal(size=(steps, n, batch))),
            jnp.float32,
        )

        def body(state, y):
            corr = Correction(y, None, jnp.ones(batch), jnp.ones(batch, bool))
            return basis.update(spec, state, corr, jax.random.PRNGKey(0)).state, None

        state, _ = jax.jit(lambda s: jax.lax.scan(body, s, samples))(
            basis.init(spec, jax.random.PRNGKey(1))
        )
        q = np.asarray(state.q)
        np.testing.assert_allclose(q.T @ q, np.eye(r), atol=1e-5)
        err = np.linalg.norm(projector(q) - projector(u[:, :r]), 2)
        self.assertLess(err, 0.2)

    def test_full_matrix_and_random(self):
        rng = np.random.default_rng(7)
        n = 6
        cols = [rng.normal(size=(n, 1)) for _ in range(3)]
        res, q = run_basis(lowrank.bases.full_matrix(beta=None, eig_tol=None), cols)
        dense = np.eye(n) + sum(c @ c.T for c in cols)
        np.testing.assert_allclose(q @ np.diag(np.asarray(res.eigenvalues)) @ q.T, dense, atol=1e-4)
        res, q = run_basis(lowrank.bases.random(rank=4, generate_freq=2), cols)
        np.testing.assert_allclose(q.T @ q, np.eye(4), atol=1e-5)


class FullPrecisionTest(absltest.TestCase):
    """Basis maintenance runs at Precision.HIGHEST under a reduced default precision
    (TF32 on GPU); the caller's own products keep the caller's setting."""

    @staticmethod
    def _dots(text):
        return [line for line in text.splitlines() if "dot_general" in line]

    def test_eigh_update_products_are_highest(self):
        rng = np.random.default_rng(0)
        q = jnp.asarray(orthonormal(rng, 12, 3), jnp.float32)
        y = jnp.asarray(rng.normal(size=(12, 2)), jnp.float32)
        args = (q, jnp.ones(3), jnp.ones(3, bool), y, jnp.ones(2), jnp.ones(2, bool))
        with jax.default_matmul_precision("tensorfloat32"):
            text = jax.jit(linalg.eigh_update).lower(*args).as_text()
        dots = self._dots(text)
        self.assertNotEmpty(dots)
        for line in dots:
            self.assertIn("precision = [HIGHEST, HIGHEST]", line)

    def test_lre_step_keeps_basis_updates_at_highest(self):
        tx = lowrank.lre(0.1)
        params = {"w": jnp.ones((6, 4))}
        state = tx.init(params)
        with jax.default_matmul_precision("tensorfloat32"):
            text = jax.jit(tx.update).lower(params, state, params).as_text()
        dots = self._dots(text)
        highest = [line for line in dots if "HIGHEST" in line]
        self.assertNotEmpty(highest)
        self.assertLess(len(highest), len(dots))  # the step's projections keep the default


if __name__ == "__main__":
    absltest.main()
