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
    )
    def test_non_transformation_inner(self, make):
        for bad in ("adam", 3, optax.adam):
            with self.assertRaisesRegex(TypeError, "`inner`"):
                make(bad)

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


if __name__ == "__main__":
    absltest.main()
