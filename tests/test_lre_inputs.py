"""LRE on bad and edge-case inputs (issue 14): argument validation, non-finite
gradients for every inner optimizer, ``optax.inject_hyperparams`` with only the
passed structural arguments static, float16/bfloat16 and integer parameters.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized

import lowrank_optax as lowrank

C, B = lowrank.curvatures, lowrank.bases
OK = dict(curvature=C.covariance(), basis=B.ggt(3))


class ValidationTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("negative_lr", dict(learning_rate=-1.0), "learning_rate"),
        ("nan_lr", dict(learning_rate=float("nan")), "learning_rate"),
        ("string_dtype", dict(compute_dtype="foo"), "compute_dtype"),
        ("integer_dtype", dict(compute_dtype=jnp.int32), "compute_dtype"),
        ("complex_dtype", dict(compute_dtype=jnp.complex64), "compute_dtype"),
        ("zero_update_freq", dict(update_freq=0), "update_freq"),
        ("float_update_freq", dict(update_freq=1.5), "update_freq"),
        ("negative_init_steps", dict(init_steps=-1), "init_steps"),
        ("negative_seed", dict(seed=-1), "seed"),
        ("float_seed", dict(seed=0.5), "seed"),
        ("bad_symmetrize", dict(symmetrize="yes"), "symmetrize"),
        ("bad_per_leaf", dict(per_leaf="yes"), "per_leaf"),
        ("bad_curvature", dict(curvature="covariance"), "curvature"),
        ("bad_basis", dict(basis="ggt"), "basis"),
    )
    def test_bad_value_raises_value_error_naming_it(self, kwargs, name):
        kwargs = dict(kwargs)
        lr = kwargs.pop("learning_rate", 0.1)
        with self.assertRaisesRegex(ValueError, f"`{name}`"):
            lowrank.lre(lr, **kwargs)
        if name != "learning_rate":
            with self.assertRaisesRegex(ValueError, f"`{name}`"):
                lowrank.eigenbasis_update(None, **{**OK, **kwargs})

    @parameterized.named_parameters(
        ("string", "adam", "`inner`"),
        ("factory", optax.adam, "`inner`"),
        ("list_entry", [lowrank.scale_by_adam_in_basis(), "cautious"], r"`inner\[1\]`"),
    )
    def test_non_transformation_inner_raises_type_error(self, inner, pattern):
        with self.assertRaisesRegex(TypeError, pattern):
            lowrank.eigenbasis_update(inner, **OK)
        with self.assertRaisesRegex(TypeError, pattern):
            lowrank.lre(0.1, inner=inner)

    def test_valid_edge_values_are_accepted(self):
        p = jnp.ones(3)
        ggt = B.ggt(3)
        for tx in (
            lowrank.lre(0.0, basis=ggt),
            lowrank.lre(optax.linear_schedule(0.1, 0.0, 10), basis=ggt),
            lowrank.lre(0.1, basis=ggt, compute_dtype="float32", seed=np.int64(3)),
            lowrank.lre(0.1, basis=ggt, compute_dtype=jnp.bfloat16),  # promoted to float32
            lowrank.eigenbasis_update([], **OK),
        ):
            u, _ = jax.jit(tx.update)(p, tx.init(p), p)
            self.assertTrue(np.all(np.isfinite(u)))


def _hvp_extra(p):
    return {"hvp_fn": lambda t: 2.0 * t}  # the Hessian of sum(p**2)


# name -> (inner list, needs Hessian-vector products)
INNER = {
    "adam": (lambda: [lowrank.scale_by_adam_in_basis(b2=0.99)], False),
    "full_matrix_adam": (lambda: [lowrank.scale_by_full_matrix_adam_in_basis()], False),
    "hutchinson_adam": (lambda: [lowrank.scale_by_hutchinson_adam_in_basis()], True),
    "full_matrix_hutchinson_adam": (
        lambda: [lowrank.scale_by_full_matrix_hutchinson_adam_in_basis()],
        True,
    ),
    "full_matrix_bfgs_adam": (lambda: [lowrank.scale_by_full_matrix_bfgs_adam_in_basis()], True),
    "cubic_adam": (lambda: [lowrank.scale_by_cubic_adam_in_basis()], False),
    "lion": (lambda: [lowrank.scale_by_lion_in_basis()], False),
    "cautious_lion": (lambda: [lowrank.scale_by_lion_in_basis(cautious=True)], False),
    "ema": (lambda: [lowrank.ema_in_basis()], False),
    "cautious": (lambda: [lowrank.cautious_in_basis()], False),
    "clip_norm_by_ema": (lambda: [lowrank.clip_norm_by_ema_in_basis()], False),
    "copy_grad_sign": (lambda: [lowrank.copy_grad_sign_in_basis()], False),
    "inverse_eigenvalues": (lambda: [lowrank.scale_by_inverse_eigenvalues(0.5)], False),
    "zero_nans": (lambda: [optax.zero_nans()], False),
    "identity": (lambda: None, False),
    "default_chain": (lambda: "default", False),
}


class NonFiniteGradientTest(parameterized.TestCase):
    """A NaN/Inf gradient gives a NaN update for every inner optimizer (as optax.adam)."""

    @parameterized.named_parameters(*[(k, k) for k in INNER])
    def test_non_finite_gradient_gives_nan_update(self, name):
        make, hvp = INNER[name]
        inner = make()
        kwargs = {"inner": None if inner == "default" else inner}
        if inner is None:
            kwargs["inner"] = []  # lre's None is the default chain; [] is the identity
        if hvp:
            kwargs["curvature"] = C.full_hutchinson_hessian()
        tx = lowrank.lre(0.1, basis=B.ggt(4), **kwargs)
        p = jnp.array([1.0, -2.0, 0.5])
        extra = _hvp_extra(p) if hvp else {}
        step = jax.jit(lambda g, s: tx.update(g, s, p, **extra))
        state0 = tx.init(p)
        for bad in (jnp.nan, jnp.inf, -jnp.inf):
            g_bad = jnp.array([0.3, bad, -1.0])
            # Before any basis exists (no valid coordinate) ...
            u, _ = step(g_bad, state0)
            self.assertTrue(np.all(np.isnan(u)), msg=f"first step, {bad}: {u}")
            # ... and after finite steps.
            state = state0
            for g in (p, 2 * p + 0.1):
                u, state = step(g, state)
                self.assertTrue(np.all(np.isfinite(u)))
            u, bad_state = step(g_bad, state)
            self.assertTrue(np.all(np.isnan(u)), msg=f"{bad}: {u}")
            if hvp:  # the correction comes from z and Hz, not from the gradient
                continue
            # A gradient correction with a non-finite entry keeps the basis.
            for a, b in zip(
                jax.tree.leaves(bad_state[0].blocks), jax.tree.leaves(state[0].blocks), strict=True
            ):
                np.testing.assert_array_equal(a, b)

    def test_default_chain_stays_nan_after_a_nan_like_optax_adam(self):
        # The reported defect: after one NaN the update was exactly 0 forever while
        # Adam's state was NaN. Now the NaN shows in later updates too, as with
        # optax.adam (whose NaN stays in the coordinates it entered; in the
        # eigenbasis every coordinate mixes every entry).
        p = jnp.array([1.0, -2.0, 0.5])
        g_nan = jnp.array([jnp.nan, 1.0, 1.0])
        for tx, nan_everywhere in (
            (lowrank.lre(0.1, basis=B.ggt(4)), True),
            (optax.adam(0.1), False),
        ):
            step = jax.jit(lambda g, s, tx=tx: tx.update(g, s, p))
            _, state = step(p, tx.init(p))
            _, state = step(g_nan, state)
            for _ in range(2):
                u, state = step(p, state)
                self.assertTrue(np.isnan(u[0]) and np.all(np.isnan(u[1:]) == nan_everywhere), u)

    def test_apply_if_finite_skips_the_step_and_keeps_the_state(self):
        p = jnp.array([1.0, -2.0, 0.5])
        tx = optax.apply_if_finite(lowrank.lre(0.1, basis=B.ggt(4)), 3)
        step = jax.jit(lambda g, s: tx.update(g, s, p))
        _, state = step(p, tx.init(p))
        u, skipped = step(jnp.array([jnp.nan, 1.0, 1.0]), state)
        np.testing.assert_array_equal(u, 0.0)
        for a, b in zip(
            jax.tree.leaves(skipped.inner_state), jax.tree.leaves(state.inner_state), strict=True
        ):
            np.testing.assert_array_equal(a, b)
        u, _ = step(2 * p, skipped)
        self.assertTrue(np.all(np.isfinite(u)) and np.any(u != 0))


class InjectHyperparamsTest(parameterized.TestCase):
    """Only the structural arguments the user passes need listing as static."""

    @parameterized.named_parameters(
        ("lre_defaults", lambda: optax.inject_hyperparams(lowrank.lre)(learning_rate=0.1)),
        # (ggt's default history of 100 columns: the alias exactly as a user writes it)
        (
            "lre_passed_structural",
            lambda: optax.inject_hyperparams(
                lowrank.lre, static_args=("update_freq", "init_steps", "seed", "compute_dtype")
            )(
                0.1,
                basis=B.eigen(3),
                inner=[lowrank.scale_by_adam_in_basis()],
                update_freq=2,
                init_steps=1,
                seed=3,
                compute_dtype=jnp.float32,
                per_leaf=True,
                symmetrize="average",
            ),
        ),
        (
            "eigenbasis_update",
            lambda: optax.inject_hyperparams(lowrank.eigenbasis_update)(
                [lowrank.scale_by_adam_in_basis()], curvature=C.covariance(), basis=B.ggt(3)
            ),
        ),
        (
            "lre_schedule",
            lambda: optax.inject_hyperparams(lowrank.lre)(
                learning_rate=optax.linear_schedule(0.1, 0.01, 5)
            ),
        ),
    )
    def test_inits_and_updates_under_jit(self, make):
        tx = make()
        p = {"a": jnp.array([1.0, -2.0, 0.5]), "b": jnp.ones((2, 2))}
        state = jax.jit(tx.init)(p)
        step = jax.jit(tx.update)
        for _ in range(3):
            u, state = step(p, state, p)
            p = optax.apply_updates(p, u)
        self.assertTrue(all(np.all(np.isfinite(x)) for x in jax.tree.leaves(u)))

    @parameterized.named_parameters(
        *[
            (name, name)
            for name in (
                "scale_by_full_matrix_adam_in_basis",
                "scale_by_hutchinson_adam_in_basis",
                "scale_by_full_matrix_hutchinson_adam_in_basis",
                "scale_by_full_matrix_bfgs_adam_in_basis",
                "scale_by_cubic_adam_in_basis",
                "scale_by_lion_in_basis",
                "ema_in_basis",
                "cautious_in_basis",
                "clip_norm_by_ema_in_basis",
                "copy_grad_sign_in_basis",
                "scale_by_inverse_eigenvalues",
            )
        ]
    )
    def test_inner_primitive_with_defaults(self, name):
        tx = optax.inject_hyperparams(getattr(lowrank, name))()
        u = jnp.array([1.0, -2.0, 0.5])
        extra = dict(
            projected_grad=u,
            eigenvalues=jnp.array([1.0, 2.0, 3.0]),
            basis_valid=jnp.ones(3, jnp.bool_),
            curvature_probes=lowrank.CurvatureProbes(u, 2 * u, jnp.asarray(True)),
        )
        out, _ = jax.jit(lambda u, s: tx.update(u, s, None, **extra))(u, jax.jit(tx.init)(u))
        self.assertTrue(np.all(np.isfinite(out)))

    def test_injected_learning_rate_matches_plain_alias(self):
        p = jnp.array([1.0, -2.0, 0.5])
        plain, injected = (
            lowrank.lre(0.1, basis=B.ggt(3)),
            optax.inject_hyperparams(lowrank.lre)(learning_rate=0.1, basis=B.ggt(3)),
        )
        u_plain, _ = jax.jit(plain.update)(p, plain.init(p), p)
        step = jax.jit(injected.update)
        u_inj, state = step(p, injected.init(p), p)
        np.testing.assert_allclose(u_inj, u_plain, rtol=1e-6)
        state.hyperparams["learning_rate"] = jnp.asarray(0.05)
        u_half, _ = step(p, injected.init(p)._replace(hyperparams=state.hyperparams), p)
        np.testing.assert_allclose(u_half, u_plain / 2, rtol=1e-6)


class DtypeTest(parameterized.TestCase):
    @parameterized.parameters(jnp.float16, jnp.bfloat16)
    def test_half_precision_params_train_in_float32(self, dtype):
        target = jnp.array([1.0, -2.0, 3.0, 0.5], dtype)
        loss = lambda p: jnp.sum((p.astype(jnp.float32) - target) ** 2)  # noqa: E731
        tx = lowrank.lre(0.3, basis=B.ggt(4))
        p = jnp.zeros(4, dtype)
        state = tx.init(p)
        self.assertEqual(state[0].blocks[0].eigenvalues.dtype, jnp.float32)
        step = jax.jit(tx.update)
        for _ in range(60):
            u, state = step(jax.grad(loss)(p), state, p)
            self.assertEqual(u.dtype, dtype)
            p = optax.apply_updates(p, u)
        self.assertTrue(np.all(np.isfinite(np.asarray(p, np.float32))))
        self.assertLess(float(loss(p)), 1e-2)  # from 14.25 (float32: 1.9e-3)

    @parameterized.parameters(jnp.int32, jnp.bool_, jnp.complex64)
    def test_non_floating_params_raise(self, dtype):
        tx = lowrank.lre(0.1)
        p = jnp.ones(3, dtype)
        with self.assertRaisesRegex(ValueError, "floating-point parameters"):
            tx.init(p)
        state = tx.init(jnp.ones(3))
        with self.assertRaisesRegex(ValueError, "floating-point gradients"):
            tx.update(p, state)


if __name__ == "__main__":
    absltest.main()
