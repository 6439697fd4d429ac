"""LRE curvatures: HVP corrections vs jax.hessian, per-sample ones vs explicit loops,
quasi-Newton corrections vs dense numpy formulas."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized
from jax.flatten_util import ravel_pytree

import lowrank_optax as lowrank
from lowrank_optax._src.lre.curvatures import CollectContext

PARAMS = {"a": jnp.array([0.3, -1.2, 0.7]), "b": jnp.array([[0.5, 2.0], [-0.4, 1.1]])}
FLAT, UNRAVEL = ravel_pytree(PARAMS)
N = FLAT.shape[0]


def loss(p):
    a, b = p["a"], p["b"]
    return jnp.sum(jnp.sin(a) * a**2) + jnp.sum(b**3) / 3 + jnp.sum(a[:2] * b[0]) ** 2


def quadratic(p):
    x = ravel_pytree(p)[0]
    m = jnp.arange(N * N, dtype=jnp.float32).reshape(N, N) / (N * N)
    return 0.5 * x @ (m @ m.T + jnp.eye(N)) @ x


def context(f, x, *, should_update=True, key=0, extra=None, project_out=None):
    p = UNRAVEL(x)
    g = ravel_pytree(jax.grad(f)(p))[0]
    base = {
        "hvp_fn": lambda t: jax.jvp(jax.grad(f), (p,), (t,))[1],
        "grad_fn": jax.grad(f),
    }
    base.update(extra or {})
    return CollectContext(
        grad=g,
        params=x,
        unravel=UNRAVEL,
        extra=base,
        should_update=jnp.asarray(should_update),
        count=jnp.zeros([], jnp.int32),
        key=jax.random.PRNGKey(key),
        project_out=project_out or (lambda z: z),
        normalize=lambda z: z / jnp.linalg.norm(z),
        always_update=should_update is True,  # update steps skip the lax.cond (as the driver)
    )


def hessian(f, x):
    return np.asarray(jax.hessian(lambda v: f(UNRAVEL(v)))(x))


class HvpTest(parameterized.TestCase):
    @parameterized.parameters(
        dict(method="autograd", fn="loss", atol=1e-5),
        dict(method="forward", fn="quadratic", atol=2e-2),
        dict(method="central", fn="quadratic", atol=2e-2),
        dict(method="central", fn="loss", atol=5e-2),
    )
    def test_hz_matches_hessian(self, method, fn, atol):
        f = {"loss": loss, "quadratic": quadratic}[fn]
        curv = lowrank.curvatures.full_hutchinson_hessian("rademacher", hvp_method=method)
        state = curv.init(N, jnp.float32, 1)
        ctx = context(f, FLAT)
        _, buffers, probes = jax.jit(lambda s: curv.collect(s, ctx))(state)
        z, hz = np.asarray(buffers.rows[0][:, 0]), np.asarray(buffers.rows[1][:, 0])
        np.testing.assert_array_equal(np.abs(z), 1.0)  # Rademacher honoured
        np.testing.assert_allclose(hz, hessian(f, FLAT) @ z, atol=atol, rtol=1e-3)
        np.testing.assert_allclose(np.asarray(probes[0]), z)

    def test_z_types_and_orthogonalize(self):
        x2 = FLAT + 0.1
        # 's': falls back to Rademacher on the first product, then x - x_prev
        curv = lowrank.curvatures.full_hutchinson_hessian("s")
        state = curv.init(N, jnp.float32, 1)
        state, buffers, _ = curv.collect(state, context(loss, FLAT))
        np.testing.assert_array_equal(np.abs(np.asarray(buffers.rows[0])), 1.0)
        _, buffers, _ = curv.collect(state, context(loss, x2))
        np.testing.assert_allclose(np.asarray(buffers.rows[0][:, 0]), 0.1, rtol=1e-5)
        # 'g': the gradient; 'normal': not a sign vector
        curv = lowrank.curvatures.full_hutchinson_hessian("g")
        ctx = context(loss, FLAT)
        _, buffers, _ = curv.collect(curv.init(N, jnp.float32, 1), ctx)
        np.testing.assert_allclose(np.asarray(buffers.rows[0][:, 0]), np.asarray(ctx.grad))
        curv = lowrank.curvatures.full_hutchinson_hessian("normal")
        _, buffers, _ = curv.collect(curv.init(N, jnp.float32, 1), ctx)
        self.assertFalse(np.all(np.abs(np.asarray(buffers.rows[0])) == 1.0))
        # orthogonalize: z ⟂ span(Q), unit norm
        q = np.linalg.qr(np.random.default_rng(0).normal(size=(N, 2)))[0]
        proj = lambda z: z - jnp.asarray(q, jnp.float32) @ (jnp.asarray(q.T, jnp.float32) @ z)  # noqa: E731
        curv = lowrank.curvatures.full_hutchinson_hessian("rademacher", orthogonalize=True)
        _, buffers, _ = curv.collect(
            curv.init(N, jnp.float32, 1), context(loss, FLAT, project_out=proj)
        )
        z = np.asarray(buffers.rows[0][:, 0])
        np.testing.assert_allclose(q.T @ z, 0, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(z), 1.0, rtol=1e-6)

    def test_no_product_off_update_steps_and_missing_args(self):
        curv = lowrank.curvatures.full_hutchinson_hessian()
        state = curv.init(N, jnp.float32, 1)
        _, buffers, _ = curv.collect(state, context(loss, FLAT, should_update=False))
        np.testing.assert_array_equal(np.asarray(buffers.rows[1]), 0)
        ctx = context(loss, FLAT)._replace(extra={})
        with self.assertRaisesRegex(ValueError, "hvp_fn"):
            curv.collect(state, ctx)
        fd = lowrank.curvatures.bfgs(hvp_method="central")
        with self.assertRaisesRegex(ValueError, "grad_fn"):
            fd.collect(fd.init(N, jnp.float32, 1), ctx)


class PerSampleTest(parameterized.TestCase):
    def test_empirical_fisher_and_gauss_newton_vs_loops(self):
        rng = np.random.default_rng(0)
        xs = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)

        def sample_loss(p, xi):
            return jnp.sum(p["a"] * xi) ** 2 + jnp.sum(p["b"]) * xi[0]

        def residuals(p):
            return jax.vmap(lambda xi: jnp.sum(p["a"] * xi) + p["b"][0, 0] * xi[1])(xs)

        per_sample = jax.vmap(jax.grad(sample_loss), (None, 0))(PARAMS, xs)
        loop = np.stack(
            [ravel_pytree(jax.grad(sample_loss)(PARAMS, xs[i]))[0] for i in range(4)], 1
        )
        jac = jax.jacrev(residuals)(PARAMS)
        jac_loop = np.stack(
            [ravel_pytree(jax.grad(lambda p, i=i: residuals(p)[i])(PARAMS))[0] for i in range(4)],
            1,
        )
        for curv, arg, tree, expected in (
            (lowrank.curvatures.empirical_fisher(), "per_sample_grads", per_sample, loop),
            (lowrank.curvatures.gauss_newton(), "jacobian", jac, jac_loop),
        ):
            ctx = context(loss, FLAT, extra={arg: tree})
            state, buffers, _ = curv.collect(curv.init(N, jnp.float32, 1), ctx)
            corr = curv.correction(buffers.rows, buffers.col_valid, None, jnp.asarray(True))
            np.testing.assert_allclose(np.asarray(corr.y), expected, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(np.asarray(corr.valid), True)
            with self.assertRaisesRegex(ValueError, arg):
                curv.collect(state, ctx._replace(extra={}))

    def test_buffered_columns(self):
        # update_freq=3: columns gathered between updates, flushed on the update step
        curv = lowrank.curvatures.covariance()
        state = curv.init(N, jnp.float32, 3)
        grads = [jnp.full((N,), float(i + 1)) for i in range(4)]
        flags = [True, False, False, True]
        for g, flag in zip(grads, flags, strict=True):
            ctx = context(loss, FLAT, should_update=flag)._replace(grad=g)
            state, buffers, _ = curv.collect(state, ctx)
        y = np.asarray(buffers.rows[0])
        np.testing.assert_array_equal(np.asarray(buffers.col_valid), [True, True, True])
        np.testing.assert_allclose(y[0], [2.0, 3.0, 4.0])
        # ema and update: first step
        upd = lowrank.curvatures.update()
        st = upd.init(N, jnp.float32, 1)
        st, b, _ = upd.collect(st, context(loss, FLAT))
        self.assertFalse(bool(b.col_valid[0]))
        _, b, _ = upd.collect(st, context(loss, FLAT + 1.0))
        np.testing.assert_allclose(np.asarray(b.rows[0][:, 0]), 1.0, rtol=1e-6)
        em = lowrank.curvatures.ema(0.5)
        st = em.init(N, jnp.float32, 1)
        st, b, _ = em.collect(st, context(loss, FLAT)._replace(grad=jnp.ones(N)))
        _, b, _ = em.collect(st, context(loss, FLAT)._replace(grad=3 * jnp.ones(N)))
        np.testing.assert_allclose(np.asarray(b.rows[0][:, 0]), 2.0)


def np_bfgs(b, s, y, c, tol):
    bs = b @ s
    sbs, sy = s @ bs, s @ y
    if c is not None and sy < c * sbs:
        theta = np.clip((1 - c) * sbs / (sbs - sy + tol), 0, 1)
        y = theta * y + (1 - theta) * bs
        sy = s @ y
    return np.outer(y, y) / sy - np.outer(bs, bs) / (sbs + tol)


class QuasiNewtonTest(parameterized.TestCase):
    @parameterized.parameters(None, 0.2, 0.9)
    def test_bfgs_correction(self, c):
        rng = np.random.default_rng(1)
        q = np.linalg.qr(rng.normal(size=(N, 3)))[0]
        lam = np.array([1.0, 2.0, 5.0])
        b = q @ np.diag(lam) @ q.T
        s = rng.normal(size=N)
        y = b @ s * 0.3 + 0.05 * rng.normal(size=N)  # triggers damping for c=0.9
        curv = lowrank.curvatures.bfgs(c=c)
        apply_b = lambda m: jnp.asarray(b, jnp.float32) @ m  # noqa: E731
        rows = (jnp.asarray(s[:, None], jnp.float32), jnp.asarray(y[:, None], jnp.float32))
        corr = curv.correction(rows, jnp.ones(1, bool), apply_b, jnp.asarray(True))
        yy, a = np.asarray(corr.y), np.asarray(corr.alpha)
        np.testing.assert_allclose(yy @ np.diag(a) @ yy.T, np_bfgs(b, s, y, c, 1e-12), atol=1e-4)
        # skipped when sᵀy <= tol (no damping)
        rows = (rows[0], -rows[0])
        corr = lowrank.curvatures.bfgs(c=None).correction(
            rows, jnp.ones(1, bool), apply_b, jnp.asarray(True)
        )
        self.assertFalse(np.any(np.asarray(corr.valid)))

    @parameterized.parameters(False, True)
    def test_sr1_correction(self, inverse):
        rng = np.random.default_rng(2)
        q = np.linalg.qr(rng.normal(size=(N, 2)))[0]
        b = q @ np.diag([1.0, 3.0]) @ q.T
        z, hz = rng.normal(size=N), rng.normal(size=N)
        s, y = (hz, z) if inverse else (z, hz)
        r = y - b @ s
        expected = np.outer(r, r) / (r @ s)
        curv = lowrank.curvatures.sr1(inverse=inverse)
        rows = (jnp.asarray(z[:, None], jnp.float32), jnp.asarray(hz[:, None], jnp.float32))
        apply_b = lambda m: jnp.asarray(b, jnp.float32) @ m  # noqa: E731
        corr = curv.correction(rows, jnp.ones(1, bool), apply_b, jnp.asarray(True))
        yy, a = np.asarray(corr.y), np.asarray(corr.alpha)
        np.testing.assert_allclose(yy @ np.diag(a) @ yy.T, expected, atol=1e-4)
        # before the first basis: B = v vᵀ, v = (z + Hz)/2
        vv = (z + hz) / 2
        r0 = y - vv * (vv @ s)
        corr = curv.correction(rows, jnp.ones(1, bool), apply_b, jnp.asarray(False))
        yy, a = np.asarray(corr.y), np.asarray(corr.alpha)
        np.testing.assert_allclose(yy @ np.diag(a) @ yy.T, np.outer(r0, r0) / (r0 @ s), atol=1e-3)


if __name__ == "__main__":
    absltest.main()
