"""LRE inner optimizers: reprojection formulas, identity rotations, step formulas."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

import lowrank_optax as lowrank

R = 4


def rot_linear(c, x):
    return c @ x


def rot_diag(c, x):
    return (c * c) @ x


def rot_matrix(c, x):
    return c @ x @ c.T


def rot_cubic(c, x):
    return (c * c * c) @ x


# name -> (factory, {state field: rotation formula}, needs probes)
CASES = {
    "adam": (
        lambda: lowrank.scale_by_adam_in_basis(b2=0.99),
        {"mu": rot_linear, "nu": rot_diag},
        False,
    ),
    "ema": (lambda: lowrank.ema_in_basis(0.8), {"ema": rot_linear}, False),
    "lion": (lambda: lowrank.scale_by_lion_in_basis(), {"mu": rot_linear}, False),
    "full_matrix_adam": (
        lambda: lowrank.scale_by_full_matrix_adam_in_basis(),
        {"mu": rot_linear, "sigma": rot_matrix},
        False,
    ),
    "hutchinson_adam": (
        lambda: lowrank.scale_by_hutchinson_adam_in_basis(),
        {"mu": rot_linear, "diag": rot_diag},
        True,
    ),
    "hutchinson_adam_sophia": (
        lambda: lowrank.scale_by_hutchinson_adam_in_basis(square=False),
        {"mu": rot_linear, "diag": rot_linear},
        True,
    ),
    "full_matrix_hutchinson_adam": (
        lambda: lowrank.scale_by_full_matrix_hutchinson_adam_in_basis(),
        {"mu": rot_linear, "hessian": rot_matrix},
        True,
    ),
    "full_matrix_bfgs_adam": (
        lambda: lowrank.scale_by_full_matrix_bfgs_adam_in_basis(),
        {"mu": rot_linear, "deviation": rot_matrix},
        True,
    ),
    "cubic_adam": (
        lambda: lowrank.scale_by_cubic_adam_in_basis(),
        {"mu": rot_linear, "nu": rot_diag, "mu3": rot_cubic},
        False,
    ),
}


def random_orthogonal(seed):
    return np.linalg.qr(np.random.default_rng(seed).normal(size=(R, R)))[0].astype(np.float32)


def make_step(tx, probes):
    def step(u, state, rotation):
        kwargs = dict(projected_grad=0.5 * u + 0.1, basis_rotation=rotation)
        if probes:
            kwargs["curvature_probes"] = lowrank.CurvatureProbes(
                jnp.sign(u) + 0.5, 2.0 * u + 1.0, jnp.asarray(True)
            )
        return tx.update(u, state, None, **kwargs)

    return jax.jit(step)


def warm_state(step, tx):
    rng = np.random.default_rng(0)
    state = tx.init(jnp.zeros(R))
    for _ in range(3):
        _, state = step(jnp.asarray(rng.normal(size=R), jnp.float32), state, None)
    return state


class ReprojectionTest(parameterized.TestCase):
    @parameterized.named_parameters(*[(n, n) for n in CASES])
    def test_rotation_formula_and_identity(self, name):
        factory, formulas, probes = CASES[name]
        tx = factory()
        step = make_step(tx, probes)
        state = warm_state(step, tx)
        c = random_orthogonal(1)
        u = jnp.asarray(np.random.default_rng(2).normal(size=R), jnp.float32)
        expected_state = state._replace(
            **{f: jnp.asarray(fn(c, np.asarray(getattr(state, f)))) for f, fn in formulas.items()}
        )
        out_rot, state_rot = step(u, state, lowrank.BasisRotation(jnp.asarray(c), None, True))
        out_ref, state_ref = step(u, expected_state, None)
        np.testing.assert_allclose(out_rot, out_ref, rtol=2e-4, atol=1e-5)
        for a, b in zip(jax.tree.leaves(state_rot), jax.tree.leaves(state_ref), strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
        # unchanged basis (C = I) and apply=False leave the state untouched
        out_plain, state_plain = step(u, state, None)
        eye = lowrank.BasisRotation(jnp.eye(R), None, jnp.asarray(True))
        off = lowrank.BasisRotation(jnp.asarray(c), None, jnp.asarray(False))
        for rotation in (eye, off):
            out, new_state = step(u, state, rotation)
            np.testing.assert_allclose(out, out_plain, rtol=1e-6, atol=1e-7)
            for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state_plain), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

    def test_clip_norm_by_ema_reprojection(self):
        tx = lowrank.clip_norm_by_ema_in_basis(min_norm=1e-2)
        step = make_step(tx, False)
        state = warm_state(step, tx)
        c = random_orthogonal(3)
        u = jnp.ones(R)
        _, new = step(u, state, lowrank.BasisRotation(jnp.asarray(c), None, True))
        e = c @ np.asarray(state.ema)
        # after rotation: prev = ‖Ce‖ and the growth clip applies on this step
        self.assertTrue(bool(new.prev_set))
        e_new = 0.99 * e + 0.01 * np.ones(R)
        allowed = max(np.linalg.norm(e) * 1.2, 1e-2)
        e_new = e_new / max(np.linalg.norm(e_new) / allowed, 1)
        np.testing.assert_allclose(new.ema, e_new, rtol=1e-5)
        # a collapsed EMA is redrawn; a small one is rescaled to min_norm
        small = state._replace(ema=jnp.full(R, 1e-4))
        _, new = step(u, small, lowrank.BasisRotation(jnp.eye(R), None, True))
        self.assertGreater(float(jnp.linalg.norm(new.ema)), 9e-3)
        zero = state._replace(ema=jnp.zeros(R))
        _, new = step(u, zero, lowrank.BasisRotation(jnp.eye(R), None, True))
        self.assertTrue(np.all(np.isfinite(new.ema)) and float(jnp.linalg.norm(new.ema)) > 0)


class StepFormulaTest(parameterized.TestCase):
    def test_first_steps(self):
        u = jnp.array([3.0, -4.0, 0.0, 1.0])
        g = jnp.array([1.0, 1.0, -1.0, -1.0])
        lam = jnp.array([4.0, 1.0, 9.0, 0.0])
        valid = jnp.array([True, True, True, False])
        kw = dict(projected_grad=g, eigenvalues=lam, basis_valid=valid)

        def run(tx):
            return np.asarray(tx.update(u, tx.init(u), None, **kw)[0])

        np.testing.assert_allclose(run(lowrank.cautious_in_basis()), [3.0, 0.0, 0.0, 0.0])
        np.testing.assert_allclose(run(lowrank.copy_grad_sign_in_basis()), [3.0, 4.0, -0.0, -1.0])
        np.testing.assert_allclose(
            run(lowrank.scale_by_inverse_eigenvalues(0.5)), [1.5, -4.0, 0.0, 0.0]
        )
        np.testing.assert_allclose(
            run(lowrank.scale_by_inverse_eigenvalues(1.0)), [0.75, -4.0, 0.0, 0.0]
        )
        np.testing.assert_allclose(run(lowrank.ema_in_basis(0.9)), 0.1 * np.asarray(u), rtol=1e-6)
        # Lion uses the projected gradient, not u
        np.testing.assert_allclose(run(lowrank.scale_by_lion_in_basis()), np.sign(g))
        # normalize: first output is 0.109 u (EMA starts at 0.1 u)
        np.testing.assert_allclose(
            run(lowrank.clip_norm_by_ema_in_basis(normalize=True)),
            0.109 * np.asarray(u),
            rtol=1e-5,
        )
        np.testing.assert_allclose(
            run(lowrank.clip_norm_by_ema_in_basis()), 0.109 * np.asarray(u), rtol=1e-5
        )

    def test_full_matrix_adam_vs_numpy(self):
        rng = np.random.default_rng(4)
        tx = lowrank.scale_by_full_matrix_adam_in_basis(
            eps=1e-3, eig_tol=None, damping=0.0, rdamping=0.0
        )
        step = jax.jit(tx.update)
        state = tx.init(jnp.zeros(R))
        m, s = np.zeros(R), np.zeros((R, R))
        for t in range(1, 5):
            u = rng.normal(size=R)
            out, state = step(jnp.asarray(u, jnp.float32), state)
            m = 0.9 * m + 0.1 * u
            s = 0.99 * s + 0.01 * np.outer(u, u)
            sig = s / (1 - 0.99**t) + 1e-3 * np.eye(R)
            lam, vec = np.linalg.eigh(sig)
            expected = vec @ np.diag(lam**-0.5) @ vec.T @ (m / (1 - 0.9**t))
            np.testing.assert_allclose(out, expected, rtol=2e-3, atol=1e-4)

    def test_cubic_adam_root_is_the_cubic_minimum(self):
        rng = np.random.default_rng(5)
        tx = lowrank.scale_by_cubic_adam_in_basis()
        step = jax.jit(tx.update)
        state = tx.init(jnp.zeros(R))
        m1 = m2 = m3 = np.zeros(R)
        for _ in range(3):
            u = rng.normal(size=R) + 0.5
            out, state = step(jnp.asarray(u, jnp.float32), state)
            m1, m2, m3 = (0.9 * m1 + 0.1 * u, 0.99 * m2 + 0.01 * u**2, 0.99 * m3 + 0.01 * u**3)
        a = np.cbrt(m3 / (1 - 0.99**3))
        b = np.sqrt(m2 / (1 - 0.99**3))
        c = m1 / (1 - 0.9**3)
        for i in range(R):
            disc = b[i] ** 2 - 4 * a[i] * c[i]
            if disc < 0:
                x = -c[i] / b[i]
            else:
                roots = np.roots([a[i], b[i], c[i]]).real
                f = a[i] / 3 * roots**3 + b[i] / 2 * roots**2 + c[i] * roots
                x = roots[np.argmin(f)]
            np.testing.assert_allclose(out[i], -x, rtol=1e-3, atol=1e-5)

    def test_hutchinson_adam_first_step_and_no_probe(self):
        tx = lowrank.scale_by_hutchinson_adam_in_basis()
        u = jnp.array([1.0, 2.0])
        probes = lowrank.CurvatureProbes(
            jnp.array([1.0, -1.0]), jnp.array([2.0, 4.0]), jnp.asarray(True)
        )
        out, _ = tx.update(u, tx.init(u), None, curvature_probes=probes)
        np.testing.assert_allclose(out, [1.0 / 2.0, 2.0 / 4.0], rtol=1e-6)
        none = probes._replace(present=jnp.asarray(False))
        out, _ = tx.update(u, tx.init(u), None, curvature_probes=none)
        np.testing.assert_array_equal(out, 0)
        with self.assertRaisesRegex(ValueError, "curvature_probes"):
            tx.update(u, tx.init(u), None)

    def test_full_matrix_bfgs_first_step(self):
        tx = lowrank.scale_by_full_matrix_bfgs_adam_in_basis(eps=0.0)
        s, y = np.array([1.0, 1.0]), np.array([2.0, 0.5])
        probes = lowrank.CurvatureProbes(jnp.asarray(s), jnp.asarray(y), jnp.asarray(True))
        u = jnp.array([1.0, -1.0])
        out, _ = tx.update(u, tx.init(u), None, curvature_probes=probes)
        b = np.eye(2)
        b_new = b + np.outer(y, y) / (s @ y) - np.outer(b @ s, b @ s) / (s @ b @ s)
        b_hat = np.eye(2) + (0.01 * (b_new - b)) / (1 - 0.99)
        np.testing.assert_allclose(out, np.linalg.solve(b_hat, np.asarray(u)), rtol=1e-5)


if __name__ == "__main__":
    absltest.main()
