"""8-bit GaLore: ``galore_adamw(..., state_bits=8)`` and ``lorenza(..., state_bits=8)``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from orbax_roundtrip import assert_roundtrip_bit_identical

import lowrank_optax as lowrank

RNG = np.random.default_rng(0)
# A 24x16 matrix (projected; rank-4 moments of 4x24 = 96 elements), a bias.
PARAMS = {
    "w": jnp.asarray(RNG.standard_normal((24, 16)), jnp.float32),
    "b": jnp.asarray(RNG.standard_normal(16), jnp.float32),
}
# Every moment leaf of at least 16 elements quantized, blocks of 8 (several per row).
SMALL = dict(state_min_size=16, state_block_size=8)
F32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731
# The LLaMA-block matrices of benchmarks/galore.py (LLaMA-350M width 1024, MLP 2816).
LLAMA_BLOCK = {
    **{k: F32(1024, 1024) for k in ("wq", "wk", "wv", "wo")},
    "w_gate": F32(1024, 2816),
    "w_up": F32(1024, 2816),
    "w_down": F32(2816, 1024),
}


def _moment_bytes(report: dict[str, Any]) -> int:
    rows = report["leaves"]["state"]
    return sum(r["bytes"] for r in rows if ".mu[" in r["path"] or ".nu[" in r["path"])


def _basis_bytes(report: dict[str, Any]) -> int:
    return sum(r["bytes"] for r in report["leaves"]["state"] if ".bases[" in r["path"])


@pytest.mark.parametrize("alias", [lowrank.galore_adamw, lowrank.lorenza])
def test_state_bytes_on_llama_block(alias):
    fp32 = lowrank.memory_report(alias(1e-3, rank=128), LLAMA_BLOCK)
    int8 = lowrank.memory_report(alias(1e-3, rank=128, state_bits=8), LLAMA_BLOCK)
    # rank 128: 2 moments of 128 x max(m, n) per matrix.
    assert _moment_bytes(fp32) == 4 * 2 * 128 * (4 * 1024 + 3 * 2816)
    assert _moment_bytes(int8) <= 0.3 * _moment_bytes(fp32)
    # 1 byte of code + one float32 scale per 256 elements.
    assert _moment_bytes(int8) == _moment_bytes(fp32) // 4 * (1 + 4 / 256)
    assert _basis_bytes(int8) == _basis_bytes(fp32) > 0  # bases stay in float32
    dtypes = {r["dtype"] for r in int8["leaves"]["state"] if ".codes" in r["path"]}
    assert dtypes == {"int8", "uint8"}


def _loss(p: Any, x: jax.Array) -> jax.Array:
    # A tied autoencoder: x -> tanh(x W + b) -> (.) W^T.
    return jnp.mean((jnp.tanh(x @ p["w"] + p["b"]) @ p["w"].T - x) ** 2)


def _train(tx: optax.GradientTransformation, steps: int = 30, **extra: Any) -> list[float]:
    x = jnp.asarray(np.random.default_rng(1).standard_normal((32, 24)), jnp.float32)
    if extra.get("zo"):
        value_fn = lambda p: _loss(p, x)  # noqa: E731
        kw: dict[str, Any] = {"value_fn": value_fn}
    else:
        kw = {}

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(_loss)(p, x)
        u, s = tx.update(g, s, p, **kw)
        return optax.apply_updates(p, u), s, loss

    p, s, losses = PARAMS, tx.init(PARAMS), []
    for _ in range(steps):
        p, s, loss = step(p, s)
        losses.append(float(loss))
    return losses


MAKERS = {
    "galore_adamw": lambda **kw: lowrank.galore_adamw(3e-2, rank=4, update_proj_gap=10, **kw),
    "reproject": lambda **kw: lowrank.galore_adamw(
        3e-2, rank=4, update_proj_gap=10, on_refresh="reproject", **kw
    ),
    "lorenza": lambda **kw: lowrank.lorenza(3e-2, rank=4, update_proj_gap=10, **kw),
}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_training_close_to_fp32(name):
    make, zo = MAKERS[name], name == "lorenza"
    fp32 = _train(make(), zo=zo)
    int8_tx = make(state_bits=8, **SMALL)
    state = int8_tx.init(PARAMS)
    inner = state[0].inner_state
    assert isinstance(inner, lowrank.ScaleByAdamInBasisState)  # basis-aware: reproject works
    assert isinstance(inner.mu["w"], lowrank.QuantizedArray)
    assert inner.mu["w"].codes.shape == (24, 4) and inner.nu["w"].codes.dtype == jnp.uint8
    int8 = _train(int8_tx, zo=zo)
    assert fp32[-1] < 0.7 * fp32[0]  # it trains (refreshes at steps 0, 10, 20)
    assert abs(int8[-1] - fp32[-1]) <= 0.02 * fp32[-1]


def test_defaults_keep_full_precision_and_small_leaves():
    plain = lowrank.galore_adamw(1e-2, rank=4).init(PARAMS)
    # state_bits=None is the plain alias: the same state.
    assert jax.tree.structure(plain) == jax.tree.structure(
        lowrank.galore_adamw(1e-2, rank=4, state_bits=None, **SMALL).init(PARAMS)
    )
    # Default min_size 4096: these 96-element moments stay float32.
    state = lowrank.galore_adamw(1e-2, rank=4, state_bits=8).init(PARAMS)
    assert jax.tree.structure(state) == jax.tree.structure(plain)


@pytest.mark.parametrize("alias", [lowrank.galore_adamw, lowrank.lorenza])
def test_validation(alias):
    with pytest.raises(ValueError, match="`state_bits`"):
        alias(1e-2, rank=4, state_bits=4)
    with pytest.raises(ValueError, match="`state_bits`"):
        alias(1e-2, rank=4, state_bits=8.0)
    with pytest.raises(ValueError, match="`state_block_size`"):
        alias(1e-2, rank=4, state_bits=8, state_block_size=0)
    with pytest.raises(ValueError, match="`state_min_size`"):
        alias(1e-2, rank=4, state_min_size=-1)


def test_inject_hyperparams_only_passed_structural_args_static():
    # state_block_size is not passed: its None default needs no listing.
    injected = optax.inject_hyperparams(
        lowrank.galore_adamw, static_args=("rank", "state_bits", "state_min_size")
    )(learning_rate=3e-2, rank=4, update_proj_gap=None, state_bits=8, state_min_size=16)
    plain = lowrank.galore_adamw(3e-2, rank=4, state_bits=8, state_min_size=16)
    state = jax.jit(injected.init)(PARAMS)
    assert set(state.hyperparams) >= {"learning_rate", "b1", "b2", "eps", "scale"}
    assert not {"state_bits", "state_min_size", "state_block_size"} & set(state.hyperparams)
    assert isinstance(state.inner_state[0].inner_state.mu["w"], lowrank.QuantizedArray)
    np.testing.assert_allclose(_train(injected, steps=5), _train(plain, steps=5), rtol=1e-4)
    # lorenza likewise
    zo = optax.inject_hyperparams(lowrank.lorenza, static_args=("rank", "state_bits"))(
        learning_rate=3e-2, rank=4, state_bits=8
    )
    assert "state_bits" not in jax.jit(zo.init)(PARAMS).hyperparams


def test_orbax_roundtrip(tmp_path):
    tx = lowrank.galore_adamw(3e-2, rank=4, update_proj_gap=2, state_bits=8, **SMALL)
    grads = [
        jax.tree.map(lambda p, i=i: jnp.cos(p * (i + 1)), PARAMS) for i in range(4)
    ]  # a refresh inside each half
    assert_roundtrip_bit_identical(tx, PARAMS, grads, tmp_path)


def test_fused_layers_accept_8bit_galore():
    """8-bit GaLore is leaf-wise: fused into the backward pass it equals the unfused step."""
    kw = dict(rank=2, update_proj_gap=3, state_bits=8, state_block_size=4, state_min_size=0)

    def layer(p, x):
        return x + jnp.tanh(x @ p["w"])

    stacked = {"w": 0.3 * jnp.asarray(RNG.standard_normal((3, 8, 8)), jnp.float32)}
    x = jnp.asarray(RNG.standard_normal((4, 8)), jnp.float32)

    def loss_fn(params, blocks, x):
        return jnp.mean(blocks(x) ** 2)

    layers = lowrank.fused_layers(layer, lowrank.galore_adamw(1e-2, **kw))
    fused = jax.jit(lowrank.fused_value_and_grad(loss_fn, layers))
    unfused_tx = lowrank.galore_adamw(
        1e-2, dimension_numbers={"w": lowrank.DimensionNumbers(1, 2)}, **kw
    )

    @jax.jit
    def unfused(p, s):
        g = jax.grad(lambda p: loss_fn({}, lambda h: layers.forward(p, h), x))(p)
        u, s = unfused_tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    pf, sf = stacked, layers.init(stacked)
    pu, su = stacked, unfused_tx.init(stacked)
    assert isinstance(sf.layer_state[0].inner_state.mu["w"], lowrank.QuantizedArray)
    for _ in range(5):
        _, _, pf, sf = fused({}, pf, sf, x)
        pu, su = unfused(pu, su)
    np.testing.assert_allclose(pf["w"], pu["w"], rtol=1e-6, atol=1e-7)
