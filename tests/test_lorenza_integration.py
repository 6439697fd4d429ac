"""LORENZA in training loops: jit, keys, other inners, orbax, Flax NNX and Linen.

pmap (8 devices) and sharded meshes: ``tests/mesh/mesh_lorenza.py``;
inject_hyperparams: ``test_lorenza.py::ReductionTest``.
"""

from __future__ import annotations

import functools
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized

import lowrank_optax as lowrank

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(32, 8)), jnp.float32)
Y = jnp.asarray(RNG.normal(size=(32, 6)), jnp.float32)


def loss_fn(params, x, y):
    hidden = jnp.tanh(x @ params["w1"] + params["b1"])
    return jnp.mean((hidden @ params["w2"] - y) ** 2)


def init_params():
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    return {
        "w1": 0.3 * jax.random.normal(keys[0], (8, 16)),
        "b1": jnp.zeros(16),
        "w2": 0.3 * jax.random.normal(keys[1], (16, 6)),
    }


TRACES = []  # one entry per trace of a step built by make_step
TX = lowrank.lorenza(1e-2, weight_decay=0.1, rank=2, update_proj_gap=2, num_probes=2)


@functools.cache
def make_step(tx):
    """Jitted training step (cached per transformation: one compile per tx)."""

    def step(params, state, x, y):
        TRACES.append(tx)
        fns = lowrank.make_value_and_grad_fns(loss_fn, x, y)
        grads = fns["grad_fn"](params)
        updates, state = tx.update(grads, state, params, **fns)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


def train(tx, steps, params=None):
    params = init_params() if params is None else params
    state = tx.init(params)
    step = make_step(tx)
    for i in range(steps):
        params, state = step(params, state, X[i % 2 :: 2], Y[i % 2 :: 2])
    return params, state


class LoopTest(parameterized.TestCase):
    def test_jit_traces_once_keys_advance_and_trains(self):
        params = init_params()
        base = float(loss_fn(params, X, Y))
        state = TX.init(params)
        step = make_step(TX)
        probe_keys, projector_keys = [], []
        for i in range(40):
            probe_keys.append(np.asarray(state[0].pre_state.key))
            projector_keys.append(np.asarray(state[0].key))
            params, state = step(params, state, X[i % 2 :: 2], Y[i % 2 :: 2])
        self.assertEqual(TRACES.count(TX), 1)  # new minibatches, no retrace
        # Probe key: split every step. Projector key: split at refreshes (steps 0, 2, 4).
        self.assertLen({k.tobytes() for k in probe_keys[:5]}, 5)
        changed = [
            not np.array_equal(a, b)
            for a, b in zip(projector_keys[:4], projector_keys[1:5], strict=True)
        ]
        self.assertEqual(changed, [True, False, True, False])
        self.assertFalse(np.array_equal(state[0].pre_state.key, state[0].key))
        self.assertLess(float(loss_fn(params, X, Y)), 0.7 * base)

    def test_around_another_inner(self):
        # LORENZA's subspace and perturbation around Lion (state in the subspace).
        lion = optax.chain(
            lowrank.project_lowrank(
                optax.scale_by_lion(),
                rank=2,
                update_proj_gap=10,
                projector=lowrank.randomized_projector(0, 0),
                pre_projection=lowrank.zo_sam_perturb(rho=0.05),
            ),
            optax.scale_by_learning_rate(3e-3),
        )
        params, state = train(lion, 30)
        self.assertEqual(state[0].inner_state.mu["w1"].shape, (2, 16))  # std, m < n: (r, n)
        self.assertEqual(state[0].inner_state.mu["w2"].shape, (16, 2))  # std, m >= n: (m, r)
        self.assertLess(float(loss_fn(params, X, Y)), float(loss_fn(init_params(), X, Y)))

    def test_orbax_round_trip(self):
        import orbax.checkpoint as ocp

        tx = TX
        params, state = train(tx, 3)
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        path = tmp.name + "/ckpt"
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(path, {"params": params, "state": state})
            ckpt.wait_until_finished()
            abstract = jax.tree.map(
                ocp.utils.to_shape_dtype_struct, {"params": params, "state": state}
            )
            restored = ckpt.restore(path, abstract)
        self.assertEqual(jax.tree.structure(restored["state"]), jax.tree.structure(state))
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves((params, state)), strict=True):
            np.testing.assert_array_equal(a, b)
        # Both PRNG keys survive, so the continued runs agree exactly.
        step = make_step(tx)
        p1, s1 = step(params, state, X[::2], Y[::2])
        p2, s2 = step(restored["params"], restored["state"], X[::2], Y[::2])
        for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2)), strict=True):
            np.testing.assert_array_equal(a, b)


class FlaxTest(parameterized.TestCase):
    def test_nnx_optimizer(self):
        from flax import nnx

        class MLP(nnx.Module):
            def __init__(self, rngs):
                self.l1 = nnx.Linear(8, 16, rngs=rngs)
                self.bn = nnx.BatchNorm(16, rngs=rngs)
                self.l2 = nnx.Linear(16, 6, rngs=rngs)

            def __call__(self, x):
                return self.l2(jnp.tanh(self.bn(self.l1(x))))

        def nnx_loss(model, x, y):
            return jnp.mean((model(x) - y) ** 2)

        model = MLP(nnx.Rngs(0))
        optimizer = nnx.Optimizer(model, lowrank.lorenza(3e-2, rank=4), wrt=nnx.Param)
        calls = {"value": 0}

        @nnx.jit
        def step(model, optimizer, x, y):
            fns = lowrank.make_nnx_value_and_grad_fns(nnx_loss, model, x, y)
            value_fn = fns["value_fn"]

            def counted(state):
                jax.debug.callback(lambda: calls.__setitem__("value", calls["value"] + 1))
                return value_fn(state)

            grads = nnx.grad(nnx_loss)(model, x, y)
            optimizer.update(model, grads, value_fn=counted, grad_fn=fns["grad_fn"])

        base = float(nnx_loss(model, X, Y))
        for _ in range(20):
            step(model, optimizer, X, Y)
        jax.effects_barrier()
        self.assertEqual(calls["value"], 40)
        self.assertLess(float(nnx_loss(model, X, Y)), 0.8 * base)
        opt_state = nnx.as_pure(optimizer.opt_state)
        self.assertEqual(opt_state[0].inner_state.mu["l1"]["kernel"].shape, (4, 16))

    def test_linen_manual_update(self):
        from flax import linen as nn
        from flax.training import train_state

        class MLP(nn.Module):
            @nn.compact
            def __call__(self, x):
                return nn.Dense(6)(jnp.tanh(nn.Dense(16)(x)))

        model = MLP()
        params = model.init(jax.random.PRNGKey(0), X)["params"]
        state = train_state.TrainState.create(
            apply_fn=model.apply, params=params, tx=lowrank.lorenza(3e-2, rank=4)
        )

        def linen_loss(params, x, y):
            pred = state.apply_fn({"params": params}, x)
            return jnp.mean((pred - y) ** 2), pred  # (loss, aux)

        @jax.jit
        def step(state, x, y):
            fns = lowrank.make_value_and_grad_fns(linen_loss, x, y, has_aux=True)
            grads = fns["grad_fn"](state.params)
            # TrainState.apply_gradients forwards no extra args: call tx.update directly.
            updates, opt_state = state.tx.update(grads, state.opt_state, state.params, **fns)
            params = optax.apply_updates(state.params, updates)
            return state.replace(step=state.step + 1, params=params, opt_state=opt_state)

        base = float(linen_loss(state.params, X, Y)[0])
        for _ in range(20):
            state = step(state, X, Y)
        self.assertLess(float(linen_loss(state.params, X, Y)[0]), 0.8 * base)


if __name__ == "__main__":
    absltest.main()
