"""Orbax round trip of a sharded subspace state, restored with lowrank.state_sharding.

Run through ``tests/test_mesh.py`` (which sets 8 simulated devices).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import lowrank_optax as lowrank

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from orbax_roundtrip import assert_roundtrip_bit_identical  # noqa: E402

if jax.device_count() != 8:  # pragma: no cover - guarded by test_mesh.py
    pytest.skip("needs 8 simulated devices", allow_module_level=True)

RNG = np.random.default_rng(0)
PARAMS = {
    "w": jnp.asarray(RNG.standard_normal((32, 16)), jnp.float32),
    "v": jnp.asarray(RNG.standard_normal((16, 24)), jnp.float32),
}
GRADS = [
    jax.tree.map(lambda x: jnp.asarray(RNG.standard_normal(x.shape), x.dtype), PARAMS)
    for _ in range(6)
]


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])
def test_sharded_roundtrip_restored_with_helper_shardings(axis_type, tmp_path):
    tx = lowrank.galore_adamw(
        1e-2, weight_decay=0.1, rank=3, update_proj_gap=2, projector="randomized"
    )
    mesh = jax.make_mesh((8,), ("x",), axis_types=(axis_type,))
    param_sharding = {
        "w": NamedSharding(mesh, P("x", None)),
        "v": NamedSharding(mesh, P(None, "x")),
    }
    with jax.set_mesh(mesh):
        state_sharding = lowrank.state_sharding(tx, PARAMS, param_sharding)
        params = jax.device_put(PARAMS, param_sharding)
        grads = [jax.device_put(g, param_sharding) for g in GRADS]
        assert_roundtrip_bit_identical(
            tx,
            params,
            grads,
            tmp_path,
            init=jax.jit(tx.init, out_shardings=state_sharding),
            restore_sharding=state_sharding,
            param_sharding=param_sharding,
        )
