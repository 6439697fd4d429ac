"""Float64 parity with the published reference ``inikishev/lre``.

``tests/golden/lre_reference.npz`` holds parameter trajectories written by
``scripts/make_lre_golden.py``, which runs the reference (PyTorch, float64) on a tiny
tanh regression. The configurations are deterministic and avoid every documented
reference bug, so the library must match them to roundoff.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized

import lowrank_optax as lowrank

GOLDEN = np.load(pathlib.Path(__file__).parent / "golden" / "lre_reference.npz")
C, B = lowrank.curvatures, lowrank.bases

CONFIGS = {
    "cov_ggt_default": lambda: (
        C.covariance(),
        B.ggt(5),
        [
            lowrank.scale_by_adam_in_basis(b2=0.99),
            lowrank.cautious_in_basis(),
            lowrank.clip_norm_by_ema_in_basis(normalize=True),
        ],
        1,
    ),
    "cov_ggt_freq2_adam_clip": lambda: (
        C.covariance(),
        B.ggt(4),
        [lowrank.scale_by_adam_in_basis(b1=0.8, b2=0.95), lowrank.clip_norm_by_ema_in_basis()],
        2,
    ),
    "cov_eigen_adam": lambda: (
        C.covariance(),
        B.eigen(rank=4),
        [lowrank.scale_by_adam_in_basis(b2=0.99)],
        1,
    ),
    "ema_ggt_linvsqrt_ema": lambda: (
        C.ema(0.9),
        B.ggt(6, eig_tol=1e-7),
        [lowrank.scale_by_inverse_eigenvalues(0.5), lowrank.ema_in_basis(0.5)],
        1,
    ),
    "params_fullmatrix_linvsqrt_ema": lambda: (
        C.parameters(),
        B.full_matrix(beta=0.9),
        [lowrank.scale_by_inverse_eigenvalues(0.5), lowrank.ema_in_basis(0.8)],
        1,
    ),
}


# L^-1/2 on nearly collinear EMA columns amplifies roundoff in the smallest kept
# eigenvalue (about 1e-12 after one step, 1e-8 after 25); everything else is exact.
ATOL = {"ema_ggt_linvsqrt_ema": 5e-8}


class ReferenceParityTest(parameterized.TestCase):
    @parameterized.named_parameters(*[(k, k) for k in CONFIGS])
    def test_trajectory_matches_reference(self, name):
        expected = GOLDEN[name]
        with jax.enable_x64(True):
            x = jnp.asarray(GOLDEN["data_x"])
            y = jnp.asarray(GOLDEN["data_y"])
            params = {"w": jnp.asarray(GOLDEN["data_w0"]), "b": jnp.asarray(GOLDEN["data_b0"])}

            def loss(p):
                return jnp.mean((jnp.tanh(x @ p["w"] + p["b"]) - y) ** 2)

            curvature, basis, inner, update_freq = CONFIGS[name]()
            tx = lowrank.lre(float(GOLDEN["lr"]), curvature, basis, inner, update_freq=update_freq)

            def body(carry, _):
                p, s = carry
                u, s = tx.update(jax.grad(loss)(p), s, p)
                p = optax.apply_updates(p, u)
                return (p, s), jnp.concatenate([p["w"].ravel(), p["b"]])

            steps = int(GOLDEN["steps"])
            _, traj = jax.jit(lambda p, s: jax.lax.scan(body, (p, s), None, length=steps))(
                params, tx.init(params)
            )
            self.assertEqual(traj.dtype, jnp.float64)
            atol = ATOL.get(name, 1e-11)
            np.testing.assert_allclose(np.asarray(traj), expected, rtol=1e-9, atol=atol)


if __name__ == "__main__":
    absltest.main()
