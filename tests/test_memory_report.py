"""``lowrank.memory_report`` equals the bytes ``tx.init`` allocates and XLA's memory analysis."""

from __future__ import annotations

import doctest
import json
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from flax import nnx

import lowrank_optax as lowrank

RNG = np.random.default_rng(0)


def _arr(*shape: int, dtype: Any = jnp.float32) -> jax.Array:
    return jnp.asarray(RNG.standard_normal(shape), dtype)


# A stacked (layer, rows, cols) kernel, a plain matrix, a 3-D attention-like kernel,
# a bias and a zero-size leaf.
PARAMS = {
    "stack": _arr(3, 12, 8),
    "w": _arr(10, 6),
    "attn": _arr(8, 2, 4),
    "b": _arr(6),
    "empty": jnp.zeros((0, 4), jnp.float32),
}
DIMS = {
    "stack": lowrank.DimensionNumbers(1, 2),
    "w": lowrank.DimensionNumbers(0, 1),
    "attn": lowrank.DimensionNumbers(0, (1, 2)),
    "b": None,
    "empty": None,
}
MASK = {"stack": True, "w": True, "attn": False, "b": False, "empty": False}


class _KeyState(NamedTuple):
    key: jax.Array
    nothing: Any
    masked: Any
    empty: jax.Array
    flag: jax.Array


def _odd_state_tx() -> optax.GradientTransformation:
    """A state holding a typed PRNG key, ``None``, a ``MaskedNode``, an empty array, a bool."""

    def init(params: Any) -> _KeyState:
        del params
        return _KeyState(
            jax.random.key(0),
            None,
            optax.MaskedNode(),
            jnp.zeros((0, 5), jnp.float32),
            jnp.zeros((2,), bool),
        )

    def update(updates: Any, state: _KeyState, params: Any = None) -> Any:
        del params
        return updates, state._replace(key=jax.random.split(state.key)[0])

    return optax.GradientTransformation(init, update)


OPTIMIZERS = {
    "adamw": lambda: optax.adamw(1e-3, weight_decay=0.1),
    "sgd_empty_state": lambda: optax.sgd(1e-2),
    "galore_svd": lambda: lowrank.galore_adamw(1e-3, rank=2, dimension_numbers=DIMS),
    "galore_randomized": lambda: lowrank.galore_adamw(
        1e-3, rank=3, projector="randomized", dimension_numbers=DIMS
    ),
    "galore_full_bf16_moments": lambda: lowrank.galore(
        optax.adam(1e-3, mu_dtype=jnp.bfloat16), rank=2, proj_type="full"
    ),
    "lorenza": lambda: lowrank.lorenza(1e-3, rank=2, dimension_numbers=DIMS),
    "optax_contrib_galore": lambda: optax.contrib.galore(1e-3, rank=2),
    "masked": lambda: optax.chain(
        optax.masked(optax.adam(1e-3), MASK), optax.masked(optax.sgd(1e-3), lambda p: MASK)
    ),
    "partition": lambda: optax.partition(
        {"a": optax.adam(1e-3), "b": optax.set_to_zero()},
        {k: "a" if v else "b" for k, v in MASK.items()},
    ),
    "multisteps": lambda: optax.MultiSteps(optax.adam(1e-3), every_k_schedule=3),
    "inject_hyperparams": lambda: optax.inject_hyperparams(optax.adam)(learning_rate=1e-3),
    "odd_leaves": _odd_state_tx,
}


def _real_bytes(tree: Any) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_state_bytes_equal_init(name: str) -> None:
    tx = OPTIMIZERS[name]()
    report = lowrank.memory_report(tx, PARAMS)
    state = tx.init(PARAMS)
    assert report["state_bytes"] == _real_bytes(state)
    assert report["params_bytes"] == _real_bytes(PARAMS) == report["grads_bytes"]
    assert report["total_bytes"] == 2 * report["params_bytes"] + report["state_bytes"]
    # Per-leaf rows: one per array of the real state, same path, shape, dtype and bytes.
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    assert len(report["leaves"]["state"]) == len(leaves)
    for row, (path, leaf) in zip(report["leaves"]["state"], leaves, strict=True):
        assert row["path"] == jax.tree_util.keystr(path)
        assert tuple(row["shape"]) == leaf.shape
        assert row["dtype"] == str(leaf.dtype)
        assert row["bytes"] == leaf.nbytes
    assert report["per_device"] is None and report["compiled"] is None


def test_odd_leaves_are_counted_as_allocated() -> None:
    report = lowrank.memory_report(_odd_state_tx(), PARAMS)
    # threefry key data (2 x uint32) + 0-size array + 2 bools; None and MaskedNode hold nothing.
    assert report["state_bytes"] == 8 + 0 + 2
    assert [r["dtype"] for r in report["leaves"]["state"]] == ["key<fry>", "float32", "bool"]


def test_abstract_params_nothing_allocated() -> None:
    tx = OPTIMIZERS["galore_svd"]()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), PARAMS)
    assert lowrank.memory_report(tx, abstract) == lowrank.memory_report(tx, PARAMS)


def test_mixed_dtypes_and_integer_params() -> None:
    params = {
        "w": jnp.zeros((16, 8), jnp.bfloat16),
        "v": jnp.zeros((4,), jnp.float64 if jax.config.jax_enable_x64 else jnp.float32),
        "steps": jnp.zeros((3,), jnp.int32),
    }
    tx = optax.masked(optax.adam(1e-3), {"w": True, "v": True, "steps": False})
    report = lowrank.memory_report(tx, params)
    assert report["params_bytes"] == _real_bytes(params)
    # Integer parameters have no gradient.
    assert report["grads_bytes"] == params["w"].nbytes + params["v"].nbytes
    assert report["state_bytes"] == _real_bytes(tx.init(params))


def test_flax_nnx_state() -> None:
    model = nnx.Linear(12, 5, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    tx = lowrank.galore_adamw(1e-3, rank=2)
    report = lowrank.memory_report(tx, state)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    assert report["state_bytes"] == _real_bytes(optimizer.opt_state)
    plain = lowrank.memory_report(tx, nnx.to_pure_dict(state))
    for key in ("params_bytes", "grads_bytes", "state_bytes"):
        assert report[key] == plain[key]


def _train_step(tx: optax.GradientTransformation) -> Any:
    def step(params: Any, state: Any, batch: jax.Array) -> Any:
        def loss(p: Any) -> jax.Array:
            h = jnp.tanh(batch @ p["w"]) @ p["v"]
            return jnp.mean(h**2) + sum(jnp.sum(x**2) for x in jax.tree.leaves(p))

        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


@pytest.mark.parametrize("name", ["adamw", "galore_svd"])
def test_compiled_equals_memory_analysis(name: str) -> None:
    tx = OPTIMIZERS[name]() if name != "galore_svd" else lowrank.galore_adamw(1e-3, rank=2)
    params = {"w": _arr(10, 6), "v": _arr(6, 3), "b": _arr(3)}
    batch = _arr(4, 10)
    step = _train_step(tx)
    state = jax.eval_shape(tx.init, params)
    report = lowrank.memory_report(tx, params, step_fn=step, step_args=(params, state, batch))
    stats = step.lower(params, state, batch).compile().memory_analysis()
    compiled = report["compiled"]
    assert compiled["argument_bytes"] == stats.argument_size_in_bytes
    assert compiled["output_bytes"] == stats.output_size_in_bytes
    assert compiled["alias_bytes"] == stats.alias_size_in_bytes
    assert compiled["temp_bytes"] == stats.temp_size_in_bytes
    assert compiled["generated_code_bytes"] == stats.generated_code_size_in_bytes
    assert compiled["peak_bytes"] == stats.peak_memory_in_bytes
    assert all(isinstance(v, int) for v in compiled.values())
    if name == "adamw":
        # Every argument is read, and every output reuses a donated input: XLA's
        # own totals equal the report's byte counts.
        assert compiled["argument_bytes"] == (
            report["params_bytes"] + report["state_bytes"] + batch.nbytes
        )
        assert compiled["alias_bytes"] == report["params_bytes"] + report["state_bytes"]
    # A plain (not yet jitted) function is jitted for the analysis.
    plain = lowrank.memory_report(
        tx, params, step_fn=step.__wrapped__, step_args=(params, state, batch)
    )
    undonated = jax.jit(step.__wrapped__).lower(params, state, batch).compile().memory_analysis()
    assert plain["compiled"]["alias_bytes"] == undonated.alias_size_in_bytes


def test_report_is_json_and_prints_a_table() -> None:
    tx = lowrank.galore_adamw(1e-3, rank=2, dimension_numbers=DIMS)
    report = lowrank.memory_report(tx, PARAMS)
    assert json.loads(json.dumps(report)) == report
    text = str(report)
    assert f"{report['state_bytes']:,}" in text and "optimizer state" in text
    detailed = report.table(leaves=True)
    assert "inner_state.mu['stack']" in detailed and "3x12x2" in detailed


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="`tx`"):
        lowrank.memory_report(object(), PARAMS)
    with pytest.raises(ValueError, match="`step_args`"):
        lowrank.memory_report(optax.adam(1e-3), PARAMS, step_args=(1,))
    with pytest.raises(ValueError, match="`param_specs` needs `mesh`"):
        lowrank.memory_report(
            optax.adam(1e-3), PARAMS, param_specs=jax.tree.map(lambda _: None, PARAMS)
        )


def test_docstring_example() -> None:
    from lowrank_optax._src import memory

    result = doctest.testmod(memory, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# -- the fused variant: one layer's block gradient at a time ---------------------

L, D = 8, 32
_FUSED_RNG = np.random.default_rng(1)
STACKED = {
    "w1": jnp.asarray(_FUSED_RNG.standard_normal((L, D, 2 * D)) / D, jnp.float32),
    "w2": jnp.asarray(_FUSED_RNG.standard_normal((L, 2 * D, D)) / D, jnp.float32),
    "norm": jnp.ones((L, D), jnp.float32),
}
REST = {"embed": jnp.ones((16, D)) / 4, "head": jnp.ones((D, 1)) / 8}
FUSED_PARAMS = {**REST, "blocks": STACKED}


def _layer(p: Any, x: jax.Array) -> jax.Array:
    return x + jnp.tanh((x * p["norm"]) @ p["w1"]) @ p["w2"]


def _fused_loss(params: Any, blocks: Any, x: jax.Array) -> jax.Array:
    return jnp.mean((blocks(x @ params["embed"]) @ params["head"]) ** 2)


def test_fused_blocks_count_one_layer_of_gradient() -> None:
    tx = optax.adam(1e-3)
    plain = lowrank.memory_report(tx, FUSED_PARAMS)
    report = lowrank.memory_report(tx, FUSED_PARAMS, fused_blocks="blocks")
    block = sum(x.nbytes for x in jax.tree.leaves(STACKED))
    assert report["grads_bytes"] == plain["grads_bytes"] - block + block // L
    assert report["grads_bytes"] == lowrank.fused_gradient_bytes(FUSED_PARAMS)
    assert report["grads_bytes"] == lowrank.fused_gradient_bytes(report)
    assert report["total_bytes"] == (
        report["params_bytes"] + report["grads_bytes"] + report["state_bytes"]
    )
    # The state of the unfused transformation, unchanged.
    assert report["state_bytes"] == plain["state_bytes"]
    rows = {r["path"]: r for r in report["leaves"]["grads"]}
    assert rows["['blocks']['w1']"]["shape"] == [D, 2 * D] and rows["['blocks']['w1']"]["fused"]
    assert rows["['embed']"]["shape"] == [16, D] and not rows["['embed']"]["fused"]
    assert sum(r["bytes"] for r in rows.values()) == report["grads_bytes"]
    assert plain["leaves"]["grads"] == [
        {**r, "shape": list(x.shape), "bytes": x.nbytes, "fused": False}
        for r, x in zip(report["leaves"]["grads"], jax.tree.leaves(FUSED_PARAMS), strict=True)
    ]
    assert "one layer at once" in str(report) and report["fused_blocks"] == "blocks"
    assert json.loads(json.dumps(report)) == report


def test_fused_train_step_state_is_exact() -> None:
    layers = lowrank.fused_layers(_layer, lowrank.galore_adamw(1e-3, rank=4))
    train = lowrank.fused_train_step(_fused_loss, layers, optax.adamw(1e-3))
    report = lowrank.memory_report(train, FUSED_PARAMS, fused_blocks="blocks")
    assert report["state_bytes"] == _real_bytes(train.init(REST, STACKED))
    # Per-layer states: a vector of L step counters where the unfused state has one.
    assert any(r["shape"] == [L] for r in report["leaves"]["state"] if "count" in r["path"])


def test_fused_step_saving_matches_xla() -> None:
    """XLA's fused step holds the reported gradient saving, within two layers' gradient."""
    x = jnp.ones((4, 16))
    tx = optax.adam(1e-3)
    layers = lowrank.fused_layers(_layer, tx)
    train = lowrank.fused_train_step(_fused_loss, layers, tx)
    fused_step = jax.jit(train.step, donate_argnums=(0, 1, 2))
    fused_state = jax.eval_shape(train.init, REST, STACKED)
    fused = lowrank.memory_report(
        train,
        FUSED_PARAMS,
        fused_blocks="blocks",
        step_fn=fused_step,
        step_args=(REST, STACKED, fused_state, x),
    )

    def unfused_step(p: Any, s: Any, x: jax.Array) -> Any:
        def loss(p: Any) -> jax.Array:
            # Each layer rematerialised, as in the fused block: the same activations.
            body = lambda h, lp: (jax.checkpoint(_layer)(lp, h), None)  # noqa: E731
            return _fused_loss(p, lambda h: jax.lax.scan(body, h, p["blocks"])[0], x)

        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    unfused_step = jax.jit(unfused_step, donate_argnums=(0, 1))
    unfused = lowrank.memory_report(
        tx,
        FUSED_PARAMS,
        step_fn=unfused_step,
        step_args=(FUSED_PARAMS, jax.eval_shape(tx.init, FUSED_PARAMS), x),
    )
    peak = lambda r: r["compiled"]["temp_bytes"] + r["compiled"]["output_bytes"]  # noqa: E731
    saved = peak(unfused) - peak(fused)
    reported = unfused["grads_bytes"] - fused["grads_bytes"]  # (L - 1) layers of gradient
    one_layer = sum(r["bytes"] for r in fused["leaves"]["grads"] if r["fused"])
    assert reported == (L - 1) * one_layer
    # What the fused step holds instead: one layer's gradient and new param/state slices.
    assert reported - 2 * one_layer <= saved <= reported + one_layer
    # The compiled part is XLA's own analysis, unchanged.
    stats = fused_step.lower(REST, STACKED, fused_state, x).compile().memory_analysis()
    assert fused["compiled"]["temp_bytes"] == stats.temp_size_in_bytes


def test_fused_blocks_bad_arguments() -> None:
    with pytest.raises(ValueError, match="`fused_blocks`"):
        lowrank.memory_report(optax.adam(1e-3), FUSED_PARAMS, fused_blocks="layers")
    with pytest.raises(ValueError, match="leading layer axis"):
        lowrank.memory_report(
            optax.adam(1e-3),
            {"blocks": {"a": jnp.zeros((2, 3)), "b": jnp.zeros((3, 3))}},
            fused_blocks="blocks",
        )
    train = lowrank.fused_train_step(
        _fused_loss, lowrank.fused_layers(_layer, optax.adam(1e-3)), optax.adam(1e-3)
    )
    with pytest.raises(ValueError, match="`fused_blocks`"):
        lowrank.memory_report(train, FUSED_PARAMS)
