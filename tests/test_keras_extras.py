"""Keras-style options of galore_adamw, param_ema, clip_by_leaf_norm, decay_weights_after_update."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import absltest, parameterized
from core_np import Adam, back, project, svd_basis
from optax._src import test_utils

import lowrank_optax as lowrank

LR, RANK, GAP = 1e-2, 2, 2
SHAPES = {"w": (6, 4), "b": (4,)}


def _grad_seq(steps, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return [
        {k: (scale * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}
        for _ in range(steps)
    ]


def _params(seed=100):
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(rng.standard_normal(s).astype(np.float32)) for k, s in SHAPES.items()}


def _run(tx, grads, params=None, apply=True):
    """Jitted trajectory (params updated when ``apply``); returns updates, states, params."""
    params = _params() if params is None else params
    state = tx.init(params)
    step = jax.jit(tx.update)
    ups, states, ps = [], [state], [params]
    for g in grads:
        u, state = step(g, state, params)
        if apply:
            params = optax.apply_updates(params, u)
        ups.append(jax.tree.map(np.asarray, u))
        states.append(state)
        ps.append(params)
    return ups, states, ps


def _find(state, cls):
    found = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, cls))
    return next(x for x in found if isinstance(x, cls))


def _core(**kwargs):
    """The projected-Adam piece of galore_adamw (galore.md §1)."""
    return lowrank.project_lowrank(
        lowrank.scale_by_adam_in_basis(0.9, 0.999, 1e-6, eps_mode="galore"),
        rank=RANK,
        update_proj_gap=GAP,
        **kwargs,
    )


# numpy formula of each Keras gradient option, and the optax piece it must map to.
def _leaf_clip(g, c):
    return {k: x * min(1.0, c / np.linalg.norm(x)) for k, x in g.items()}


def _global_clip(g, c):
    norm = np.sqrt(sum(np.sum(np.square(x, dtype=np.float64)) for x in g.values()))
    return {k: x * min(1.0, c / norm) for k, x in g.items()}


OPTIONS = {
    "clipnorm": (0.5, lambda c: lowrank.clip_by_leaf_norm(c), _leaf_clip),
    "clipvalue": (
        0.3,
        lambda c: optax.clip(c),
        lambda g, c: {k: np.clip(x, -c, c) for k, x in g.items()},
    ),
    "global_clipnorm": (0.7, lambda c: optax.clip_by_global_norm(c), _global_clip),
    "loss_scale_factor": (
        128.0,
        lambda s: optax.scale(1.0 / s),
        lambda g, s: {k: x / s for k, x in g.items()},
    ),
}


class GradientOptionsTest(parameterized.TestCase):
    @parameterized.parameters(*OPTIONS)
    def test_option_maps_to_its_piece(self, option):
        value, piece, formula = OPTIONS[option]
        grads = _grad_seq(3, seed=1, scale=3.0)
        ours = _run(
            lowrank.galore_adamw(LR, rank=RANK, update_proj_gap=GAP, **{option: value}), grads
        )
        explicit = optax.chain(piece(value), _core(), optax.scale_by_learning_rate(LR))
        ref = _run(explicit, grads)
        test_utils.assert_trees_all_equal(ours[0], ref[0])
        test_utils.assert_trees_all_equal(ours[1][-1], ref[1][-1])
        # The piece does what the Keras option says: Adam's first moment after one step
        # holds (1 - b1) times the (projected) transformed gradient.
        g = formula(grads[0], value)
        state = _find(ours[1][1], lowrank.ProjectLowrankState)
        # Clipped values make exact ties in |U| (e.g. rows of ±c that are negatives of
        # each other), which round-off breaks either way: compare sign-free quantities.
        _, vh = svd_basis(g["w"], RANK)
        p = np.asarray(state.bases["['w']"].right, np.float64)
        np.testing.assert_allclose(p.T @ p, vh.T @ vh, atol=2e-5)
        mu = state.inner_state.mu
        np.testing.assert_allclose(np.asarray(mu["b"]), 0.1 * g["b"], rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(
            np.asarray(mu["w"]) @ p, 0.1 * g["w"] @ vh.T @ vh, rtol=1e-4, atol=1e-7
        )

    @parameterized.parameters(
        {"clipnorm": 1.0, "clipvalue": 1.0},
        {"clipnorm": 1.0, "global_clipnorm": 1.0},
        {"clipvalue": 1.0, "global_clipnorm": 1.0},
        {"clipnorm": 1.0, "clipvalue": 1.0, "global_clipnorm": 1.0},
    )
    def test_more_than_one_clip_raises(self, **clips):
        msg = "Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set."
        with pytest.raises(ValueError) as err:
            lowrank.galore_adamw(LR, rank=RANK, **clips)
        self.assertIn(msg, str(err.value))

    @parameterized.parameters(
        ("clipnorm", 0.0),
        ("clipvalue", -1.0),
        ("global_clipnorm", 0.0),
        ("loss_scale_factor", 0.0),
        ("ema_momentum", 1.5),
        ("ema_overwrite_frequency", 0),
        ("gradient_accumulation_steps", 1),
        ("gradient_accumulation_steps", 0),
        ("gradient_accumulation_steps", 2.5),
    )
    def test_bad_values(self, name, value):
        with pytest.raises(ValueError, match=f"`{name}`"):
            lowrank.galore_adamw(LR, rank=RANK, **{name: value})


class ClipByLeafNormTest(absltest.TestCase):
    def test_each_leaf_clipped_by_its_own_norm(self):
        g = {"a": np.array([3.0, 4.0], np.float32), "b": np.array([0.3, 0.4], np.float32)}
        g["z"] = np.zeros((2, 2), np.float32)
        tx = lowrank.clip_by_leaf_norm(1.0)
        out, _ = tx.update(g, tx.init(g))
        np.testing.assert_allclose(np.asarray(out["a"]), [0.6, 0.8], rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(out["b"]), g["b"])  # under the limit
        np.testing.assert_array_equal(np.asarray(out["z"]), 0.0)  # zero stays zero, no NaN

    def test_bad_max_norm(self):
        with pytest.raises(ValueError, match="`max_norm`"):
            lowrank.clip_by_leaf_norm(0.0)


class ParamEmaTest(parameterized.TestCase):
    M = 0.9

    def _sgd_reference(self, grads, params, freq):
        """numpy: p' = p - 0.1 g; ema = p' (step 1), m·ema + (1-m)·p'; overwrite p ← ema."""
        p = {k: np.asarray(v, np.float64) for k, v in params.items()}
        ema, out = None, []
        for t, g in enumerate(grads, start=1):
            p = {k: p[k] - 0.1 * g[k] for k in p}
            if ema is None:
                ema = dict(p)
            else:
                ema = {k: self.M * ema[k] + (1 - self.M) * p[k] for k in p}
            if freq is not None and t % freq == 0:
                p = dict(ema)
            out.append((dict(p), dict(ema)))
        return out

    @parameterized.parameters(None, 1, 3)
    def test_first_step_copy_and_overwrite_cadence(self, freq):
        grads = _grad_seq(7, seed=2)
        params = _params()
        tx = lowrank.param_ema(optax.sgd(0.1), momentum=self.M, overwrite_frequency=freq)
        _, states, ps = _run(tx, grads, params)
        ref = self._sgd_reference(grads, params, freq)
        for t in range(7):
            p_ref, ema_ref = ref[t]
            test_utils.assert_trees_all_close(ps[t + 1], p_ref, rtol=1e-5, atol=1e-6)
            test_utils.assert_trees_all_close(states[t + 1].ema, ema_ref, rtol=1e-5, atol=1e-6)
            overwritten = freq is not None and (t + 1) % freq == 0
            # params equal the EMA (up to the round-off of p + (ema - p)) on overwrite
            # steps and on the first step (copy) only.
            same = all(
                np.allclose(np.asarray(ps[t + 1][k]), np.asarray(states[t + 1].ema[k]), atol=1e-6)
                for k in SHAPES
            )
            self.assertEqual(same, overwritten or t == 0, f"step {t + 1}")
        test_utils.assert_trees_all_equal(lowrank.ema_params(states[-1]), states[-1].ema)
        self.assertEqual(int(states[-1].count), 7)

    def test_galore_adamw_use_ema(self):
        grads = _grad_seq(4, seed=3)
        kwargs = dict(rank=RANK, update_proj_gap=GAP, weight_decay=0.1)
        plain = _run(lowrank.galore_adamw(LR, **kwargs), grads[:1])
        ema_tx = lowrank.galore_adamw(
            LR, use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=2, **kwargs
        )
        _, states, ps = _run(ema_tx, grads)
        self.assertIsInstance(states[0], lowrank.ParamEmaState)
        # Step 1: the EMA is a copy of the updated params (same update as without EMA).
        test_utils.assert_trees_all_close(ps[1], plain[2][1], rtol=0, atol=1e-6)
        test_utils.assert_trees_all_close(lowrank.ema_params(states[1]), ps[1], rtol=0, atol=1e-6)
        # Step 2 overwrites: params become 0.5·ema_1 + 0.5·p'_2.
        test_utils.assert_trees_all_close(ps[2], lowrank.ema_params(states[2]), rtol=0, atol=1e-6)
        # p'_2: the inner (plain galore_adamw) update from the state held inside param_ema.
        inner_update, _ = jax.jit(lowrank.galore_adamw(LR, **kwargs).update)(
            grads[1], states[1].inner_state, ps[1]
        )
        p2_plain = optax.apply_updates(ps[1], inner_update)
        test_utils.assert_trees_all_close(
            ps[2], jax.tree.map(lambda e, q: 0.5 * e + 0.5 * q, ps[1], p2_plain), atol=1e-6
        )
        self.assertFalse(np.allclose(np.asarray(ps[3]["w"]), np.asarray(states[3].ema["w"])))

    def test_ema_params_without_ema_raises(self):
        with pytest.raises(ValueError, match="ParamEmaState"):
            lowrank.ema_params(optax.adam(1e-3).init(_params()))

    def test_needs_params(self):
        tx = lowrank.param_ema(optax.sgd(0.1))
        with pytest.raises(ValueError, match="params"):
            tx.update(_params(), tx.init(_params()))

    @parameterized.parameters(("momentum", 1.5), ("momentum", -0.1), ("overwrite_frequency", 0))
    def test_bad_args(self, name, value):
        with pytest.raises(ValueError, match=f"`{name}`"):
            lowrank.param_ema(optax.sgd(0.1), **{name: value})


class GradientAccumulationTest(absltest.TestCase):
    def test_multisteps_zeros_then_mean_gradient_step(self):
        k = 3
        grads = _grad_seq(2 * k, seed=4)
        kwargs = dict(rank=RANK, update_proj_gap=GAP, weight_decay=0.1)
        acc = _run(lowrank.galore_adamw(LR, gradient_accumulation_steps=k, **kwargs), grads)
        means = [
            jax.tree.map(lambda *xs: np.mean(np.stack(xs), axis=0), *grads[i * k : (i + 1) * k])
            for i in range(2)
        ]
        ref = _run(lowrank.galore_adamw(LR, **kwargs), means)
        for t in range(2 * k):
            if (t + 1) % k:
                for x in jax.tree.leaves(acc[0][t]):
                    np.testing.assert_array_equal(x, 0.0)
            else:
                test_utils.assert_trees_all_close(
                    acc[0][t], ref[0][(t + 1) // k - 1], rtol=1e-5, atol=1e-7
                )


class DecayWeightsAfterUpdateTest(parameterized.TestCase):
    @parameterized.named_parameters(("constant", False), ("schedule", True))
    def test_reproduces_decay_of_the_updated_weights(self, schedule):
        wd, steps = 0.3, 3
        lr = (lambda t: 0.1 / (t + 1.0)) if schedule else 0.1
        lr_at = (lambda t: 0.1 / (t + 1.0)) if schedule else (lambda t: 0.1)
        # u = g (identity), then decay, then scale_by_learning_rate.
        tx = optax.chain(
            optax.identity(),
            lowrank.decay_weights_after_update(wd, lr),
            optax.scale_by_learning_rate(lr),
        )
        grads = _grad_seq(steps, seed=5)
        params = _params()
        _, _, ps = _run(tx, grads, params)
        w = {k: np.asarray(v, np.float64) for k, v in params.items()}
        for t in range(steps):
            # W_{t+1} = (W_t - lr_t·u_t)(1 - lr_t·wd)   (galore-torch / HF AdamW order)
            w = {k: (w[k] - lr_at(t) * grads[t][k]) * (1 - lr_at(t) * wd) for k in w}
            test_utils.assert_trees_all_close(ps[t + 1], w, rtol=2e-6, atol=1e-7)

    def test_mask(self):
        tx = optax.chain(
            lowrank.decay_weights_after_update(0.5, 0.1, mask={"w": True, "b": False}),
            optax.scale_by_learning_rate(0.1),
        )
        grads, params = _grad_seq(1, seed=6), _params()
        _, _, ps = _run(tx, grads, params)
        np.testing.assert_allclose(
            np.asarray(ps[1]["w"]),
            (np.asarray(params["w"]) - 0.1 * grads[0]["w"]) * (1 - 0.05),
            rtol=1e-6,
        )
        np.testing.assert_allclose(
            np.asarray(ps[1]["b"]), np.asarray(params["b"]) - 0.1 * grads[0]["b"], rtol=1e-6
        )

    def test_needs_params_and_valid_args(self):
        tx = lowrank.decay_weights_after_update(0.1, 0.1)
        with pytest.raises(ValueError, match="params"):
            tx.update(_params(), tx.init(_params()))
        with pytest.raises(ValueError, match="`weight_decay`"):
            lowrank.decay_weights_after_update(-0.1, 0.1)
        with pytest.raises(ValueError, match="`learning_rate`"):
            lowrank.decay_weights_after_update(0.1, -0.1)

    def test_galore_adamw_step_formula(self):
        """W_{t+1} = (W_t - lr·scale·back(N_t))(1 - lr·wd), biases without projection/scale."""
        wd, scale, steps = 0.2, 0.5, 3
        grads = _grad_seq(steps, seed=7)
        params = _params()
        tx = lowrank.galore_adamw(LR, weight_decay=wd, rank=RANK, update_proj_gap=GAP, scale=scale)
        _, _, ps = _run(tx, grads, params)
        w = {k: np.asarray(v, np.float64) for k, v in params.items()}
        adam = {k: Adam(0.9, 0.999, 1e-6, eps_mode="galore") for k in w}
        for t, g in enumerate(grads):
            if t % GAP == 0:
                u, vh = svd_basis(g["w"], RANK)
            n = adam["w"].step(project(g["w"], "right", u, vh))
            w["w"] = (w["w"] - LR * scale * back(n, "right", u, vh)) * (1 - LR * wd)
            w["b"] = (w["b"] - LR * adam["b"].step(g["b"])) * (1 - LR * wd)
            test_utils.assert_trees_all_close(ps[t + 1], w, rtol=1e-5, atol=1e-6)


class KerasReadmeExampleTest(absltest.TestCase):
    def test_original_example_runs_in_optax_form(self):
        # Keras GaLore README: rank=10, update_proj_gap=50, scale=0.5, weight decay 1e-4,
        # projection "symmetric" (= 'full'); Keras' default learning rate 1e-3.
        tx = lowrank.galore_adamw(
            1e-3, weight_decay=1e-4, rank=10, update_proj_gap=50, scale=0.5, proj_type="symmetric"
        )
        rng = np.random.default_rng(8)
        x = jnp.asarray(rng.standard_normal((64, 16)).astype(np.float32))
        y = jnp.asarray(np.sin(np.asarray(x[:, :1]) * 2).astype(np.float32))
        params = {
            "w1": jnp.asarray(rng.standard_normal((16, 32)).astype(np.float32) / 4),
            "b1": jnp.zeros(32),
            "w2": jnp.asarray(rng.standard_normal((32, 1)).astype(np.float32) / 6),
            "b2": jnp.zeros(1),
        }

        def loss(p):
            h = jnp.tanh(x @ p["w1"] + p["b1"])
            return jnp.mean((h @ p["w2"] + p["b2"] - y) ** 2)

        @functools.partial(jax.jit, donate_argnums=(0, 1))
        def step(p, s):
            value, g = jax.value_and_grad(loss)(p)
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s, value

        state = tx.init(params)
        self.assertEqual(state[0].bases["['w1']"].left.shape, (16, 10))
        self.assertEqual(state[0].bases["['w1']"].right.shape, (10, 32))
        losses = []
        for _ in range(100):
            params, state, value = step(params, state)
            losses.append(float(value))
        self.assertTrue(np.all(np.isfinite(losses)))
        self.assertLess(losses[-1], losses[0])


if __name__ == "__main__":
    absltest.main()
