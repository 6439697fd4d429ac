"""Fused per-layer updates: equality with the unfused path, accumulation, errors, memory.

The reference is the ordinary optax step on the same model: ``jax.grad`` of the
plain scan (each layer under ``jax.checkpoint``) and ``tx.update`` on the whole
stacked gradient (for GaLore, with the layer axis declared as a batch axis), and
``optax.MultiSteps(tx, k)`` for accumulation. None of it goes through
``lowrank_optax._src.fused``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import absltest, parameterized

import lowrank_optax as lowrank
from lowrank_optax._src import fused as fused_lib

L, D, H, IN, OUT, B = 3, 8, 12, 5, 3, 4
LR = 3e-2
STEPS = 20


def layer(p, x, gain):
    """A residual MLP layer; ``gain`` is a non-block scalar passed to every layer."""
    h = jnp.tanh((x * p["g"]) @ p["w1"])
    return x + gain * (h @ p["w2"])


def init_model(seed=0):
    ks = jax.random.split(jax.random.PRNGKey(seed), 5)
    stacked = {
        "w1": jax.random.normal(ks[0], (L, D, H)) / np.sqrt(D),
        "w2": jax.random.normal(ks[1], (L, H, D)) / np.sqrt(H),
        "g": 1.0 + 0.1 * jax.random.normal(ks[2], (L, D)),
    }
    params = {
        "w_in": jax.random.normal(ks[3], (IN, D)) / np.sqrt(IN),
        "head": jax.random.normal(ks[4], (D, OUT)) / np.sqrt(D),
        "gain": jnp.asarray(0.7),
    }
    return params, stacked


def batches(n, seed=1):
    rng = np.random.default_rng(seed)
    return [
        (
            rng.standard_normal((B, IN)).astype(np.float32),
            rng.standard_normal((B, OUT)).astype(np.float32),
        )
        for _ in range(n)
    ]


def loss_fn(params, blocks, x, y):
    h = blocks(x @ params["w_in"], params["gain"])
    return jnp.mean((h @ params["head"] - y) ** 2)


def plain_blocks(stacked):
    """The unfused block: a scan with each layer rematerialised."""

    def run(x, gain):
        body = jax.checkpoint(lambda h, p: (layer(p, h, gain), None))
        return jax.lax.scan(body, x, stacked)[0]

    return run


def unfused_step(tx_blocks, tx_rest):
    def step(params, stacked, states, x, y):
        def loss(params, stacked):
            return loss_fn(params, plain_blocks(stacked), x, y)

        value, (g_params, g_stacked) = jax.value_and_grad(loss, argnums=(0, 1))(params, stacked)
        u, s_rest = tx_rest.update(g_params, states[0], params)
        ub, s_blocks = tx_blocks.update(g_stacked, states[1], stacked)
        return (
            optax.apply_updates(params, u),
            optax.apply_updates(stacked, ub),
            (s_rest, s_blocks),
            value,
        )

    return jax.jit(step, donate_argnums=(0, 1, 2))


def copy(tree):
    return jax.tree.map(jnp.array, tree)


def run_unfused(tx_blocks, tx_rest, data, k=1):
    if k > 1:
        tx_blocks = optax.MultiSteps(tx_blocks, k).gradient_transformation()
        tx_rest = optax.MultiSteps(tx_rest, k).gradient_transformation()
    params, stacked = init_model()
    states = (tx_rest.init(params), tx_blocks.init(stacked))
    step = unfused_step(tx_blocks, tx_rest)
    params, stacked = copy(params), copy(stacked)
    for x, y in data:
        params, stacked, states, _ = step(params, stacked, states, x, y)
    return params, stacked, states


def run_fused(tx_layer, tx_rest, data, k=1):
    # The leaf-wise check has its own tests; skipping it here saves compile time.
    layers = lowrank.fused_layers(layer, tx_layer, accumulation_steps=k, check_leafwise=False)
    train = lowrank.fused_train_step(loss_fn, layers, tx_rest)
    params, stacked = init_model()
    state = train.init(params, stacked)
    step = jax.jit(train.step, donate_argnums=(0, 1, 2))
    params, stacked = copy(params), copy(stacked)
    for x, y in data:
        params, stacked, state, _ = step(params, stacked, state, x, y)
    return params, stacked, state


def max_rel_diff(a, b):
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / np.max(np.abs(np.asarray(y))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


STACKED_DIMS = {
    "w1": lowrank.DimensionNumbers(1, 2),
    "w2": lowrank.DimensionNumbers(1, 2),
    "g": None,
}

# name -> (per-layer tx for the fused block, tx on the stacked leaves for the unfused path)
OPTIMIZERS = {
    "adam": (lambda: optax.adam(LR), lambda: optax.adam(LR)),
    "galore_adamw": (
        lambda: lowrank.galore_adamw(LR, weight_decay=0.1, rank=3, update_proj_gap=4),
        lambda: lowrank.galore_adamw(
            LR, weight_decay=0.1, rank=3, update_proj_gap=4, dimension_numbers=STACKED_DIMS
        ),
    ),
    "galore_adam": (
        lambda: lowrank.galore(optax.adam(LR), rank=3, update_proj_gap=4),
        lambda: lowrank.galore(
            optax.adam(LR), rank=3, update_proj_gap=4, dimension_numbers=STACKED_DIMS
        ),
    ),
}


class EqualityTest(parameterized.TestCase):
    @parameterized.parameters(*OPTIMIZERS)
    def test_fused_equals_unfused_after_20_steps(self, name):
        fused_tx, unfused_tx = OPTIMIZERS[name]
        data = batches(STEPS)
        p_u, s_u, _ = run_unfused(unfused_tx(), optax.adam(LR), data)
        p_f, s_f, state = run_fused(fused_tx(), optax.adam(LR), data)
        self.assertLess(max_rel_diff(s_f, s_u), 1e-6)
        self.assertLess(max_rel_diff(p_f, p_u), 1e-6)
        # The parameters moved (the comparison is not between two frozen models).
        _, s0 = init_model()
        self.assertGreater(max_rel_diff(s_f, s0), 1e-2)
        # Per-layer counters: one step per update, in every layer.
        counts = [
            np.asarray(c)
            for c in jax.tree.leaves(state.layers_state.layer_state)
            if jnp.issubdtype(c.dtype, jnp.integer) and c.shape == (L,)
        ]
        self.assertNotEmpty(counts)
        for c in counts:
            np.testing.assert_array_equal(c, np.full(L, STEPS))

    # galore(optax.adam) with k > 1 is covered in the subspace form
    # (tests/test_fused_accumulation.py).
    @parameterized.parameters("adam", "galore_adamw")
    def test_accumulation_equals_multisteps(self, name):
        # k = 2: the refresh (every 4 updates) uses the mean micro-batch gradient
        # on both paths, so they agree across refreshes too.
        fused_tx, unfused_tx = OPTIMIZERS[name]
        k, data = 2, batches(12, seed=3)
        p_u, s_u, _ = run_unfused(unfused_tx(), optax.adam(LR), data, k=k)
        p_f, s_f, state = run_fused(fused_tx(), optax.adam(LR), data, k=k)
        self.assertLess(max_rel_diff(s_f, s_u), 1e-6)
        self.assertLess(max_rel_diff(p_f, p_u), 1e-6)
        self.assertEqual(int(state.layers_state.mini_step), 0)
        counts = [
            np.asarray(c)
            for c in jax.tree.leaves(state.layers_state.layer_state)
            if jnp.issubdtype(c.dtype, jnp.integer) and c.shape == (L,)
        ]
        for c in counts:  # 12 micro-batches = 6 updates
            np.testing.assert_array_equal(c, np.full(L, 6))


class ScheduleTest(absltest.TestCase):
    def test_one_schedule_tick_per_update(self):
        seen = []

        def schedule(count):
            jax.debug.callback(lambda c: seen.append(int(c)), count)
            return 0.1 / (1.0 + count)

        k, n = 3, 9
        layers = lowrank.fused_layers(layer, optax.sgd(schedule), accumulation_steps=k)
        params, stacked = init_model()
        state = layers.init(stacked)
        fn = jax.jit(lowrank.fused_value_and_grad(loss_fn, layers))
        history = [stacked]
        for x, y in batches(n):
            _, _, stacked, state = fn(params, stacked, state, x, y)
            history.append(stacked)
        # Parameters change exactly on micro-batches k, 2k, 3k.
        changed = [max_rel_diff(a, b) > 0 for a, b in zip(history[1:], history[:-1], strict=True)]
        self.assertEqual(changed, [(i + 1) % k == 0 for i in range(n)])
        # The schedule is evaluated at counts 0, 1, 2 (per layer), never at 3..8.
        self.assertEqual(sorted(set(seen)), [0, 1, 2])


class ApiTest(parameterized.TestCase):
    def test_forward_is_the_plain_scan(self):
        params, stacked = init_model()
        layers = lowrank.fused_layers(layer, optax.adam(LR))
        x = jnp.ones((B, D))
        np.testing.assert_allclose(
            layers.forward(stacked, x, params["gain"]),
            plain_blocks(stacked)(x, params["gain"]),
            rtol=1e-6,
        )

    def test_value_and_grad_returns_the_loss_and_non_block_gradient(self):
        params, stacked = init_model()
        ((x, y),) = batches(1)
        layers = lowrank.fused_layers(layer, optax.sgd(0.0))  # lr 0: params unchanged
        fn = lowrank.fused_value_and_grad(loss_fn, layers)
        value, grads, new_stacked, _ = fn(params, stacked, layers.init(stacked), x, y)
        ref_value, ref_grads = jax.value_and_grad(
            lambda p: loss_fn(p, plain_blocks(stacked), x, y)
        )(params)
        np.testing.assert_allclose(value, ref_value, rtol=1e-6)
        # Includes `gain`, whose cotangent is summed over the layers.
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
        for a, b in zip(jax.tree.leaves(new_stacked), jax.tree.leaves(stacked), strict=True):
            np.testing.assert_array_equal(a, b)

    def test_has_aux(self):
        params, stacked = init_model()
        ((x, y),) = batches(1)
        layers = lowrank.fused_layers(layer, optax.sgd(LR), check_leafwise=False)

        def with_aux(params, blocks, x, y):
            loss = loss_fn(params, blocks, x, y)
            return loss, {"twice": 2 * loss}

        fn = lowrank.fused_value_and_grad(with_aux, layers, has_aux=True)
        (loss, aux), _, _, _ = fn(params, stacked, layers.init(stacked), x, y)
        np.testing.assert_allclose(aux["twice"], 2 * loss)

    def test_init_is_vmapped_tx_init(self):
        _, stacked = init_model()
        tx = optax.adam(LR)
        state = lowrank.fused_layers(layer, tx).init(stacked)
        ref = tx.init(stacked)
        self.assertEqual(state.layer_state[0].count.shape, (L,))
        for a, b in zip(
            jax.tree.leaves(state.layer_state[0].mu), jax.tree.leaves(ref[0].mu), strict=True
        ):
            np.testing.assert_array_equal(a, b)
        self.assertEqual(state.acc_grads, ())

    def test_blocks_called_twice_or_never_raises(self):
        params, stacked = init_model()
        ((x, y),) = batches(1)
        layers = lowrank.fused_layers(layer, optax.adam(LR))
        state = layers.init(stacked)

        def twice(params, blocks, x, y):
            return loss_fn(params, blocks, x, y) + loss_fn(params, blocks, x, y)

        with self.assertRaisesRegex(ValueError, "more than once"):
            lowrank.fused_value_and_grad(twice, layers)(params, stacked, state, x, y)
        with self.assertRaisesRegex(ValueError, "never called"):
            lowrank.fused_value_and_grad(lambda p, b, x, y: jnp.sum(x), layers)(
                params, stacked, state, x, y
            )

    @parameterized.parameters(
        dict(accumulation_steps=0), dict(accumulation_steps=1.5), dict(accumulation_steps=True)
    )
    def test_invalid_accumulation_steps(self, accumulation_steps):
        with self.assertRaisesRegex(ValueError, "accumulation_steps"):
            lowrank.fused_layers(layer, optax.adam(LR), accumulation_steps=accumulation_steps)

    def test_mismatched_layer_axis_raises(self):
        bad = {"a": jnp.zeros((3, 2)), "b": jnp.zeros((4, 2))}
        with self.assertRaisesRegex(ValueError, "leading layer axis"):
            lowrank.fused_layers(layer, optax.adam(LR)).init(bad)

    def test_integer_leaves_round_trip_exactly(self):
        for x in [
            jnp.array([0, 1, 2**31 - 1, -5, -(2**31)], jnp.int32),
            jnp.array([0, 2**32 - 1, 12345], jnp.uint32),
            jnp.array([True, False]),
            jnp.array([-3, 7], jnp.int8),
        ]:
            y = fused_lib._decode_int(fused_lib._encode_int(x), fused_lib._IntLike.of(x))
            self.assertEqual(y.dtype, x.dtype)
            np.testing.assert_array_equal(y, x)
        for key in [jax.random.PRNGKey(3), jax.random.key(5)]:
            back = fused_lib._decode_int(fused_lib._encode_int(key), fused_lib._IntLike.of(key))
            if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
                key, back = jax.random.key_data(key), jax.random.key_data(back)
            np.testing.assert_array_equal(back, key)

    def test_randomized_projector_keys_advance_per_layer(self):
        # PRNG keys live in every layer's state slice and are split at refreshes.
        tx = lowrank.galore_adamw(LR, rank=2, update_proj_gap=2, projector="randomized")
        _, stacked = init_model()
        _, _, state = run_fused(tx, optax.adam(LR), batches(3))
        keys = [
            np.asarray(x)
            for x in jax.tree.leaves(state.layers_state.layer_state)
            if x.dtype == jnp.uint32
        ]
        self.assertNotEmpty(keys)
        init_keys = [
            np.asarray(x)
            for x in jax.tree.leaves(
                lowrank.fused_layers(layer, tx, check_leafwise=False).init(stacked)
            )
            if x.dtype == jnp.uint32
        ]
        for new, old in zip(keys, init_keys, strict=True):
            self.assertEqual(new.shape[0], L)
            self.assertTrue(np.all(new == new[:1]))  # same key in every layer
            self.assertFalse(np.array_equal(new, old))  # split at the refreshes


class LeafwiseCheckTest(parameterized.TestCase):
    @parameterized.named_parameters(
        (
            "clip_by_global_norm",
            lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(LR)),
            "depends on the gradient|discrete decision",
        ),
        (
            "global_clip_in_galore_adamw",
            lambda: lowrank.galore_adamw(LR, rank=2, global_clipnorm=1.0),
            "depends on the gradient|discrete decision",
        ),
        ("apply_if_finite", lambda: optax.apply_if_finite(optax.adam(LR), 3), "discrete decision"),
        ("lorenza", lambda: lowrank.lorenza(LR, rank=2), "extra arguments"),
    )
    def test_non_leafwise_transformations_raise(self, make, message):
        _, stacked = init_model()
        layers = lowrank.fused_layers(layer, make())
        with self.assertRaisesRegex(ValueError, message):
            layers.init(stacked)

    def test_global_trust_ratio_raises(self):
        def scale_by_global_trust_ratio():
            def update(updates, state, params):
                ratio = optax.tree.norm(params) / optax.tree.norm(updates)
                return jax.tree.map(lambda u: ratio * u, updates), state

            return optax.GradientTransformation(lambda p: optax.EmptyState(), update)

        with self.assertRaisesRegex(ValueError, "depends on the gradient"):
            lowrank.check_leafwise(
                optax.chain(optax.scale_by_adam(), scale_by_global_trust_ratio()),
                {"a": jnp.ones((3, 2)), "b": jnp.ones(2)},
            )

    @parameterized.named_parameters(
        ("adamw", lambda: optax.adamw(LR, weight_decay=0.1)),
        ("lamb_per_leaf", lambda: optax.lamb(LR)),
        ("leaf_clip", lambda: optax.chain(lowrank.clip_by_leaf_norm(1.0), optax.adam(LR))),
        ("galore_randomized", lambda: lowrank.galore_adamw(LR, rank=2, projector="randomized")),
    )
    def test_leafwise_transformations_pass(self, make):
        lowrank.check_leafwise(make(), {"a": jnp.ones((4, 3)), "b": jnp.ones(3)})

    def test_check_can_be_disabled(self):
        _, stacked = init_model()
        tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(LR))
        lowrank.fused_layers(layer, tx, check_leafwise=False).init(stacked)


class GradientBytesTest(absltest.TestCase):
    def test_one_layer_of_the_block_plus_the_rest(self):
        params, stacked = init_model()
        full = {**params, "blocks": stacked}
        expected = sum(x.nbytes for x in jax.tree.leaves(params)) + sum(
            x.nbytes // L for x in jax.tree.leaves(stacked)
        )
        self.assertEqual(lowrank.fused_gradient_bytes(full), expected)
        report = lowrank.memory_report(optax.adam(LR), full)
        self.assertEqual(lowrank.fused_gradient_bytes(report), expected)
        self.assertEqual(report["grads_bytes"] - expected, (L - 1) * expected_block_layer(stacked))


def expected_block_layer(stacked):
    return sum(x.nbytes // L for x in jax.tree.leaves(stacked))


@pytest.mark.parametrize("module", ["fused", "subspace_accumulation"])
def test_docstring_examples(module):
    import doctest
    import importlib

    mod = importlib.import_module(f"lowrank_optax._src.{module}")
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0 and result.attempted > 0


def _deep_model(num_layers, width):
    ks = jax.random.split(jax.random.PRNGKey(0), 2)
    return {
        "w1": jax.random.normal(ks[0], (num_layers, width, 2 * width)) / np.sqrt(width),
        "w2": jax.random.normal(ks[1], (num_layers, 2 * width, width)) / np.sqrt(2 * width),
        "g": jnp.ones((num_layers, width)),
    }


@pytest.mark.parametrize("name", ["adam", "galore_adamw"])
def test_compiled_temp_bytes_drop_by_half_the_block_gradient(name):
    num_layers, width = 12, 48
    stacked = _deep_model(num_layers, width)
    fused_tx, unfused_tx = OPTIMIZERS[name]
    fused_tx, unfused_tx = fused_tx(), unfused_tx()
    x = jnp.ones((B, width))

    def loss(blocks):
        return jnp.mean(blocks(x, jnp.asarray(1.0)) ** 2)

    def unfused(stacked, state):
        g = jax.grad(lambda s: loss(plain_blocks(s)))(stacked)
        u, state = unfused_tx.update(g, state, stacked)
        return optax.apply_updates(stacked, u), state

    layers = lowrank.fused_layers(layer, fused_tx, check_leafwise=False)
    vg = lowrank.fused_value_and_grad(lambda p, blocks: loss(blocks), layers)

    def fused(stacked, state):
        _, _, stacked, state = vg({}, stacked, state)
        return stacked, state

    grad_bytes = sum(a.nbytes for a in jax.tree.leaves(stacked))

    def temp(fn, state):
        compiled = jax.jit(fn, donate_argnums=(0, 1)).lower(stacked, state).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    unfused_temp = temp(unfused, unfused_tx.init(stacked))
    fused_temp = temp(fused, jax.eval_shape(layers.init, stacked))
    assert fused_temp <= unfused_temp - 0.5 * grad_bytes, (fused_temp, unfused_temp, grad_bytes)


if __name__ == "__main__":
    absltest.main()
