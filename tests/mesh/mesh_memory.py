"""``lowrank.memory_report`` per device on an 8-device CPU mesh.

Run through ``tests/test_mesh.py`` (which sets 8 simulated devices). The report's
per-device bytes must equal the shards ``tx.init`` really places on each device,
and its compiled figures XLA's analysis of the sharded step.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import jax
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import lowrank_optax as lowrank

if jax.device_count() != 8:  # pragma: no cover - guarded by test_mesh.py
    pytest.skip("needs 8 simulated devices", allow_module_level=True)

RNG = np.random.default_rng(0)
PARAMS = {
    "w": RNG.standard_normal((16, 24)).astype(np.float32),
    "stack": RNG.standard_normal((4, 16, 8)).astype(np.float32),
    "b": RNG.standard_normal((24,)).astype(np.float32),
    "r": RNG.standard_normal((6, 5)).astype(np.float32),
}
SPECS = {"w": P("x", "y"), "stack": P(None, "y", None), "b": P("y"), "r": P()}
DIMS = {
    "w": lowrank.DimensionNumbers(0, 1),
    "stack": lowrank.DimensionNumbers(1, 2),
    "b": None,
    "r": None,
}
OPTIMIZERS = {
    "adamw": lambda: optax.adamw(1e-3),
    "galore": lambda: lowrank.galore_adamw(1e-3, rank=3, dimension_numbers=DIMS),
    "galore_randomized": lambda: lowrank.galore_adamw(
        1e-3, rank=3, projector="randomized", dimension_numbers=DIMS
    ),
}


def _shard_bytes(tree: Any) -> dict[int, int]:
    out: dict[int, int] = defaultdict(int)
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            out[shard.device.id] += shard.data.nbytes
    return dict(out)


def _per_device(report: dict, key: str) -> dict[int, int]:
    return {row["device"]: row[key] for row in report["per_device"]}


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_per_device_bytes_equal_real_shards(axis_type: AxisType, name: str) -> None:
    tx = OPTIMIZERS[name]()
    mesh = jax.make_mesh((2, 4), ("x", "y"), axis_types=(axis_type,) * 2)
    shardings = {k: NamedSharding(mesh, s) for k, s in SPECS.items()}
    with jax.set_mesh(mesh):
        params = jax.device_put(PARAMS, shardings)
        if axis_type == AxisType.Explicit:
            state = jax.jit(tx.init)(params)  # sharding types carry the rules
        else:
            out = lowrank.state_sharding(tx, params, shardings)
            state = jax.jit(tx.init, out_shardings=out)(params)
        report = lowrank.memory_report(tx, params)
    assert _per_device(report, "state_bytes") == _shard_bytes(state)
    assert _per_device(report, "params_bytes") == _shard_bytes(params)
    assert _per_device(report, "grads_bytes") == _shard_bytes(params)
    assert report["state_bytes"] == sum(x.nbytes for x in jax.tree.leaves(state))
    # 'w' is split 8 ways, 'r' replicated: per-leaf largest shard.
    rows = {r["path"]: r for r in report["leaves"]["params"]}
    assert rows["['w']"]["max_device_bytes"] == 16 * 24 * 4 // 8
    assert rows["['r']"]["max_device_bytes"] == 6 * 5 * 4
    # The same report from abstract parameters with a mesh and specs (nothing allocated).
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), PARAMS)
    again = lowrank.memory_report(tx, abstract, mesh=mesh, param_specs=SPECS)
    assert again["per_device"] == report["per_device"]
    assert again["leaves"] == report["leaves"]


def test_replicated_on_a_mesh_and_compiled_sharded_step() -> None:
    tx = OPTIMIZERS["galore"]()
    mesh = jax.make_mesh((2, 4), ("x", "y"), axis_types=(AxisType.Explicit,) * 2)
    replicated = lowrank.memory_report(tx, PARAMS, mesh=mesh)
    assert len(replicated["per_device"]) == 8
    for row in replicated["per_device"]:
        assert row["state_bytes"] == replicated["state_bytes"]
        assert row["params_bytes"] == replicated["params_bytes"]

    shardings = {k: NamedSharding(mesh, s) for k, s in SPECS.items()}

    def step(params: Any, state: Any, grads: Any) -> Any:
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    with jax.set_mesh(mesh):
        params = jax.device_put(PARAMS, shardings)
        grads = jax.device_put(jax.tree.map(lambda x: 0.1 * x, PARAMS), shardings)
        state = jax.jit(tx.init)(params)
        jitted = jax.jit(step, donate_argnums=(0, 1))
        report = lowrank.memory_report(tx, params, step_fn=jitted, step_args=(params, state, grads))
        stats = jitted.lower(params, state, grads).compile().memory_analysis()
    compiled = report["compiled"]
    assert compiled["argument_bytes"] == stats.argument_size_in_bytes
    assert compiled["temp_bytes"] == stats.temp_size_in_bytes
    assert compiled["output_bytes"] == stats.output_size_in_bytes
    assert compiled["alias_bytes"] == stats.alias_size_in_bytes
    # XLA analyses the per-device SPMD program: its arguments are exactly one
    # device's shards of the params, gradients and state the report counts.
    device0 = report["per_device"][0]
    assert compiled["argument_bytes"] == (
        device0["params_bytes"] + device0["grads_bytes"] + device0["state_bytes"]
    )


def test_fused_blocks_per_device_one_layer_shards() -> None:
    """With ``fused_blocks`` a device holds its shard of one layer's block gradient."""
    mesh = jax.make_mesh((2, 4), ("x", "y"), axis_types=(AxisType.Explicit,) * 2)
    params = {"blocks": {"stack": PARAMS["stack"]}, "w": PARAMS["w"]}
    specs = {"blocks": {"stack": SPECS["stack"]}, "w": SPECS["w"]}
    report = lowrank.memory_report(
        optax.adam(1e-3), params, mesh=mesh, param_specs=specs, fused_blocks="blocks"
    )
    # The gradients that exist at once: 'w' in full, layer 0 of the stack laid out
    # like the stack without its layer axis.
    with jax.set_mesh(mesh):
        live = {
            "layer": jax.device_put(PARAMS["stack"][0], NamedSharding(mesh, P("y", None))),
            "w": jax.device_put(PARAMS["w"], NamedSharding(mesh, SPECS["w"])),
        }
    assert _per_device(report, "grads_bytes") == _shard_bytes(live)
    assert report["grads_bytes"] == lowrank.fused_gradient_bytes(params)
