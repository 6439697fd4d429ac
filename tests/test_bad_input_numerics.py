"""Numerical edge cases of every family (issue 14, items 10 and 11).

* Huge finite gradients: a ``1e30`` gradient overflows an Adam-type second
  moment to ``inf`` and every later update is exactly 0 (inherited from optax,
  documented); ``optax.clip_by_global_norm`` before the optimizer (for LORENZA:
  on what ``grad_fn`` returns) keeps training going.
* float16 parameters train: aliases compute float16 leaves in float32 and
  return float16 updates that follow the float32 run; integer parameters raise.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized

import lowrank_optax as lowrank

PARAMS = {"w": jnp.arange(12.0).reshape(4, 3) / 10 - 0.5, "b": jnp.array([0.1, -0.2, 0.3])}

# One alias per family (LRE, LRG, GaLore wrapper/alias, every holocron alias).
FAMILIES = {
    "galore_adamw": lambda: lowrank.galore_adamw(1e-2, rank=2),
    "galore_adam": lambda: lowrank.galore(optax.adam(1e-2), rank=2),
    "lre": lambda: lowrank.lre(1e-2),
    "lrg_adam": lambda: lowrank.lrg_adam(1e-2, rank=2),
    "adabelief": lambda: lowrank.adabelief(1e-2),
    "adamp": lambda: lowrank.adamp(1e-2),
    "adan": lambda: lowrank.adan(1e-2),
    "ademamix": lambda: lowrank.ademamix(1e-2),
    "lamb": lambda: lowrank.lamb(1e-2),
    "ralars": lambda: lowrank.ralars(1e-2),
    "tadam": lambda: lowrank.tadam(1e-2),
}


def _max_abs(tree):
    return max(float(jnp.max(jnp.abs(x.astype(jnp.float32)))) for x in jax.tree.leaves(tree))


def _after_huge_gradient(tx, steps=3):
    """Largest |update| of each of ``steps`` normal steps after one 1e30 gradient."""
    step = jax.jit(tx.update)
    state = tx.init(PARAMS)
    u, state = step(jax.tree.map(lambda x: jnp.full_like(x, 1e30), PARAMS), state, PARAMS)
    params = optax.apply_updates(PARAMS, u)
    out = []
    for _ in range(steps):
        u, state = step(jax.tree.map(lambda x: 2 * x, params), state, params)
        params = optax.apply_updates(params, u)
        out.append(_max_abs(u))
    return out


class HugeGradientTest(parameterized.TestCase):
    @parameterized.named_parameters(*FAMILIES.items())
    def test_overflow_freezes_and_clipping_first_keeps_training(self, make):
        self.assertEqual(_after_huge_gradient(make()), [0.0, 0.0, 0.0])
        clipped = _after_huge_gradient(optax.chain(optax.clip_by_global_norm(1.0), make()))
        self.assertTrue(all(np.isfinite(x) and x > 0 for x in clipped), clipped)

    def test_lars_is_not_affected(self):  # its trust ratio divides by the gradient norm
        self.assertTrue(all(x > 0 for x in _after_huge_gradient(lowrank.lars(1e-2))))

    def test_lorenza_clips_what_grad_fn_returns(self):
        """LORENZA's Adam sees ``grad_fn``'s output: a clip before it reaches only refreshes."""
        clip = optax.clip_by_global_norm(1.0)

        def run(clip_grad_fn):
            tx = lowrank.lorenza(1e-2, rank=2)

            @jax.jit
            def step(p, s, scale):
                value_fn = lambda q: scale * jnp.sum(jnp.square(q["w"])) + jnp.sum(q["b"])  # noqa: E731
                grad_fn = jax.grad(value_fn)
                if clip_grad_fn:
                    grad_fn = lambda q: clip.update(jax.grad(value_fn)(q), clip.init(q))[0]  # noqa: E731
                u, s = tx.update(grad_fn(p), s, p, value_fn=value_fn, grad_fn=grad_fn)
                return optax.apply_updates(p, u), s, u

            p, s, _ = step(PARAMS, tx.init(PARAMS), 1e30)
            p, s, u = step(p, s, 1.0)
            return _max_abs(u["w"])

        self.assertEqual(run(clip_grad_fn=False), 0.0)
        self.assertGreater(run(clip_grad_fn=True), 0.0)


HOLOCRON = ("adabelief", "adamp", "adan", "ademamix", "lamb", "lars", "ralars", "tadam")


class NonFiniteGradientTest(parameterized.TestCase):
    """The holocron guide's statement: NaN in, NaN out; apply_if_finite skips."""

    @parameterized.parameters(*HOLOCRON)
    def test_nan_gradient_gives_nan_update_and_apply_if_finite_skips(self, name):
        grads = {"w": PARAMS["w"].at[1, 2].set(jnp.nan), "b": PARAMS["b"]}
        tx = getattr(lowrank, name)(1e-2)
        u, _ = jax.jit(tx.update)(grads, tx.init(PARAMS), PARAMS)
        self.assertTrue(np.isnan(u["w"][1, 2]))
        self.assertTrue(np.all(np.isfinite(u["b"])))  # other leaves are untouched
        safe = optax.apply_if_finite(getattr(lowrank, name)(1e-2), max_consecutive_errors=3)
        state = safe.init(PARAMS)
        u, state = jax.jit(safe.update)(grads, state, PARAMS)
        self.assertEqual(_max_abs(u), 0.0)
        self.assertEqual(int(state.notfinite_count), 1)
        u, _ = jax.jit(safe.update)(PARAMS, state, PARAMS)
        self.assertTrue(all(np.all(np.isfinite(x)) for x in jax.tree.leaves(u)))
        self.assertGreater(_max_abs(u), 0.0)


def _quadratic(p, target):
    # Gradients ~1e-3: (1 - b2) g^2 ~ 1e-9 underflows to 0 in float16.
    return 1e-3 * sum(
        jnp.sum(jnp.square(x.astype(jnp.float32) - t)) for x, t in zip(p, target, strict=True)
    )


HALF_ALIASES = {
    "galore_adamw": lambda: lowrank.galore_adamw(5e-2, rank=2),
    "lorenza": lambda: lowrank.lorenza(5e-2, rank=2),
    "adabelief": lambda: lowrank.adabelief(5e-2),
    "adamp": lambda: lowrank.adamp(5e-2),
    "adan": lambda: lowrank.adan(5e-2),
    "ademamix": lambda: lowrank.ademamix(5e-2),
    "lamb": lambda: lowrank.lamb(5e-2),
    "lars": lambda: lowrank.lars(5e-2, momentum=0.9),
    "ralars": lambda: lowrank.ralars(5e-2),
    "tadam": lambda: lowrank.tadam(5e-2),
}


class Float16Test(parameterized.TestCase):
    @parameterized.named_parameters(*HALF_ALIASES.items())
    def test_float16_follows_the_float32_run(self, make):
        target = (jnp.linspace(-1.0, 1.0, 12).reshape(4, 3), jnp.array([0.5, -0.5, 1.0]))
        loss = lambda p: _quadratic(p, target)  # noqa: E731
        tx = make()

        def run(dtype, steps=5):
            params = tuple(jnp.zeros(t.shape, dtype) + 0.25 for t in target)
            state = tx.init(params)

            @jax.jit
            def step(p, s):
                u, s = tx.update(jax.grad(loss)(p), s, p, value_fn=loss)
                return optax.apply_updates(p, u), s, u

            for _ in range(steps):
                params, state, u = step(params, state)
                self.assertTrue(all(x.dtype == dtype for x in u))
            return params, state

        half, half_state = run(jnp.float16)
        full, _ = run(jnp.float32)
        for h, f in zip(half, full, strict=True):
            np.testing.assert_allclose(np.asarray(h, np.float32), f, atol=5e-3)
        self.assertLess(float(loss(half)), float(loss(tuple(t * 0 + 0.25 for t in target))))
        floats = [x for x in jax.tree.leaves(half_state) if jnp.issubdtype(x.dtype, jnp.floating)]
        self.assertTrue(all(x.dtype == jnp.float32 for x in floats))  # state kept in float32

    @parameterized.named_parameters(*HALF_ALIASES.items())
    def test_integer_params_raise(self, make):
        with self.assertRaisesRegex(ValueError, "floating-point parameters"):
            make().init({"w": jnp.ones((4, 3), jnp.int32)})

    def test_without_float16_leaves_the_alias_is_unchanged(self):
        plain = optax.chain(
            lowrank.scale_by_adan(), lowrank.proximal_decay(0.0, 1e-2), optax.scale(-1e-2)
        )
        alias = lowrank.adan(1e-2)
        s_plain, s_alias = plain.init(PARAMS), alias.init(PARAMS)
        self.assertEqual(jax.tree.structure(s_plain), jax.tree.structure(s_alias))
        for _ in range(3):
            u_plain, s_plain = plain.update(PARAMS, s_plain, PARAMS)
            u_alias, s_alias = alias.update(PARAMS, s_alias, PARAMS)
            for a, b in zip(jax.tree.leaves(u_plain), jax.tree.leaves(u_alias), strict=True):
                np.testing.assert_array_equal(a, b)


if __name__ == "__main__":
    absltest.main()
