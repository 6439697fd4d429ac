"""LORENZA on an 8-device CPU mesh: sharded steps and 8-way pmap match one device.

Run through ``tests/test_mesh.py`` (which sets 8 simulated devices). The PRNG keys
are replicated state, so every device draws the same probes and range-finder
sketches; the loss is elementwise so that it needs no sharding annotations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import lowrank_optax as lowrank

if jax.device_count() != 8:  # pragma: no cover - guarded by test_mesh.py
    pytest.skip("needs 8 simulated devices", allow_module_level=True)

RNG = np.random.default_rng(0)


def _arr(*shape: int) -> jax.Array:
    return jnp.asarray(RNG.standard_normal(shape), jnp.float32)


PARAMS = {"tall": _arr(32, 16), "wide": _arr(16, 40), "bias": _arr(16)}
BATCHES = [{k: _arr(*v.shape) for k, v in PARAMS.items()} for _ in range(3)]
# rank 3 divides no mesh axis; every 2-D leaf sharded on both axes.
SPECS = {"tall": P("x", "y"), "wide": P("y", "x"), "bias": P("y")}
TX = lowrank.lorenza(
    1e-2, weight_decay=0.1, rank=3, update_proj_gap=2, num_probes=2, perturb_unprojected=True
)


def loss(params, batch):
    return sum(jnp.sum(jnp.sin(params[k]) * batch[k] + 0.5 * params[k] ** 2) for k in params)


def step(params, state, batch):
    fns = lowrank.make_value_and_grad_fns(loss, batch)
    updates, state = TX.update(fns["grad_fn"](params), state, params, **fns)
    return optax.apply_updates(params, updates), state


def _single_device_run():
    params, state, out = PARAMS, TX.init(PARAMS), []
    jitted = jax.jit(step)
    for batch in BATCHES:
        params, state = jitted(params, state, batch)
        out.append(params)
    return out


def test_sharded_lorenza_matches_single_device():
    # Explicit axes (jax.make_mesh's default), the strict mode: every op must agree
    # on shardings. (Auto meshes are covered for the shared core by mesh_galore.py.)
    axis_type = AxisType.Explicit
    reference = _single_device_run()
    mesh = jax.make_mesh((4, 2), ("x", "y"), axis_types=(axis_type,) * 2)
    with jax.set_mesh(mesh):
        shardings = {k: NamedSharding(mesh, s) for k, s in SPECS.items()}
        state_shardings = lowrank.state_sharding(TX, PARAMS, shardings)
        key_spec = state_shardings[0].pre_state.key.spec
        assert all(axis is None for axis in key_spec)  # the probe key is replicated
        params = jax.device_put(PARAMS, shardings)
        state = jax.jit(TX.init, out_shardings=state_shardings)(params)
        jitted = jax.jit(step, out_shardings=(shardings, state_shardings))
        for batch, ref in zip(BATCHES, reference, strict=True):
            params, state = jitted(params, state, jax.device_put(batch, shardings))
            for k in ref:
                assert params[k].sharding.spec == SPECS[k]
                np.testing.assert_allclose(params[k], ref[k], atol=1e-5, err_msg=k)


def test_pmap_eight_devices_matches_global_batch():
    # Each device holds one shard of the batch; value_fn and gradients are pmean'ed.
    shards = [[{k: _arr(*v.shape) for k, v in PARAMS.items()} for _ in range(8)]]
    shards.append([{k: _arr(*v.shape) for k, v in PARAMS.items()} for _ in range(8)])

    def global_loss(params, per_device):
        return jnp.mean(jnp.stack([loss(params, b) for b in per_device]))

    def ref_step(params, state, per_device):
        fns = lowrank.make_value_and_grad_fns(global_loss, per_device)
        updates, state = TX.update(fns["grad_fn"](params), state, params, **fns)
        return optax.apply_updates(params, updates), state

    def device_step(params, state, batch):
        value_fn = lambda p: jax.lax.pmean(loss(p, batch), "d")
        grad_fn = lambda p: jax.lax.pmean(jax.grad(loss)(p, batch), "d")
        updates, state = TX.update(grad_fn(params), state, params, value_fn=value_fn,
                                   grad_fn=grad_fn)  # fmt: skip
        return optax.apply_updates(params, updates), state

    params, state = PARAMS, TX.init(PARAMS)
    rep = lambda t: jax.tree.map(lambda x: jnp.broadcast_to(x, (8,) + jnp.shape(x)), t)
    p_params, p_state = rep(params), rep(state)
    pstep = jax.pmap(device_step, axis_name="d")
    jref = jax.jit(ref_step)
    for per_device in shards:
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *per_device)
        p_params, p_state = pstep(p_params, p_state, stacked)
        params, state = jref(params, state, per_device)
    for k in params:
        for d in range(8):  # every device holds the same parameters
            np.testing.assert_allclose(p_params[k][d], params[k], atol=1e-5, err_msg=k)
