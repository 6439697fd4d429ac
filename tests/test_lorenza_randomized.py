"""LORENZA's randomized range finder (``lowrank.randomized_factors``) against exact SVD.

The reference bases come from ``numpy.linalg.svd`` of matrices with a prescribed,
decaying spectrum; the subspace error is ``‖(I − Û Ûᵀ) U_r‖_F`` (the sine of the
principal angles), averaged over several keys.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

import lowrank_optax as lowrank

RANK = 4


def decaying_matrix(m, n, seed=0, decay=0.8):
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(m, min(m, n))))
    v, _ = np.linalg.qr(rng.normal(size=(n, min(m, n))))
    s = decay ** np.arange(min(m, n))
    return (u * s) @ v.T


def batched_factors(oversampling, power_iterations):
    """randomized_factors vmapped over keys, run eagerly: op-by-op executables are
    cached by shape and shared by every setting and test (jit would recompile the
    QR/SVD graph for each setting, which dominates the runtime on CPU)."""
    fn = lambda g, key: lowrank.randomized_factors(
        g, RANK, key, oversampling=oversampling, power_iterations=power_iterations
    )
    return jax.vmap(fn, in_axes=(None, 0))


def mean_subspace_error(g, oversampling, power_iterations, n_keys=8):
    keys = jax.random.split(jax.random.PRNGKey(11), n_keys)
    u_hat, vh_hat = batched_factors(oversampling, power_iterations)(jnp.asarray(g), keys)
    u_ref, _, vh_ref = np.linalg.svd(g, full_matrices=False)
    u_ref, v_ref = u_ref[:, :RANK], vh_ref[:RANK].T
    errors = []
    for u, vh in zip(np.asarray(u_hat, np.float64), np.asarray(vh_hat, np.float64), strict=True):
        err_u = np.linalg.norm(u_ref - u @ (u.T @ u_ref))
        err_v = np.linalg.norm(v_ref - vh.T @ (vh @ v_ref))
        errors.append(max(err_u, err_v))
    return float(np.mean(errors))


class RangeFinderTest(parameterized.TestCase):
    def test_error_shrinks_with_oversampling_and_power_iterations(self):
        g = decaying_matrix(24, 40).astype(np.float32)
        by_p = [mean_subspace_error(g, p, 0) for p in (0, 4, 12)]
        by_q = [by_p[0]] + [mean_subspace_error(g, 0, q) for q in (1, 3)]
        self.assertLess(by_p[1], by_p[0])
        self.assertLess(by_p[2], by_p[1])
        self.assertLess(by_q[1], by_q[0])
        self.assertLess(by_q[2], by_q[1])
        self.assertGreater(by_p[0], 0.1)  # one sketch alone is visibly inexact here
        self.assertLess(mean_subspace_error(g, 12, 3), 1e-3)
        self.assertLess(mean_subspace_error(g.T, 12, 3), 1e-3)  # tall: sketched transposed

    def test_same_key_same_basis_and_orthonormal(self):
        g = jnp.asarray(decaying_matrix(24, 40, seed=3), jnp.float32)
        f = jax.jit(
            lambda key: lowrank.randomized_factors(g, RANK, key, oversampling=0, power_iterations=0)
        )
        u1, vh1 = f(jax.random.PRNGKey(5))
        u2, vh2 = f(jax.random.PRNGKey(5))
        u3, _ = f(jax.random.PRNGKey(6))
        np.testing.assert_array_equal(u1, u2)
        np.testing.assert_array_equal(vh1, vh2)
        self.assertGreater(float(jnp.max(jnp.abs(u1 - u3))), 1e-3)
        np.testing.assert_allclose(u1.T @ u1, np.eye(RANK), atol=1e-5)
        np.testing.assert_allclose(vh1 @ vh1.T, np.eye(RANK), atol=1e-5)

    @parameterized.parameters((24, 40), (40, 24))
    def test_one_sketch_spans_g_omega(self, m, n):
        # p = q = 0: the basis spans G Ω (or Gᵀ Ω for tall G, sketched on the smaller side).
        g = decaying_matrix(m, n, seed=4).astype(np.float32)
        key = jax.random.PRNGKey(9)
        u, vh = lowrank.randomized_factors(
            jnp.asarray(g), RANK, key, oversampling=0, power_iterations=0
        )
        if m <= n:
            # Ωᵀ is drawn as K rows (the range finder keeps thin matrices as rows).
            omega = np.asarray(jax.random.normal(key, (RANK, n), jnp.float32), np.float64).T
            basis, sketch = np.asarray(u, np.float64), g @ omega
        else:
            omega = np.asarray(jax.random.normal(key, (RANK, m), jnp.float32), np.float64).T
            basis, sketch = np.asarray(vh, np.float64).T, g.T @ omega
        q, _ = np.linalg.qr(sketch)
        np.testing.assert_allclose(basis @ basis.T, q @ q.T, atol=1e-4)

    def test_exact_when_rank_is_small(self):
        rng = np.random.default_rng(2)
        g = (rng.normal(size=(24, 3)) @ rng.normal(size=(3, 40))).astype(np.float32)
        u, vh = lowrank.randomized_factors(
            jnp.asarray(g), RANK, jax.random.PRNGKey(0), oversampling=0, power_iterations=0
        )
        u, vh = np.asarray(u, np.float64), np.asarray(vh, np.float64)
        np.testing.assert_allclose(u @ (u.T @ g), g, atol=1e-4)
        np.testing.assert_allclose((g @ vh.T) @ vh, g, atol=1e-4)


if __name__ == "__main__":
    absltest.main()
