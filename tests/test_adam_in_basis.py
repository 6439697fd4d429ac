"""scale_by_adam_in_basis: optax equivalence, galore eps, moment rotations, AMSGrad, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import absltest, parameterized
from core_np import Adam
from optax._src import test_utils

import lowrank_optax as lowrank
from lowrank_optax._src import adam_in_basis as core

B1, B2 = 0.9, 0.99
SHAPES = {"l": (3, 5), "r": (4, 3), "f": (3, 3), "u": (6,)}


def _grads(steps, seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [
        {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
        for _ in range(steps)
    ]


def _rotations(seed=1, apply=True):
    """A tree of BasisRotation: left on 'l', right on 'r', both on 'f', none on 'u'."""
    rng = np.random.default_rng(seed)
    c = lambda: jnp.asarray(rng.standard_normal((3, 3)).astype(np.float32))
    a = jnp.asarray(apply)
    return {
        "l": lowrank.BasisRotation(c(), None, a),
        "r": lowrank.BasisRotation(None, c(), a),
        "f": lowrank.BasisRotation(c(), c(), a),
        "u": None,
    }


def _rotate(rot, mu, nu, nu_mode="squared"):
    """Explicit formulas: M ← C_L M C_Rᵀ, V ← (C_L∘C_L) V (C_R∘C_R)ᵀ (galore.md §2.4)."""
    mu, nu = np.asarray(mu, np.float64), np.asarray(nu, np.float64)
    if rot is None:
        return mu, nu
    if rot.left is not None:
        c = np.asarray(rot.left, np.float64)
        mu = c @ mu
        nu = (c * c) @ nu if nu_mode == "squared" else nu
    if rot.right is not None:
        c = np.asarray(rot.right, np.float64)
        mu = mu @ c.T
        nu = nu @ (c * c).T if nu_mode == "squared" else nu
    return mu, nu


def _run(tx, grads, rotation_at=None, rotations=None):
    """Jitted trajectory; ``rotations`` is passed as ``basis_rotation`` at step ``rotation_at``."""
    state = tx.init(jax.tree.map(jnp.zeros_like, grads[0]))
    plain = jax.jit(tx.update)
    rotated = jax.jit(lambda g, s, r: tx.update(g, s, basis_rotation=r))
    outs, states = [], [state]
    for t, g in enumerate(grads):
        if t == rotation_at:
            u, state = rotated(g, state, rotations)
        else:
            u, state = plain(g, state)
        outs.append(u)
        states.append(state)
    return outs, states


class OptaxEquivalenceTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("default", {}),
        ("eps_root", {"eps_root": 1e-6, "eps": 1e-4}),
        ("mu_dtype", {"mu_dtype": jnp.bfloat16}),
    )
    def test_bitwise_equal_to_scale_by_adam(self, kwargs):
        grads = _grads(5, seed=2)
        ours = _run(lowrank.scale_by_adam_in_basis(B1, B2, **kwargs), grads)
        ref = _run(optax.scale_by_adam(B1, B2, **kwargs), grads)
        test_utils.assert_trees_all_equal(ours[0], ref[0])
        for s_ours, s_ref in zip(ours[1], ref[1], strict=True):
            test_utils.assert_trees_all_equal(
                (s_ours.count, s_ours.mu, s_ours.nu), (s_ref.count, s_ref.mu, s_ref.nu)
            )
            self.assertIsNone(s_ours.nu_max)

    def test_rotation_with_apply_false_is_bitwise_identity(self):
        grads = _grads(4, seed=3)
        tx = lowrank.scale_by_adam_in_basis(B1, B2)
        plain = _run(tx, grads)
        off = _run(tx, grads, rotation_at=2, rotations=_rotations(apply=False))
        test_utils.assert_trees_all_equal(plain, off)


class GaloreEpsTest(absltest.TestCase):
    def test_formula(self):
        eps = 1e-3  # large enough to make the eps placement visible
        grads = _grads(6, seed=4)
        outs, _ = _run(lowrank.scale_by_adam_in_basis(B1, B2, eps, eps_mode="galore"), grads)
        for name in SHAPES:
            ref = Adam(B1, B2, eps, eps_mode="galore")
            opt = Adam(B1, B2, eps, eps_mode="optax")
            for t, g in enumerate(grads):
                expected = ref.step(g[name])
                np.testing.assert_allclose(np.asarray(outs[t][name]), expected, rtol=1e-5)
                # and it is a different convention from optax's
                self.assertFalse(np.allclose(expected, opt.step(g[name]), rtol=1e-5, atol=0))


class RotationTest(parameterized.TestCase):
    @parameterized.parameters(("squared", "optax"), ("keep", "optax"), ("squared", "galore"))
    def test_rotation_formulas(self, nu_reproject, eps_mode):
        grads = _grads(4, seed=5)
        rots = _rotations(seed=6)
        tx = lowrank.scale_by_adam_in_basis(B1, B2, nu_reproject=nu_reproject, eps_mode=eps_mode)
        outs, states = _run(tx, grads, rotation_at=2, rotations=rots)
        before, after = states[2], states[3]
        g = grads[2]
        for name in SHAPES:
            mu, nu = _rotate(rots[name], before.mu[name], before.nu[name], nu_reproject)
            mu = B1 * mu + (1 - B1) * g[name]
            nu = B2 * nu + (1 - B2) * g[name].astype(np.float64) ** 2
            np.testing.assert_allclose(np.asarray(after.mu[name]), mu, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(np.asarray(after.nu[name]), nu, rtol=1e-5, atol=1e-7)
            self.assertTrue(np.all(np.asarray(after.nu[name]) >= 0))
            t = 3
            if eps_mode == "optax":
                expected = (mu / (1 - B1**t)) / (np.sqrt(nu / (1 - B2**t)) + 1e-8)
            else:
                expected = mu / (np.sqrt(nu) + 1e-8) * np.sqrt(1 - B2**t) / (1 - B1**t)
            np.testing.assert_allclose(np.asarray(outs[2][name]), expected, rtol=1e-4)
        # The unrotated leaf follows plain Adam.
        plain, _ = _run(tx, grads)
        np.testing.assert_array_equal(np.asarray(outs[2]["u"]), np.asarray(plain[2]["u"]))

    def test_rotation_is_applied_once_then_plain_adam_resumes(self):
        grads = _grads(4, seed=7)
        rots = _rotations(seed=8)
        tx = lowrank.scale_by_adam_in_basis(B1, B2)
        _, states = _run(tx, grads, rotation_at=1, rotations=rots)
        s2, s3 = states[2], states[3]
        for name in SHAPES:
            np.testing.assert_allclose(
                np.asarray(s3.mu[name]),
                B1 * np.asarray(s2.mu[name], np.float64) + (1 - B1) * grads[2][name],
                rtol=1e-6,
                atol=1e-7,
            )


class AmsgradTest(absltest.TestCase):
    def test_decayed_maximum_with_rotation(self):
        a = 0.999  # decays slower than b2, so the maximum outlives nu
        grads = _grads(6, seed=9)
        for t, g in enumerate(grads):  # shrinking gradients: the maximum matters
            for k in g:
                g[k] *= 2.0**-t
        rots = _rotations(seed=10)
        tx = lowrank.scale_by_adam_in_basis(B1, B2, amsgrad_decay=a)
        outs, states = _run(tx, grads, rotation_at=3, rotations=rots)
        for name in SHAPES:
            m = v = vmax = np.zeros(SHAPES[name])
            for t, g in enumerate(grads):
                if t == 3:
                    m, v = _rotate(rots[name], m, v)
                    _, vmax = _rotate(rots[name], m, vmax)
                x = g[name].astype(np.float64)
                m = B1 * m + (1 - B1) * x
                v = B2 * v + (1 - B2) * x * x
                vmax = np.maximum(a * vmax, v)
                k = t + 1
                expected = (m / (1 - B1**k)) / (np.sqrt(vmax / (1 - B2**k)) + 1e-8)
                np.testing.assert_allclose(
                    np.asarray(outs[t][name]), expected, rtol=1e-4, err_msg=f"{name} t={t}"
                )
            np.testing.assert_allclose(np.asarray(states[-1].nu_max[name]), vmax, rtol=1e-5)
            # The maximum is actually used: it differs from the current nu.
            self.assertTrue(np.any(np.asarray(states[-1].nu_max[name]) > v * 1.01))


class DtypeTest(absltest.TestCase):
    def test_mu_dtype(self):
        grads = _grads(3, seed=11)
        tx = lowrank.scale_by_adam_in_basis(B1, B2, mu_dtype=jnp.bfloat16)
        outs, states = _run(tx, grads, rotation_at=1, rotations=_rotations(seed=12))
        for name in SHAPES:
            self.assertEqual(states[-1].mu[name].dtype, jnp.bfloat16)
            self.assertEqual(states[-1].nu[name].dtype, jnp.float32)
            self.assertEqual(outs[-1][name].dtype, jnp.float32)

    def test_bf16_updates_keep_dtype(self):
        grads = [jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), g) for g in _grads(2, 13)]
        for mode in ("optax", "galore"):
            outs, states = _run(lowrank.scale_by_adam_in_basis(eps_mode=mode), grads)
            for name in SHAPES:
                self.assertEqual(outs[-1][name].dtype, jnp.bfloat16)
                self.assertEqual(states[-1].mu[name].dtype, jnp.bfloat16)
                self.assertEqual(states[-1].nu[name].dtype, jnp.bfloat16)


class BadArgsTest(parameterized.TestCase):
    @parameterized.parameters(
        ("b1", 1.0),
        ("b1", -0.5),
        ("b2", 1.0),
        ("b2", 2.0),
        ("eps", -1e-8),
        ("eps_root", -1.0),
        ("eps_mode", "torch"),
        ("nu_reproject", "linear"),
        ("amsgrad_decay", 1.5),
        ("amsgrad_decay", -0.1),
    )
    def test_raises_naming_the_argument(self, name, value):
        with pytest.raises(ValueError, match=f"`{name}`"):
            lowrank.scale_by_adam_in_basis(**{name: value})

    def test_choices_are_listed(self):
        with pytest.raises(ValueError, match="'optax'.*'galore'"):
            lowrank.scale_by_adam_in_basis(eps_mode="torch")
        with pytest.raises(ValueError, match="'squared'.*'keep'"):
            lowrank.scale_by_adam_in_basis(nu_reproject="linear")

    def test_schedules_are_not_validated(self):
        lowrank.scale_by_adam_in_basis(b1=jnp.asarray(0.9), b2=jnp.asarray(0.99))


class AdamCoreTest(parameterized.TestCase):
    """The private core (ema, amsgrad_max, adam_direction) against numpy formulas."""

    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(3)
        self.m = rng.standard_normal((4, 3)).astype(np.float32)
        self.v = np.square(rng.standard_normal((4, 3))).astype(np.float32)
        self.v[0, 0] = self.m[0, 0] = 0.0  # an element whose gradients were always zero

    @parameterized.parameters(1, 2, 7)
    def test_optax_mode_formula(self, t):
        got = core.adam_direction(
            jnp.asarray(self.m),
            jnp.asarray(self.v),
            jnp.asarray(t, jnp.int32),
            b1=B1,
            b2=B2,
            eps=1e-3,
            eps_root=1e-4,
        )
        m, v = self.m.astype(np.float64), self.v.astype(np.float64)
        want = (m / (1 - B1**t)) / (np.sqrt(v / (1 - B2**t) + 1e-4) + 1e-3)
        np.testing.assert_allclose(got, want, rtol=2e-6)

    @parameterized.parameters(1, 2, 7)
    def test_galore_mode_formula(self, t):
        got = core.adam_direction(
            jnp.asarray(self.m),
            jnp.asarray(self.v),
            jnp.asarray(t, jnp.int32),
            b1=B1,
            b2=B2,
            eps=1e-3,
            eps_mode="galore",
        )
        m, v = self.m.astype(np.float64), self.v.astype(np.float64)
        want = m / (np.sqrt(v) + 1e-3) * np.sqrt(1 - B2**t) / (1 - B1**t)
        np.testing.assert_allclose(got, want, rtol=2e-6)

    def test_nu_count_corrects_the_second_moment_separately(self):
        got = core.adam_direction(
            jnp.asarray(self.m),
            jnp.asarray(self.v),
            jnp.asarray(5, jnp.int32),
            b1=B1,
            b2=B2,
            eps=1e-3,
            nu_count=jnp.asarray(2, jnp.int32),
        )
        m, v = self.m.astype(np.float64), self.v.astype(np.float64)
        want = (m / (1 - B1**5)) / (np.sqrt(v / (1 - B2**2)) + 1e-3)
        np.testing.assert_allclose(got, want, rtol=2e-6)

    def test_zero_safe_only_changes_zero_denominators(self):
        args = (jnp.asarray(self.m), jnp.asarray(self.v), jnp.asarray(3, jnp.int32))
        plain = np.asarray(core.adam_direction(*args, b1=B1, b2=B2, eps=0.0))
        safe = np.asarray(core.adam_direction(*args, b1=B1, b2=B2, eps=0.0, zero_safe=True))
        self.assertTrue(np.isnan(plain[0, 0]))
        self.assertEqual(safe[0, 0], 0.0)
        np.testing.assert_array_equal(safe.ravel()[1:], plain.ravel()[1:])

    def test_pytrees_and_arrays(self):
        tree = {"a": jnp.asarray(self.m), "b": (jnp.asarray(self.m[0]),)}
        nus = {"a": jnp.asarray(self.v), "b": (jnp.asarray(self.v[0]),)}
        count = jnp.asarray(4, jnp.int32)
        out = core.adam_direction(tree, nus, count, b1=B1, b2=B2, eps=1e-8)
        single = core.adam_direction(tree["a"], nus["a"], count, b1=B1, b2=B2, eps=1e-8)
        # Not bitwise: XLA:CPU compiles a 2-leaf and a 1-leaf division differently.
        np.testing.assert_allclose(out["a"], single, rtol=1e-6)
        self.assertEqual(out["b"][0].shape, (3,))

    def test_invalid_eps_mode(self):
        with self.assertRaisesRegex(ValueError, "eps_mode"):
            core.adam_direction(self.m, self.v, jnp.asarray(1), b1=B1, b2=B2, eps=0.0, eps_mode="x")

    def test_ema_formulas(self):
        x, m = jnp.asarray(self.m), jnp.asarray(self.v)
        np.testing.assert_array_equal(core.ema(x, m, B1), optax.tree.update_moment(x, m, B1, 1))
        got = core.ema(x, m, B2, offset=1e-3)
        want = B2 * self.v.astype(np.float64) + (1 - B2) * self.m + 1e-3
        np.testing.assert_allclose(got, want, rtol=2e-6)

    def test_amsgrad_max(self):
        old, new = jnp.asarray(self.v), jnp.asarray(self.v[::-1])
        np.testing.assert_array_equal(core.amsgrad_max(old, new), np.maximum(self.v, self.v[::-1]))
        np.testing.assert_array_equal(
            core.amsgrad_max(old, new, 0.5), np.maximum(0.5 * self.v, self.v[::-1])
        )
        self.assertIsNone(core.amsgrad_max(None, new))


if __name__ == "__main__":
    absltest.main()
