"""Quantized optimizer state on an 8-device CPU mesh: layouts, state_sharding, orbax.

Run through ``tests/test_mesh.py`` (which sets 8 simulated devices). The layout rule
under test: codes take the moment's sharding; the scales' block axis takes the
spec of the row group's major axis when every shard holds whole blocks, and is
replicated otherwise (the rows are then gathered to be cut into blocks).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import lowrank_optax as lowrank

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from orbax_roundtrip import assert_roundtrip_bit_identical  # noqa: E402

if jax.device_count() != 8:  # pragma: no cover - guarded by test_mesh.py
    pytest.skip("needs 8 simulated devices", allow_module_level=True)

RNG = np.random.default_rng(0)


def _arr(*shape: int) -> jax.Array:
    return jnp.asarray(RNG.standard_normal(shape), jnp.float32)


BLOCK = 32
PARAMS = {
    "rows": _arr(16, 64),  # rows sharded: blocks inside rows, scales (16@x, 2)
    "cols": _arr(8, 512),  # 64 columns a shard, 2 blocks each: scales (8, 16@x)
    "cols_cross": _arr(8, 200),  # 25 columns a shard: blocks cross shards
    "merged": _arr(64, 4),  # rows of 4 < 32: merged, 1 block a shard: scales (8@x,)
    "bias": _arr(16),  # below min_size
}
SPECS = {
    "rows": P("x", None),
    "cols": P(None, "x"),
    "cols_cross": P(None, "x"),
    "merged": P("x", None),
    "bias": P(),
}
EXPECTED_SCALES = {
    "rows": ((16, 2), P("x", None)),
    "cols": ((8, 16), P(None, "x")),
    "cols_cross": ((8, 7), P(None, None)),
    "merged": ((8,), P("x")),
}
GRADS = [jax.tree.map(lambda x: _arr(*x.shape), PARAMS) for _ in range(4)]


def _adam() -> optax.GradientTransformation:
    return lowrank.quantize_state(optax.adam(1e-2), block_size=BLOCK, min_size=64)


def _galore() -> optax.GradientTransformation:
    # on_refresh='reproject': the quantized moments are rotated at the refresh of step 3,
    # whose rotation P_new^T P_old contracts the sharded basis rows.
    inner = lowrank.quantize_state(lowrank.scale_by_adam_in_basis(), block_size=8, min_size=16)
    return optax.chain(
        lowrank.project_lowrank(inner, rank=4, update_proj_gap=2, on_refresh="reproject"),
        optax.scale(-1e-2),
    )


def _mesh(axis_type: AxisType) -> jax.sharding.Mesh:
    return jax.make_mesh((8,), ("x",), axis_types=(axis_type,))


def _param_sharding(mesh: jax.sharding.Mesh) -> dict[str, NamedSharding]:
    return {k: NamedSharding(mesh, s) for k, s in SPECS.items()}


def _step(tx: optax.GradientTransformation):
    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    return step


def _single_device(tx: optax.GradientTransformation):
    p, s = PARAMS, tx.init(PARAMS)
    step = _step(tx)
    for g in GRADS:
        p, s = step(p, s, g)
    return p, s


def _assert_close(tree_a, tree_b):
    for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype.kind in "iu":  # a code may flip at a rounding tie
            assert np.mean(a != b) < 1e-2
        else:
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_explicit_layout_state_sharding_and_updates():
    tx = _adam()
    mesh = _mesh(AxisType.Explicit)
    with jax.set_mesh(mesh):
        params = jax.device_put(PARAMS, _param_sharding(mesh))
        state = jax.jit(tx.init)(params)
        for name, (shape, spec) in EXPECTED_SCALES.items():
            for moment in (state[0].mu[name], state[0].nu[name]):
                assert moment.codes.sharding.spec == SPECS[name]
                assert moment.scales.shape == shape
                expected = NamedSharding(mesh, spec)
                assert moment.scales.sharding.is_equivalent_to(expected, moment.scales.ndim)
        assert not isinstance(state[0].mu["bias"], lowrank.QuantizedArray)
        helper = lowrank.state_sharding(tx, PARAMS, _param_sharding(mesh))
        for a, sh in zip(jax.tree.leaves(state), jax.tree.leaves(helper), strict=True):
            assert a.sharding.is_equivalent_to(sh, a.ndim)
        step = _step(tx)
        p, s = params, state
        for g in GRADS:
            p, s = step(p, s, jax.device_put(g, _param_sharding(mesh)))
        for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(state), strict=True):
            assert a.sharding.is_equivalent_to(b.sharding, a.ndim)
    _assert_close((p, s), _single_device(tx))


def test_auto_mesh_with_helper_out_shardings():
    tx = _adam()
    mesh = _mesh(AxisType.Auto)
    param_sharding = _param_sharding(mesh)
    with jax.set_mesh(mesh):
        helper = lowrank.state_sharding(tx, PARAMS, param_sharding)
        params = jax.device_put(PARAMS, param_sharding)
        state = jax.jit(tx.init, out_shardings=helper)(params)
        assert state[0].mu["cols"].scales.sharding.spec == P(None, "x")
        step = _step(tx)
        p, s = params, state
        for g in GRADS:
            p, s = step(p, s, jax.device_put(g, param_sharding))
    _assert_close((p, s), _single_device(tx))


def test_quantized_galore_inner_on_the_mesh():
    tx = _galore()
    mesh = _mesh(AxisType.Explicit)
    with jax.set_mesh(mesh):
        params = jax.device_put(PARAMS, _param_sharding(mesh))
        state = jax.jit(tx.init)(params)
        inner = state[0].inner_state
        assert isinstance(inner, lowrank.ScaleByAdamInBasisState)
        # std projection of (8, 512): left basis, moments (4, 512) keep the column spec.
        assert inner.mu["cols"].codes.shape == (4, 512)
        assert inner.mu["cols"].codes.sharding.spec == P(None, "x")
        assert inner.mu["cols"].scales.sharding.spec == P(None, "x")
        helper = lowrank.state_sharding(tx, PARAMS, _param_sharding(mesh))
        for a, sh in zip(jax.tree.leaves(state), jax.tree.leaves(helper), strict=True):
            assert a.sharding.is_equivalent_to(sh, a.ndim)
        step = _step(tx)
        p, s = params, state
        for g in GRADS:
            p, s = step(p, s, jax.device_put(g, _param_sharding(mesh)))
    _assert_close(p, _single_device(tx)[0])


@pytest.mark.parametrize(
    ("axis_type", "make"),
    [(AxisType.Explicit, _adam), (AxisType.Auto, _galore)],
    ids=["explicit-adam", "auto-galore"],
)
def test_sharded_orbax_roundtrip(axis_type, make, tmp_path):
    tx = make()
    mesh = _mesh(axis_type)
    param_sharding = _param_sharding(mesh)
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
