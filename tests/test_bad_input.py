"""Bad and edge-case inputs (issue 14): each test failed before its fix.

Wrappers given a non-transformation, an inner transformation that needs
``params`` inside ``project_lowrank``, structural arguments under
``optax.inject_hyperparams``, LORENZA on bare arrays / ``None`` leaves / inside
``optax.masked``, range checks, huge finite gradients, float16 and integer
parameters. The table over every public constructor is in
``test_bad_input_table.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized

import lowrank_optax as lowrank

PARAMS = {"w": jnp.arange(12.0).reshape(4, 3) / 10 - 0.5, "b": jnp.array([0.1, -0.2, 0.3])}


def _loss(p):
    return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(p))


class WrapperInnerTest(parameterized.TestCase):
    """Item 6: a non-transformation ``inner`` raises a TypeError naming ``inner``."""

    @parameterized.named_parameters(
        ("galore", lambda inner: lowrank.galore(inner, rank=2)),
        ("project_lowrank", lambda inner: lowrank.project_lowrank(inner, rank=2)),
        ("lookahead", lambda inner: lowrank.lookahead(inner)),
        ("scout", lambda inner: lowrank.scout(inner)),
        ("param_ema", lambda inner: lowrank.param_ema(inner)),
        ("quantize_state", lambda inner: lowrank.quantize_state(inner)),
        ("subspace_accumulation", lambda inner: lowrank.subspace_accumulation(inner)),
    )
    def test_non_transformation_inner(self, make):
        for bad in ("adam", 3, optax.adam):
            with self.assertRaisesRegex(TypeError, "`inner`"):
                make(bad)

    def test_fused_layers_tx_is_checked_like_inner(self):
        for bad in ("adam", 3, optax.adam):
            with self.assertRaisesRegex(TypeError, "`tx`"):
                lowrank.fused_layers(lambda p, x: x, bad)

    def test_factory_instead_of_transformation_says_call_it(self):
        with self.assertRaisesRegex(TypeError, r"call it"):
            lowrank.galore(optax.adam, rank=2)

    def test_pre_projection_is_checked(self):
        with self.assertRaisesRegex(TypeError, "`pre_projection`"):
            lowrank.project_lowrank(optax.adam(1e-3), rank=2, pre_projection="sam")


class ParamsWithheldTest(absltest.TestCase):
    """Item 9: ``galore(optax.adamw(...))`` says why params are missing and the fix."""

    def test_adamw_inner_names_the_fix(self):
        tx = lowrank.galore(optax.adamw(1e-3), rank=2)
        state = tx.init(PARAMS)
        with self.assertRaisesRegex(ValueError, r"params=None.*galore_adamw") as ctx:
            tx.update(PARAMS, state, PARAMS)
        self.assertIn("decay_weights_after_update", str(ctx.exception))

    def test_the_named_fix_runs(self):
        tx = optax.chain(
            lowrank.galore(optax.scale_by_adam(), rank=2),
            lowrank.decay_weights_after_update(0.1, 1e-3),
            optax.scale_by_learning_rate(1e-3),
        )
        u, _ = tx.update(PARAMS, tx.init(PARAMS), PARAMS)
        self.assertTrue(all(np.all(np.isfinite(x)) for x in jax.tree.leaves(u)))

    def test_other_value_errors_pass_through(self):
        def failing_update(updates, state, params=None):
            raise ValueError("something else")

        tx = lowrank.galore(optax.GradientTransformation(lambda p: (), failing_update), rank=2)
        with self.assertRaisesRegex(ValueError, "^something else$"):
            tx.update(PARAMS, tx.init(PARAMS), PARAMS)


class ProjectLowrankDefaultsTest(absltest.TestCase):
    """Item 8 (wrapper part): defaults need no ``static_args``; integers raise (item 11)."""

    def test_inject_with_only_rank_static(self):
        for factory in (lowrank.galore, lowrank.project_lowrank):
            tx = optax.inject_hyperparams(factory, static_args=("rank",))(optax.adam(1e-2), rank=2)
            state = jax.jit(tx.init)(PARAMS)
            u, _ = jax.jit(tx.update)(PARAMS, state, PARAMS)
            self.assertTrue(all(np.all(np.isfinite(x)) for x in jax.tree.leaves(u)))

    def test_integer_params_raise(self):
        tx = lowrank.galore(optax.adam(1e-3), rank=2)
        with self.assertRaisesRegex(ValueError, "floating-point parameters"):
            tx.init({"w": jnp.ones((4, 3), jnp.int32)})


def _rosenbrock(x):
    return (1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2


def _run(tx, params, loss, steps, **extra_fns):
    """``steps`` jitted steps on ``loss``; LORENZA-type steps get ``value_fn=loss``."""

    @jax.jit
    def step(p, s):
        u, s = tx.update(jax.grad(loss)(p), s, p, **extra_fns)
        return optax.apply_updates(p, u), s

    state = tx.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    return params


class LorenzaEdgeTest(absltest.TestCase):
    """Items 3, 4 and 5: bare arrays, ``None`` leaves, ``optax.masked``."""

    def test_bare_array_with_nothing_projected_equals_galore_adamw(self):
        x0 = jnp.array([-1.2, 1.0])
        lorenza = lowrank.lorenza(1e-2, rank=2, rho=0.05)
        galore = lowrank.galore_adamw(1e-2, rank=2)
        got = _run(lorenza, x0, _rosenbrock, 40, value_fn=_rosenbrock)
        want = _run(galore, x0, _rosenbrock, 40)
        np.testing.assert_array_equal(got, want)

    def test_bare_array_is_perturbed_when_asked_or_outside_the_wrapper(self):
        x0 = jnp.array([-1.2, 1.0])
        plain = _run(optax.adam(1e-2), x0, _rosenbrock, 5)
        for tx in (
            lowrank.lorenza(1e-2, rank=2, rho=0.05, perturb_unprojected=True),
            optax.chain(lowrank.zo_sam_perturb(rho=0.05), optax.adam(1e-2)),
        ):
            got = _run(tx, x0, _rosenbrock, 5, value_fn=_rosenbrock)
            self.assertGreater(float(jnp.max(jnp.abs(got - plain))), 1e-4)

    def test_none_leaf_is_skipped(self):
        tx = lowrank.lorenza(1e-1, rank=2)
        with_none = {"w": PARAMS["w"], "b": None}
        got = _run(tx, with_none, lambda p: _loss(p["w"]), 3, value_fn=lambda p: _loss(p["w"]))
        want = _run(tx, {"w": PARAMS["w"]}, lambda p: _loss(p["w"]), 3, value_fn=_loss)
        self.assertIsNone(got["b"])
        np.testing.assert_array_equal(got["w"], want["w"])

    def test_masked_lorenza_value_fn_on_placeholders_raises_with_the_fix(self):
        tx = optax.masked(lowrank.lorenza(1e-1, rank=2), {"w": True, "b": False})
        loss = lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2)  # noqa: E731
        with self.assertRaisesRegex(ValueError, r"MaskedNode.*full_params=params"):
            tx.update(PARAMS, tx.init(PARAMS), PARAMS, value_fn=loss)

    def test_masked_lorenza_with_full_params_sees_the_full_loss(self):
        def loss_fn(p, scale):
            return scale * jnp.sum(jnp.sin(p["w"]) * p["b"])  # couples the two leaves

        masked = optax.masked(lowrank.lorenza(1e-1, rank=2, rho=0.5), {"w": True, "b": False})
        state = masked.init(PARAMS)

        @jax.jit
        def masked_step(p, s):
            fns = lowrank.make_value_and_grad_fns(loss_fn, 2.0, full_params=p)
            u, s = masked.update(fns["grad_fn"](p), s, p, **fns)
            return u, s

        # Reference: LORENZA on the owned leaf alone, the other leaf closed over.
        alone = lowrank.lorenza(1e-1, rank=2, rho=0.5)
        b = PARAMS["b"]
        value_fn = lambda q: loss_fn({"w": q["w"], "b": b}, 2.0)  # noqa: E731
        u_ref, _ = jax.jit(
            lambda p, s: alone.update(jax.grad(value_fn)(p), s, p, value_fn=value_fn)
        )({"w": PARAMS["w"]}, alone.init({"w": PARAMS["w"]}))
        u, _ = masked_step(PARAMS, state)
        np.testing.assert_array_equal(u["w"], u_ref["w"])
        grad_b = jax.grad(loss_fn)(PARAMS, 2.0)["b"]
        np.testing.assert_array_equal(u["b"], grad_b)  # not owned: optax.masked passes it on


if __name__ == "__main__":
    absltest.main()
