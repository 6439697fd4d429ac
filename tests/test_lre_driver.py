"""LRE driver: analytic first steps, degenerate inputs, structure (jit, per-leaf, init
steps, update frequency, pmap), argument errors, and a curvature × basis × inner
convergence matrix on an ill-conditioned regression.

The matrix is representative rather than the full product (9 curvatures × 7 bases ×
13 inner pieces would take far too long to compile): every curvature, every basis
and every inner piece appears at least once. (Hebbian has no eigenvalues: its
``eigenvalues`` are 1, so L^-1/2 there is the identity.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized
from optax._src import test_utils

import lowrank_optax as lowrank

C, B = lowrank.curvatures, lowrank.bases


def adam():
    return lowrank.scale_by_adam_in_basis(b2=0.99)


def with_lr(tx, lr):
    return optax.chain(tx, optax.scale_by_learning_rate(lr))


class AnalyticTest(absltest.TestCase):
    def test_first_step_is_normalized_gradient(self):
        g = jnp.array([3.0, -4.0, 12.0])
        tx = with_lr(
            lowrank.eigenbasis_update([adam()], curvature=C.covariance(), basis=B.ggt(4)), 0.1
        )
        u, _ = jax.jit(tx.update)(g, tx.init(g), g)
        np.testing.assert_allclose(u, -0.1 * g / 13.0, rtol=1e-5)
        tx = lowrank.lre(0.1)  # default: ... → clip_norm_by_ema(normalize=True)
        u, _ = jax.jit(tx.update)(g, tx.init(g), g)
        np.testing.assert_allclose(u, -0.1 * 0.109 * g / 13.0, rtol=1e-5)


def regression():
    rng = np.random.default_rng(0)
    m, n = 24, 6
    u = np.linalg.qr(rng.normal(size=(m, n)))[0]
    v = np.linalg.qr(rng.normal(size=(n, n)))[0]
    a = jnp.asarray(u @ np.diag(np.geomspace(1, 30, n)) @ v.T, jnp.float32)  # cond 30 (900)
    b = a @ jnp.asarray(rng.normal(size=n), jnp.float32)

    def residuals(p):
        return (a @ jnp.concatenate([p["w"], p["b"]]) - b) / np.sqrt(m)

    def loss(p):
        return 0.5 * jnp.sum(residuals(p) ** 2)

    def sample_loss(p, i):
        return 0.5 * residuals(p)[i] ** 2

    return loss, residuals, sample_loss, m


LOSS, RESIDUALS, SAMPLE_LOSS, M = regression()
P0 = {"w": jnp.zeros(4), "b": jnp.zeros(2)}


def extra_args(p):
    return dict(
        hvp_fn=lambda t: jax.jvp(jax.grad(LOSS), (p,), (t,))[1],
        per_sample_grads=jax.vmap(jax.grad(SAMPLE_LOSS), (None, 0))(p, jnp.arange(M)),
        jacobian=jax.jacrev(RESIDUALS)(p),
    )


def train(tx, steps):
    def body(carry, _):
        p, s = carry
        u, s = tx.update(jax.grad(LOSS)(p), s, p, **extra_args(p))
        return (optax.apply_updates(p, u), s), None

    run = jax.jit(lambda p, s: jax.lax.scan(body, (p, s), None, length=steps)[0])
    p, s = run(P0, tx.init(P0))
    return float(LOSS(p) / LOSS(P0)), s


MATRIX = {
    "covariance_ggt_default": lambda: (
        C.covariance(),
        B.ggt(10),
        [adam(), lowrank.cautious_in_basis(), lowrank.clip_norm_by_ema_in_basis(normalize=True)],
        0.1,
    ),
    "update_full_matrix_cubic": lambda: (
        C.update(),
        B.full_matrix(),
        [lowrank.scale_by_cubic_adam_in_basis()],
        0.05,
    ),
    "parameters_random_fmadam": lambda: (
        C.parameters(),
        B.random(4, generate_freq=5),
        [lowrank.scale_by_full_matrix_adam_in_basis(), lowrank.clip_by_leaf_norm(1.0)],
        0.05,
    ),
    "fisher_nystrom_adam": lambda: (
        C.empirical_fisher(M),
        B.nystrom(6, 0.9),
        [adam(), lowrank.copy_grad_sign_in_basis()],
        0.05,
    ),
    "gauss_newton_ggt_inv": lambda: (
        C.gauss_newton(M),
        B.ggt(30, eig_tol=1e-7),
        [lowrank.scale_by_inverse_eigenvalues(1.0)],
        1.0,
    ),
    "hutchinson_randomized_hadam": lambda: (
        C.full_hutchinson_hessian(),
        B.randomized_eigen(6, None),
        [lowrank.scale_by_hutchinson_adam_in_basis()],
        0.05,
    ),
    "hutchinson_ggt_fmhadam": lambda: (
        C.full_hutchinson_hessian(),
        B.ggt(10),
        [lowrank.scale_by_full_matrix_hutchinson_adam_in_basis()],
        0.05,
    ),
    "sr1_eigen_inv": lambda: (
        C.sr1(),
        B.eigen(6, None, eig_tol=1e-6),
        [lowrank.scale_by_inverse_eigenvalues(1.0), optax.clip(1.0)],
        0.5,
    ),
    "bfgs_eigen_bfgsadam": lambda: (
        C.bfgs(),
        B.eigen(6, None, eig_tol=None),
        [lowrank.scale_by_full_matrix_bfgs_adam_in_basis()],
        0.05,
    ),
    "ema_hebbian_lion": lambda: (
        C.ema(0.5),
        B.hebbian(4, lr=0.1),
        [
            lowrank.scale_by_lion_in_basis(),
            lowrank.ema_in_basis(0.5),
            lowrank.scale_by_inverse_eigenvalues(0.5),
        ],
        0.02,
    ),
}


class ConvergenceMatrixTest(parameterized.TestCase):
    @parameterized.named_parameters(*[(k, k) for k in MATRIX])
    def test_converges_on_ill_conditioned_regression(self, name):
        curvature, basis, inner, lr = MATRIX[name]()
        tx = with_lr(lowrank.eigenbasis_update(inner, curvature=curvature, basis=basis), lr)
        ratio, state = train(tx, 150)
        self.assertLess(ratio, 0.05)
        self.assertTrue(all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state)))


class DegenerateTest(parameterized.TestCase):
    @parameterized.parameters(("ggt", lambda: B.ggt(10)), ("eigen", lambda: B.eigen(8)))
    def test_zero_gradient_and_fewer_directions_than_rank(self, _, basis):
        # 3 parameters, up to 10 directions: most columns stay invalid
        tx = lowrank.lre(0.1, basis=basis())
        step = jax.jit(tx.update)
        p = jnp.zeros(3)
        state = tx.init(p)
        u, state = step(jnp.zeros(3), state, p)
        np.testing.assert_array_equal(u, 0.0)
        rng = np.random.default_rng(0)
        for _ in range(4):
            u, state = step(jnp.asarray(rng.normal(size=3), jnp.float32), state, p)
            self.assertTrue(np.all(np.isfinite(u)) and np.any(u != 0))
        self.assertLessEqual(int(np.sum(state[0].blocks[0].valid)), 3)
        self.assertTrue(all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state)))

    def test_nan_gradient_keeps_basis(self):
        tx = lowrank.eigenbasis_update(None, curvature=C.covariance(), basis=B.ggt(4))
        g = jnp.array([1.0, 2.0])
        step = jax.jit(tx.update)
        _, state = step(g, tx.init(g), g)
        u, new_state = step(jnp.array([jnp.nan, 1.0]), state, g)
        self.assertFalse(np.all(np.isfinite(u)))  # NaN in, NaN out (as optax.adam)
        for a, b in zip(
            jax.tree.leaves(new_state.blocks), jax.tree.leaves(state.blocks), strict=True
        ):
            np.testing.assert_array_equal(a, b)
        safe = optax.apply_if_finite(lowrank.lre(0.1), 3)
        s = safe.init(g)
        safe_step = jax.jit(safe.update)
        for grad in (g, jnp.array([jnp.nan, 1.0]), g):
            u, s = safe_step(grad, s, g)
            self.assertTrue(np.all(np.isfinite(u)))


class StructureTest(parameterized.TestCase):
    def test_jit_does_not_recompile(self):
        tx = lowrank.lre(0.1, basis=B.ggt(4))
        p = {"a": jnp.ones(3), "b": jnp.ones((2, 2))}
        step = jax.jit(tx.update)
        u, state = step(p, tx.init(p), p)
        with test_utils.log_compilations() as logs:
            for _ in range(2):
                u, state = step(u, state, p)
        self.assertEmpty(logs)

    def test_per_leaf_equals_one_instance_per_leaf(self):
        def make(per_leaf):
            return lowrank.eigenbasis_update(
                [adam(), lowrank.clip_norm_by_ema_in_basis(normalize=True)],
                curvature=C.covariance(),
                basis=B.ggt(3),
                per_leaf=per_leaf,
            )

        rng = np.random.default_rng(1)
        grads = [
            {
                "a": jnp.asarray(rng.normal(size=3), jnp.float32),
                "b": jnp.asarray(rng.normal(size=(2, 2)), jnp.float32),
            }
            for _ in range(4)
        ]
        tx, tx_a, tx_b = make(True), make(False), make(False)
        s, s_a, s_b = tx.init(grads[0]), tx_a.init(grads[0]["a"]), tx_b.init(grads[0]["b"])
        step, step_a, step_b = jax.jit(tx.update), jax.jit(tx_a.update), jax.jit(tx_b.update)
        for g in grads:
            u, s = step(g, s)
            u_a, s_a = step_a(g["a"], s_a)
            u_b, s_b = step_b(g["b"], s_b)
            np.testing.assert_allclose(u["a"], u_a, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(u["b"], u_b, rtol=1e-5, atol=1e-7)
        self.assertLen(s.blocks, 2)

    def test_init_steps_and_update_freq(self):
        tx = lowrank.eigenbasis_update(
            [adam()], curvature=C.covariance(), basis=B.eigen(4), update_freq=3, init_steps=2
        )
        step = jax.jit(tx.update)
        rng = np.random.default_rng(2)
        g0 = jnp.ones(5)
        state = tx.init(g0)
        for t in range(8):
            g = jnp.asarray(rng.normal(size=5), jnp.float32)
            u, new = step(g, state)
            if t < 2:  # basis built, no update, inner not stepped
                np.testing.assert_array_equal(u, 0.0)
                self.assertEqual(int(new.inner_state[0].count), 0)
            else:
                self.assertTrue(np.any(u != 0))
            changed = not np.array_equal(new.blocks[0].basis.q, state.blocks[0].basis.q)
            self.assertEqual(changed, t < 2 or t % 3 == 0, msg=f"step {t}")
            state = new
        # the buffered covariance reached the basis with 3 columns (steps 4, 5, 6)
        self.assertEqual(int(state.blocks[0].basis.count), 4)

    @parameterized.parameters(True, "average")
    def test_symmetrize_modes_in_expectation(self, mode):
        # True: E[sym((Hz) zᵀ)] = H. 'average' (the reference): E[((Hz+z)/2)((Hz+z)/2)ᵀ]
        # = (H + I)²/4 for Rademacher z, which is not H.
        h = jnp.array([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]])
        loss = lambda p: 0.5 * p @ h @ p  # noqa: E731
        p = jnp.array([1.0, -1.0, 0.5])
        steps = 400
        tx = lowrank.eigenbasis_update(
            None,
            curvature=C.full_hutchinson_hessian("rademacher"),
            basis=B.full_matrix(beta=None, eig_tol=None),
            symmetrize=mode,
        )

        def body(s, _):
            hvp_fn = lambda t: jax.jvp(jax.grad(loss), (p,), (t,))[1]  # noqa: E731
            return tx.update(jax.grad(loss)(p), s, p, hvp_fn=hvp_fn)[1], None

        state = jax.jit(lambda s: jax.lax.scan(body, s, None, length=steps)[0])(tx.init(p))
        estimate = (np.asarray(state.blocks[0].basis.matrix) - np.eye(3)) / steps
        hn = np.asarray(h)
        expected = hn if mode is True else (hn + np.eye(3)) @ (hn + np.eye(3)) / 4
        np.testing.assert_allclose(estimate, expected, atol=0.25)

    def test_pmap_matches_single_device(self):
        tx = lowrank.lre(0.1, basis=B.ggt(4))
        p = jnp.array([1.0, -2.0, 0.5])
        grads = jnp.stack([2 * p, 4 * p])[None]  # one device, two micro-batches

        def step(g, s, params):
            g = jax.lax.pmean(jnp.mean(g, 0), "d")
            return tx.update(g, s, params)

        state = jax.tree.map(lambda x: jnp.asarray(x)[None], tx.init(p))  # replicated
        u, _ = jax.pmap(step, axis_name="d")(grads, state, p[None])
        expected, _ = tx.update(3 * p, tx.init(p), p)
        np.testing.assert_allclose(u[0], expected, rtol=1e-6)


class ErrorsTest(absltest.TestCase):
    def test_bad_arguments(self):
        ok = dict(curvature=C.covariance(), basis=B.ggt())
        with self.assertRaisesRegex(ValueError, "update_freq"):
            lowrank.eigenbasis_update(None, update_freq=0, **ok)
        with self.assertRaisesRegex(ValueError, "init_steps"):
            lowrank.eigenbasis_update(None, init_steps=-1, **ok)
        with self.assertRaisesRegex(ValueError, "symmetrize"):
            lowrank.eigenbasis_update(None, symmetrize="yes", **ok)
        with self.assertRaisesRegex(ValueError, "curvature"):
            lowrank.eigenbasis_update(None, curvature="covariance", basis=B.ggt())
        with self.assertRaisesRegex(ValueError, "symmetric"):
            lowrank.eigenbasis_update(
                None, curvature=C.full_hutchinson_hessian(), basis=B.hebbian(), symmetrize=False
            )
        with self.assertRaisesRegex(ValueError, "semi-definite"):
            lowrank.eigenbasis_update(None, curvature=C.bfgs(), basis=B.nystrom())
        for bad in (
            lambda: B.ggt(0),
            lambda: B.eigen(beta=1.0),
            lambda: B.hebbian(opt="adam"),
            lambda: C.full_hutchinson_hessian("uniform"),
            lambda: C.sr1(hvp_method="fd"),
            lambda: lowrank.scale_by_full_matrix_adam_in_basis(b2=1.5),
        ):
            with self.assertRaises(ValueError):
                bad()

    def test_update_errors(self):
        p = jnp.ones(3)
        tx = lowrank.eigenbasis_update(None, curvature=C.parameters(), basis=B.ggt(2))
        with self.assertRaisesRegex(ValueError, "params"):
            tx.update(p, tx.init(p))
        tx = lowrank.eigenbasis_update(None, curvature=C.covariance(), basis=B.ggt(2))
        with self.assertRaises(TypeError):
            tx.update(p, tx.init(p), projected_grad=p)
        tx = lowrank.eigenbasis_update(None, curvature=C.bfgs(), basis=B.ggt(2))
        with self.assertRaisesRegex(ValueError, "hvp_fn"):
            tx.update(p, tx.init(p), p)


if __name__ == "__main__":
    absltest.main()
