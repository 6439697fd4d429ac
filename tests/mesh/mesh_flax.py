"""Flax NNX and Linen on an 8-device CPU mesh with the subspace core.

Run through ``tests/test_mesh.py`` (which sets 8 simulated devices).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx
from flax.training import train_state
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import lowrank_optax as lowrank

if jax.device_count() != 8:  # pragma: no cover - guarded by test_mesh.py
    pytest.skip("needs 8 simulated devices", allow_module_level=True)

X = jnp.asarray(np.random.default_rng(0).standard_normal((16, 12)), jnp.float32)
Y = jnp.asarray(np.random.default_rng(1).standard_normal((16, 6)), jnp.float32)


def _norm(spec: P) -> tuple:
    entries = tuple(spec)
    while entries and entries[-1] is None:
        entries = entries[:-1]
    return entries


class NnxMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        self.l1 = nnx.Linear(
            12, 32, rngs=rngs, kernel_init=nnx.with_partitioning(init, (None, "model"))
        )
        self.l2 = nnx.Linear(
            32, 6, rngs=rngs, kernel_init=nnx.with_partitioning(init, ("model", None))
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.l1(x))
        return self.l2(h, out_sharding=P("data", None))


@pytest.mark.parametrize("tx_name", ["galore_adam", "galore_adamw"])
def test_nnx_optimizer_on_explicit_mesh(tx_name):
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    with jax.set_mesh(mesh):
        model = NnxMLP(nnx.Rngs(0))
        tx = (
            lowrank.galore(optax.adam(1e-2), rank=4, update_proj_gap=3)
            if tx_name == "galore_adam"
            else lowrank.galore_adamw(1e-2, weight_decay=0.01, rank=4, update_proj_gap=3)
        )
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        params = nnx.state(model, nnx.Param)
        param_sharding = jax.tree.map(lambda x: x.sharding, params)
        want = lowrank.state_sharding(tx, params, param_sharding)
        x = jax.device_put(X, P("data", None))
        y = jax.device_put(Y, P("data", None))

        @nnx.jit
        def step(model, optimizer, x, y):
            loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
            optimizer.update(model, grads)
            return loss

        losses = [float(step(model, optimizer, x, y)) for _ in range(8)]
        assert losses[-1] < losses[0]
        got = jax.tree.map(lambda a: _norm(a.sharding.spec), optimizer.opt_state)
        expected = jax.tree.map(lambda s: _norm(s.spec), want)
        assert jax.tree.leaves(got) == jax.tree.leaves(expected)
        proj = optimizer.opt_state[0] if tx_name == "galore_adamw" else optimizer.opt_state
        # l1 kernel (12x32, spec (None, model)): m < n -> left basis, coords (r, 32@model).
        mu = jax.tree.leaves(proj.inner_state)
        shapes = {tuple(a.shape): _norm(a.sharding.spec) for a in mu if a.ndim == 2}
        assert shapes[(4, 32)] == (None, "model")
        assert shapes[(32, 4)] == ("model",)


def test_linen_train_state_with_partitioning_on_auto_mesh():
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)

    class LinenMLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            init = nn.initializers.lecun_normal()
            x = nn.Dense(32, kernel_init=nn.with_partitioning(init, (None, "model")))(x)
            x = nn.relu(x)
            return nn.Dense(6, kernel_init=nn.with_partitioning(init, ("model", None)))(x)

    model = LinenMLP()
    tx = lowrank.galore_adamw(1e-2, rank=4, update_proj_gap=3)
    abstract = jax.eval_shape(model.init, jax.random.key(0), X)
    param_specs = nn.get_partition_spec(abstract)["params"]
    param_sharding = jax.tree.map(
        lambda s: NamedSharding(mesh, s), param_specs, is_leaf=lambda s: isinstance(s, P)
    )
    opt_sharding = lowrank.state_sharding(tx, abstract["params"], param_sharding)
    state_sharding = train_state.TrainState(
        step=NamedSharding(mesh, P()),
        apply_fn=model.apply,
        params=param_sharding,
        tx=tx,
        opt_state=opt_sharding,
    )

    def create(key):
        params = nn.unbox(model.init(key, X))["params"]
        return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    with jax.set_mesh(mesh):
        state = jax.jit(create, out_shardings=state_sharding)(jax.random.key(0))

        # Auto axes: GSPMD may pick other layouts for outputs unless told, so the
        # step is jitted with the helper's shardings (the documented Auto pattern).
        @jax.jit(out_shardings=(state_sharding, NamedSharding(mesh, P())))
        def step(state, x, y):
            def loss_fn(p):
                return jnp.mean((state.apply_fn({"params": p}, x) - y) ** 2)

            loss, grads = jax.value_and_grad(loss_fn)(state.params)
            return state.apply_gradients(grads=grads), loss

        losses = []
        for _ in range(8):
            state, loss = step(state, X, Y)
            losses.append(float(loss))
    assert losses[-1] < losses[0]
    got = jax.tree.map(lambda a: a.sharding, state.opt_state)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(opt_sharding), strict=True):
        assert a.is_equivalent_to(b, 2), (a, b)
    # The low-rank moments of the (32, 6) kernel are (32, r) with rows on 'model',
    # never the param's spec copied onto a rank axis.
    proj = state.opt_state[0]
    mu = proj.inner_state.mu
    assert mu["Dense_1"]["kernel"].shape == (32, 4)
    assert _norm(mu["Dense_1"]["kernel"].sharding.spec) == ("model",)
    assert _norm(mu["Dense_0"]["kernel"].sharding.spec) == (None, "model")
