"""LRE on an 8-device CPU mesh: n-sharded flattened bases, state shardings, orbax.

The flattened bases (and every other array with ``n`` rows) are sharded along
``n`` over the mesh axes that shard the parameters; the ``r``-sized work is
replicated. ``lowrank.state_sharding`` gives those shardings, and sharded steps
(Auto and Explicit axes) equal single-device ones.

Run through ``tests/test_mesh.py`` (which sets 8 simulated devices).
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
TARGET = {
    "w": jnp.asarray(RNG.normal(size=(64, 8)), jnp.float32),
    "b": jnp.asarray(RNG.normal(size=16), jnp.float32),
}
SCALES = {"w": jnp.asarray(np.geomspace(1, 20, 8), jnp.float32), "b": jnp.ones(16)}
PARAMS = jax.tree.map(lambda x: jnp.full_like(x, 0.1), TARGET)
N = 64 * 8 + 16
STEPS = 4
# Explicit: a 4 x 2 mesh, w over both axes and b over 'y': the flat vector is
# sharded over ('y', 'x') (first appearance in leaf order: b, w; N = 528 is
# divisible by 8). Auto: an 8-device mesh, w's rows on 'x'.
SPECS = {
    AxisType.Explicit: ((4, 2), ("x", "y"), {"w": P("x", "y"), "b": P("y")}, ("y", "x")),
    AxisType.Auto: ((8,), ("x",), {"w": P("x", None), "b": P()}, "x"),
}


def loss(p: dict) -> jax.Array:
    return sum(jnp.sum(SCALES[k] * (p[k] - TARGET[k]) ** 2) for k in p)


def _hvp_args(p: dict) -> dict:
    return {"hvp_fn": lambda v: jax.jvp(jax.grad(loss), (p,), (v,))[1]}


CONFIGS = {
    "lre_default_ggt": (lambda: lowrank.lre(0.05, basis=lowrank.bases.ggt(6)), None),
    "eigen_full_matrix_adam": (
        lambda: lowrank.lre(
            0.05,
            basis=lowrank.bases.eigen(5),
            inner=[lowrank.scale_by_full_matrix_adam_in_basis()],
        ),
        None,
    ),
    "hutchinson_hvp_eigen": (
        lambda: lowrank.lre(
            0.05,
            curvature=lowrank.curvatures.full_hutchinson_hessian(),
            basis=lowrank.bases.eigen(4),
            update_freq=2,
        ),
        _hvp_args,
    ),
    "per_leaf_ggt": (lambda: lowrank.lre(0.05, basis=lowrank.bases.ggt(4), per_leaf=True), None),
}
CASES = [(AxisType.Explicit, name) for name in CONFIGS] + [
    (AxisType.Auto, "lre_default_ggt"),
    (AxisType.Auto, "eigen_full_matrix_adam"),
]


def _norm(spec: P) -> tuple:
    entries = tuple(spec)
    while entries and entries[-1] is None:
        entries = entries[:-1]
    return entries


def _specs(tree: object) -> object:
    """Normalised specs (trailing Nones dropped) of PartitionSpecs, shardings or arrays."""

    def one(x: object) -> tuple:
        if isinstance(x, P):
            return _norm(x)
        return _norm(getattr(x, "sharding", x).spec)

    return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, P))


def _n_row_arrays(state: lowrank.EigenbasisState, per_leaf: bool) -> list[tuple[jax.Array, int]]:
    """(array, block length) for every array with n rows in the basis and curvature state."""
    found = []
    blocks = [b.basis for b in state.blocks]
    sizes = [x.size for x in jax.tree.leaves(PARAMS)] if per_leaf else [N]
    for block, n in zip(blocks, sizes, strict=True):
        found += [(x, n) for x in jax.tree.leaves(block) if x.ndim and x.shape[0] == n]
    found += [(x, N) for x in jax.tree.leaves(state.curvature_state) if x.ndim and x.shape[0] == N]
    return found


def _single_device_run(tx: optax.GradientTransformation, extra: object) -> list:
    def step(p, s):
        u, s = tx.update(jax.grad(loss)(p), s, p, **(extra(p) if extra else {}))
        return optax.apply_updates(p, u), s

    jitted, p, s, out = jax.jit(step), PARAMS, tx.init(PARAMS), []
    for _ in range(STEPS):
        p, s = jitted(p, s)
        out.append(p)
    return out


@pytest.mark.parametrize("axis_type,name", CASES, ids=[f"{a.name.lower()}-{n}" for a, n in CASES])
def test_sharded_updates_match_single_device(axis_type, name):
    make, extra = CONFIGS[name]
    tx = make()
    reference = _single_device_run(tx, extra)
    shape, axes_names, specs, n_axes = SPECS[axis_type]
    mesh = jax.make_mesh(shape, axes_names, axis_types=(axis_type,) * len(axes_names))
    per_leaf = name.startswith("per_leaf")

    def step(p, s):
        u, s = tx.update(jax.grad(loss)(p), s, p, **(extra(p) if extra else {}))
        return optax.apply_updates(p, u), s

    with jax.set_mesh(mesh):
        param_sh = {k: NamedSharding(mesh, s) for k, s in specs.items()}
        state_sh = lowrank.state_sharding(tx, PARAMS, param_sh)
        want = _specs(state_sh)
        params = jax.device_put(PARAMS, param_sh)
        state = jax.jit(tx.init, out_shardings=state_sh)(params)
        assert _specs(state) == want
        if axis_type == AxisType.Explicit:
            # Explicit types: a plain jit keeps every state sharding by itself.
            jitted = jax.jit(step)
        else:
            jitted = jax.jit(step, out_shardings=(param_sh, state_sh))
        for ref in reference:
            params, state = jitted(params, state)
            assert _specs(state) == want
            for k in ref:
                np.testing.assert_allclose(params[k], ref[k], rtol=2e-4, atol=2e-5, err_msg=k)

    # state_partition_specs (no mesh: called outside set_mesh) agrees.
    assert _specs(lowrank.state_partition_specs(tx, PARAMS, specs)) == want
    # The rule: arrays with n rows sharded along n, everything else replicated.
    lre_state = state[0]
    big = _n_row_arrays(lre_state, per_leaf)
    assert big, name
    big_ids = {id(x) for x, _ in big}
    # Per leaf, each block follows its leaf: b (16) on 'y', w (512) on ('x', 'y').
    block_axes = {N: n_axes, 16: "y", 512: ("x", "y")} if per_leaf else {N: n_axes}
    for x, n in big:
        axes = block_axes[n]
        assert _norm(x.sharding.spec)[:1] == (axes,), (name, n, x.sharding)
        group = axes if isinstance(axes, tuple) else (axes,)
        devices = int(np.prod([mesh.shape[a] for a in group]))
        assert devices == (8 if n == N else {16: 2, 512: 8}[n])
        assert x.addressable_shards[0].data.shape[0] == n // devices, (name, n)
    for x in jax.tree.leaves(state):
        if id(x) not in big_ids:
            assert all(s is None for s in x.sharding.spec), (name, x.shape, x.sharding)
    assert float(loss(params)) < float(loss(PARAMS)), name


def test_partition_spec_rules():
    specs = {"w": P("x", None), "b": P()}
    tx = lowrank.lre(0.1, basis=lowrank.bases.ggt(4))
    got = lowrank.state_partition_specs(tx, PARAMS, specs)[0]
    (block,) = got.blocks
    assert block.basis.history == P("x", None)
    assert block.basis.evict == P("x", None)
    assert got.curvature_state.buffer is None  # update_freq=1: nothing to buffer
    for r_sized in (block.basis.gram, block.basis.w, block.eigenvalues, block.valid):
        assert all(s is None for s in r_sized), r_sized
    assert got.count == P() and got.inner_state[0].mu == P(None)

    # Compositions: inject_hyperparams around the alias (no static_args needed for
    # arguments that are not numbers), chains around the wrapper.
    injected = optax.inject_hyperparams(lowrank.lre)(
        learning_rate=0.1, basis=lowrank.bases.eigen(4)
    )
    inner = lowrank.state_partition_specs(injected, PARAMS, specs).inner_state[0]
    assert inner.blocks[0].basis.q == P("x", None) and _norm(inner.blocks[0].basis.acc) == ()
    chained = optax.chain(
        optax.clip_by_global_norm(1.0),
        lowrank.eigenbasis_update(
            None, curvature=lowrank.curvatures.bfgs(), basis=lowrank.bases.eigen(4, beta=None)
        ),
    )
    got = lowrank.state_partition_specs(chained, PARAMS, specs)[1]
    assert got.curvature_state.prev_params == P("x")
    assert got.blocks[0].basis.q == P("x", None)

    # per_leaf: each block follows its leaf.
    tx = lowrank.lre(0.1, basis=lowrank.bases.eigen(3), per_leaf=True)
    got = lowrank.state_partition_specs(tx, PARAMS, {"w": P(None, "y"), "b": P("x")})[0]
    # Blocks in jax.tree.leaves order: b, then w.
    assert got.blocks[0].basis.q == P("x", None) and got.blocks[1].basis.q == P("y", None)


def test_divisibility_rule_drops_axes():
    """Axes are dropped from the end while n is not divisible by their sizes' product."""
    mesh = jax.make_mesh((4, 2), ("x", "y"))
    tx = lowrank.lre(0.1, basis=lowrank.bases.ggt(4))
    sharding = {"w": NamedSharding(mesh, P("x", "y")), "b": NamedSharding(mesh, P())}
    for b_size, want in [(16, ("x", "y")), (4, "x"), (3, None)]:
        params = {"w": PARAMS["w"], "b": jnp.zeros(b_size)}  # n = 512 + b_size
        history = lowrank.state_sharding(tx, params, sharding)[0].blocks[0].basis.history
        assert history.spec == P(want, None), (b_size, history.spec)
        # Without a mesh (sizes unknown), state_partition_specs assumes they divide n.
        spec = lowrank.state_partition_specs(tx, params, {"w": P("x", "y"), "b": P()})
        assert spec[0].blocks[0].basis.history == P(("x", "y"), None)


def test_sharded_orbax_roundtrip_restored_with_state_sharding(tmp_path):
    tx = lowrank.lre(0.05, basis=lowrank.bases.ggt(4))
    mesh = jax.make_mesh((8,), ("x",))
    param_sharding = {"w": NamedSharding(mesh, P("x", None)), "b": NamedSharding(mesh, P())}
    grads = [
        jax.tree.map(lambda x: jnp.asarray(RNG.standard_normal(x.shape), x.dtype), PARAMS)
        for _ in range(4)
    ]
    with jax.set_mesh(mesh):
        state_sharding = lowrank.state_sharding(tx, PARAMS, param_sharding)
        assert state_sharding[0].blocks[0].basis.history.spec == P("x", None)
        assert_roundtrip_bit_identical(
            tx,
            jax.device_put(PARAMS, param_sharding),
            [jax.device_put(g, param_sharding) for g in grads],
            tmp_path,
            init=jax.jit(tx.init, out_shardings=state_sharding),
            restore_sharding=state_sharding,
            param_sharding=param_sharding,
        )
