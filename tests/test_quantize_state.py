"""quantize_state: the wrapper around optax, library and holocron transformations."""

import doctest
import importlib
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import quantize_reference as ref
from absl.testing import absltest
from conformance_utils import conformance_case
from optax.contrib import _common_test as ct
from orbax_roundtrip import assert_roundtrip_bit_identical

import lowrank_optax as lowrank

RNG = np.random.default_rng(0)
PARAMS = {
    "w": jnp.asarray(RNG.standard_normal((16, 40)), jnp.float32),  # 640 elements
    "v": jnp.asarray(RNG.standard_normal((24, 8)), jnp.float32),  # rows merged: 192
    "b": jnp.asarray(RNG.standard_normal((8,)), jnp.float32),  # below min_size
}
GRADS = [
    jax.tree.map(lambda x: jnp.asarray(RNG.standard_normal(x.shape), x.dtype), PARAMS)
    for _ in range(4)
]
KW = dict(block_size=32, min_size=64)  # small leaves still quantized in tests


def _leaves(tree):
    return jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: isinstance(x, lowrank.QuantizedArray)
    )[0]


def _kinds(state):
    """{keystr: 'int8' | 'uint8' | dtype name} for every stored leaf."""
    out = {}
    for path, x in _leaves(state):
        if isinstance(x, lowrank.QuantizedArray):
            out[jax.tree_util.keystr(path)] = str(x.codes.dtype)
        else:
            out[jax.tree_util.keystr(path)] = str(getattr(x, "dtype", None) or jnp.asarray(x).dtype)
    return out


def _run(tx, steps=None, params=PARAMS):
    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, u

    p, s = params, jax.jit(tx.init)(params)
    updates = []
    for g in GRADS if steps is None else GRADS[:steps]:
        p, s, u = step(p, s, g)
        updates.append(u)
    return p, s, updates


class TestStructure:
    def test_adam_state_layout_and_maps(self):
        tx = lowrank.quantize_state(optax.adam(1e-2), **KW)
        state = jax.jit(tx.init)(PARAMS)
        kinds = _kinds(state)
        assert kinds["[0].mu['w']"] == "int8" and kinds["[0].nu['w']"] == "uint8"
        assert kinds["[0].mu['v']"] == "int8" and kinds["[0].nu['v']"] == "uint8"
        assert kinds["[0].mu['b']"] == "float32" and kinds["[0].count"] == "int32"
        mu = state[0].mu
        assert mu["w"].codes.shape == (16, 40) and mu["w"].scales.shape == (16, 2)
        assert mu["v"].scales.shape == (6,)  # 192 elements in 6 blocks of 32
        assert isinstance(state[0], optax.ScaleByAdamState)  # inner's own types kept
        assert optax.tree.get(state, "count") == 0

    def test_default_thresholds(self):
        params = {"big": jnp.zeros((64, 64)), "small": jnp.zeros((63, 64)), "s": jnp.zeros(())}
        state = jax.eval_shape(lowrank.quantize_state(optax.scale_by_adam()).init, params)
        assert isinstance(state.mu["big"], lowrank.QuantizedArray)
        assert state.mu["big"].scales.shape == (16,)  # rows of 64 < 256: merged
        assert not isinstance(state.mu["small"], lowrank.QuantizedArray)  # 4032 < 4096
        # A 0-d leaf is never quantized, whatever min_size says.
        state0 = jax.eval_shape(
            lowrank.quantize_state(optax.scale_by_adam(), min_size=0).init, params
        )
        assert not isinstance(state0.mu["s"], lowrank.QuantizedArray)

    def test_bytes(self):
        params = {"w": jnp.zeros((256, 1024))}
        fp32 = jax.eval_shape(optax.adam(1e-3).init, params)
        q8 = jax.eval_shape(lowrank.quantize_state(optax.adam(1e-3)).init, params)
        nbytes = lambda t: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(t))
        assert nbytes(q8) / nbytes(fp32) == pytest.approx((1 + 4 / 256) / 4, rel=1e-3)


def _compiled_adam_step(params):
    tx = lowrank.quantize_state(optax.adam(1e-3))

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    state = jax.eval_shape(tx.init, params)
    return jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params).compile()


def test_step_temporaries_hold_about_one_leaf_not_all():
    """No float32 moment is materialised, and the sequencing hint keeps the step's
    temporaries (copies of old codes) well below the moments' float32 size."""
    params = {f"w{i}": jnp.zeros((128, 512)) for i in range(6)}
    compiled = _compiled_adam_step(params)
    all_moments = 2 * sum(x.size * 4 for x in params.values())
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < 0.5 * all_moments, (temp, all_moments)


def test_step_writes_no_float32_moment():
    """On CPU the new moments stay in registers: the only float32 arrays of a leaf's
    size that the step's fusions write are the new parameters (the block maxima are
    reduced from the decoded, updated moments inside one fusion per leaf pair)."""
    if jax.default_backend() != "cpu":
        pytest.skip("XLA CPU fusion structure")
    # (XLA does write small leaves' moments: below ~2^18 elements it prefers that.)
    params = {f"w{i}": jnp.zeros((256, 1024)) for i in range(3)}
    text = _compiled_adam_step(params).as_text()
    size = 256 * 1024
    written = []
    for line in text.splitlines():
        if " fusion(" not in line or "ENTRY" in line:
            continue
        for dims in re.findall(r"= \(?f32\[([\d,]+)\]", line):
            if math.prod(int(d) for d in dims.split(",")) == size:
                written.append(line.split("=")[0].strip())
    assert len(written) == len(params), written


def _reference_run(inner, unsigned_paths, block_size, min_size):
    """The inner transformation with every selected state leaf replaced by the numpy
    reference's quantize → dequantize after every step (the wrapper's semantics)."""

    def roundtrip(state):
        out = []
        leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
        for path, x in leaves:
            name = jax.tree_util.keystr(path)
            x = np.asarray(x)
            if np.issubdtype(x.dtype, np.floating) and x.ndim and x.size >= min_size:
                signed = name not in unsigned_paths
                q = ref.quantize(x, signed=signed, block_size=block_size)
                x = q["values"].astype(x.dtype)
            out.append(jnp.asarray(x))
        return jax.tree.unflatten(treedef, out)

    step = jax.jit(inner.update)
    p, s = PARAMS, roundtrip(inner.init(PARAMS))
    updates = []
    for g in GRADS:
        u, s = step(g, s, p)
        s = roundtrip(s)
        p = optax.apply_updates(p, u)
        updates.append(u)
    return updates


def test_adam_trajectory_matches_the_numpy_reference():
    unsigned = {"[0].nu['w']", "[0].nu['v']"}
    expected = _reference_run(optax.adam(1e-2), unsigned, 32, 64)
    _, _, got = _run(lowrank.quantize_state(optax.adam(1e-2), **KW))
    for e, g in zip(expected, got, strict=True):
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(e), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-7)


UNSIGNED = {
    "adam": (lambda: optax.adam(1e-2), {"nu"}),
    "amsgrad": (lambda: optax.amsgrad(1e-2), {"nu", "nu_max"}),
    "adam_in_basis": (
        lambda: lowrank.scale_by_adam_in_basis(amsgrad_decay=0.9),
        {"nu", "nu_max"},
    ),
    "adabelief": (lambda: lowrank.adabelief(1e-2, amsgrad=True), {"nu", "nu_max"}),
    "adan": (lambda: lowrank.adan(1e-2), {"nu"}),
    "tadam": (lambda: lowrank.tadam(1e-2), {"nu"}),
    "ademamix": (lambda: lowrank.ademamix(1e-2), {"nu"}),
    "adamp_amsgrad": (lambda: lowrank.adamp(1e-2, amsgrad=True), {"nu", "nu_max"}),
    "lamb": (lambda: lowrank.lamb(1e-2), {"nu"}),
    "lion": (lambda: optax.lion(1e-3), set()),
    "adafactor_unfactored": (lambda: optax.adafactor(1e-2, factored=False), {"v"}),
}


@pytest.mark.parametrize("name", sorted(UNSIGNED))
def test_declared_maps(name):
    make, unsigned_fields = UNSIGNED[name]
    state = jax.jit(lowrank.quantize_state(make(), **KW).init)(PARAMS)
    quantized = {k: v for k, v in _kinds(state).items() if v in ("int8", "uint8")}
    assert quantized, name
    for path, kind in quantized.items():
        field = path.rsplit("[", 1)[0].rsplit(".", 1)[-1]
        assert kind == ("uint8" if field in unsigned_fields else "int8"), (path, kind)


@pytest.mark.parametrize("name", ["adam_in_basis", "adan"])
def test_steps_close_to_the_unquantized_run(name):
    make, _ = UNSIGNED[name]
    _, _, updates = _run(lowrank.quantize_state(make(), **KW), steps=3)
    _, _, fp32 = _run(make(), steps=3)
    for a, b in zip(jax.tree.leaves(updates[-1]), jax.tree.leaves(fp32[-1]), strict=True):
        assert np.all(np.isfinite(np.asarray(a)))
        scale = float(np.max(np.abs(np.asarray(b)))) + 1e-12
        assert np.max(np.abs(np.asarray(a) - np.asarray(b))) <= 0.25 * scale, name


def test_nonnegative_override_and_mask():
    seen = []

    def nonnegative(path, leaf):
        seen.append((path, leaf.shape))
        return False if "nu" in path else None  # force the signed map on nu

    tx = lowrank.quantize_state(
        optax.adam(1e-2), nonnegative=nonnegative, mask=lambda path, _: "'v'" not in path, **KW
    )
    kinds = _kinds(jax.jit(tx.init)(PARAMS))
    assert kinds["[0].nu['w']"] == "int8" and kinds["[0].mu['w']"] == "int8"
    assert kinds["[0].mu['v']"] == "float32"  # masked out
    assert ("[0].nu['w']", (16, 40)) in seen
    assert not any("'v'" in p for p, _ in seen)  # mask is applied first
    _run(tx, steps=2)

    force_unsigned = lowrank.quantize_state(
        optax.adam(1e-2), nonnegative=lambda p, _: "mu" in p or None, **KW
    )
    assert _kinds(jax.eval_shape(force_unsigned.init, PARAMS))["[0].mu['w']"] == "uint8"


def test_register_nonnegative_fields():
    from typing import NamedTuple

    class TraceSqState(NamedTuple):
        trace: optax.Updates
        sq: optax.Updates

    lowrank.register_nonnegative_fields(TraceSqState, "sq")

    def init(params):
        return TraceSqState(optax.tree.zeros_like(params), optax.tree.zeros_like(params))

    def update(g, s, params=None):
        sq = jax.tree.map(lambda a, b: 0.9 * a + b * b, s.sq, g)
        return g, TraceSqState(g, sq)

    tx = lowrank.quantize_state(optax.GradientTransformation(init, update), **KW)
    kinds = _kinds(jax.jit(tx.init)(PARAMS))
    assert kinds[".sq['w']"] == "uint8" and kinds[".trace['w']"] == "int8"
    with pytest.raises(ValueError, match="fields"):
        lowrank.register_nonnegative_fields(TraceSqState, "missing")
    with pytest.raises(ValueError, match="state_cls"):
        lowrank.register_nonnegative_fields(dict, "sq")


class TestComposition:
    @pytest.mark.parametrize("on_refresh", ["reset", "reproject"])  # keep: mesh suite
    def test_inner_of_project_lowrank(self, on_refresh):
        def make(quantized):
            inner = lowrank.scale_by_adam_in_basis()
            if quantized:
                inner = lowrank.quantize_state(inner, block_size=8, min_size=16)
            return optax.chain(
                lowrank.project_lowrank(
                    inner, rank=4, update_proj_gap=2, on_refresh=on_refresh, proj_type="std"
                ),
                optax.scale(-1e-2),
            )

        _, state, updates = _run(make(True))
        inner_state = state[0].inner_state
        assert isinstance(inner_state, lowrank.ScaleByAdamInBasisState)
        assert inner_state.mu["w"].codes.shape == (4, 40)  # low-rank moments, 8-bit
        assert inner_state.nu["w"].codes.dtype == jnp.uint8
        _, _, fp32 = _run(make(False))
        for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(fp32), strict=True):
            scale = float(np.max(np.abs(np.asarray(b)))) + 1e-12
            assert np.max(np.abs(np.asarray(a) - np.asarray(b))) <= 0.1 * scale

    def test_reproject_still_needs_a_basis_aware_inner(self):
        tx = lowrank.project_lowrank(
            lowrank.quantize_state(optax.scale_by_adam(), min_size=16),
            rank=2,
            on_refresh="reproject",
        )
        with pytest.raises(ValueError, match="reproject"):
            jax.jit(tx.init)(PARAMS)

    def test_chain_multisteps_inject_hyperparams(self):
        base = lowrank.quantize_state(optax.adam(1e-2), **KW)
        multi = optax.MultiSteps(base, every_k_schedule=2)
        _, state, updates = _run(multi.gradient_transformation(), steps=4)
        assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates[0]))
        assert isinstance(state.inner_opt_state[0].mu["w"], lowrank.QuantizedArray)

        injected = optax.inject_hyperparams(
            lambda learning_rate: lowrank.quantize_state(optax.adam(learning_rate), **KW)
        )(learning_rate=1e-2)
        _, s_inj, u_inj = _run(injected, steps=3)
        _, _, u_plain = _run(base, steps=3)
        for a, b in zip(jax.tree.leaves(u_inj), jax.tree.leaves(u_plain), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)

        # The other way round: hyperparameters are scalars and stay as they are.
        outer = lowrank.quantize_state(
            optax.inject_hyperparams(optax.adam)(learning_rate=1e-2), block_size=32, min_size=0
        )
        state = jax.jit(outer.init)(PARAMS)
        assert state.hyperparams["learning_rate"].dtype == jnp.float32
        assert isinstance(state.inner_state[0].mu["b"], lowrank.QuantizedArray)
        _run(outer, steps=2)

    def test_extra_args_are_forwarded(self):
        seen = {}

        def update(g, s, params=None, *, tag=None, **extra):
            seen["tag"] = tag
            return g, s

        spy = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)
        tx = lowrank.quantize_state(spy)
        tx.update(GRADS[0], jax.jit(tx.init)(PARAMS), PARAMS, tag="hello")
        assert seen["tag"] == "hello"


class TestValidation:
    def test_arguments(self):
        with pytest.raises(ValueError, match="`bits`"):
            lowrank.quantize_state(optax.adam(1e-3), bits=4)
        with pytest.raises(ValueError, match="`block_size`"):
            lowrank.quantize_state(optax.adam(1e-3), block_size=0)
        with pytest.raises(ValueError, match="`min_size`"):
            lowrank.quantize_state(optax.adam(1e-3), min_size=-1)
        with pytest.raises(TypeError, match="`inner`"):
            lowrank.quantize_state(optax.adam)
        with pytest.raises(TypeError, match="`inner`"):
            lowrank.quantize_state(None)

    def test_nesting_is_rejected(self):
        tx = lowrank.quantize_state(lowrank.quantize_state(optax.adam(1e-3), **KW), **KW)
        with pytest.raises(ValueError, match="nested"):
            jax.jit(tx.init)(PARAMS)


class TestDegenerate:
    def test_zero_gradients_keep_an_exact_zero_state(self):
        tx = lowrank.quantize_state(optax.adam(1e-2), **KW)
        zeros = jax.tree.map(jnp.zeros_like, PARAMS)
        state = jax.jit(tx.init)(PARAMS)
        updates, state = jax.jit(tx.update)(zeros, state, PARAMS)
        assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
        for _, x in _leaves(state):
            if isinstance(x, lowrank.QuantizedArray):
                assert np.all(np.asarray(x.codes) == 0) and np.all(np.asarray(x.scales) == 0)

    def test_nan_gradient_poisons_its_blocks_and_apply_if_finite_skips(self):
        bad = dict(GRADS[0], w=GRADS[0]["w"].at[3, 5].set(jnp.nan))
        tx = lowrank.quantize_state(optax.adam(1e-2), **KW)
        state = jax.jit(tx.init)(PARAMS)
        _, new = jax.jit(tx.update)(bad, state, PARAMS)
        scales = np.asarray(new[0].mu["w"].scales)
        assert np.isnan(scales[3, 0]) and np.isfinite(np.delete(scales.ravel(), 3 * 2)).all()

        safe = optax.apply_if_finite(lowrank.quantize_state(optax.adam(1e-2), **KW), 3)
        s0 = jax.jit(safe.init)(PARAMS)
        u, s1 = jax.jit(safe.update)(bad, s0, PARAMS)
        assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))
        for a, b in zip(
            jax.tree.leaves(s1.inner_state), jax.tree.leaves(s0.inner_state), strict=True
        ):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    @pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
    def test_half_precision_params_stable_dtypes_no_recompile(self, dtype):
        params = jax.tree.map(lambda x: x.astype(dtype), PARAMS)
        grads = jax.tree.map(lambda x: x.astype(dtype), GRADS[0])
        tx = lowrank.quantize_state(optax.adam(1e-2), **KW)
        state = jax.jit(tx.init)(params)
        assert state[0].mu["w"].scales.dtype == dtype
        step = jax.jit(tx.update)
        u, s1 = step(grads, state, params)
        u, s2 = step(grads, s1, params)
        assert step._cache_size() == 1
        shapes = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t)
        assert shapes(s2) == shapes(state)
        assert jax.tree.leaves(u)[0].dtype == dtype

    def test_tree_map_params(self):
        tx = lowrank.quantize_state(optax.adam(1e-2), **KW)
        state = jax.jit(tx.init)(PARAMS)
        specs = optax.tree_map_params(
            tx, lambda _, s: s, state, PARAMS, transform_non_params=lambda _: "other"
        )
        # Whether a leaf is quantized depends on its size, unknown to the placeholder
        # init: no subtree is reported as parameter-shaped, every subtree is "other"
        # (a prefix of the state, as jit's out_shardings accept).
        assert specs[0] == optax.ScaleByAdamState("other", "other", "other")
        jax.tree.map(lambda spec, subtree: None, specs, state)


def test_orbax_roundtrip(tmp_path):
    # A quantized GaLore inner is round-tripped on a mesh in tests/mesh/mesh_quantize.py.
    tx = lowrank.quantize_state(optax.adam(1e-2), **KW)
    assert_roundtrip_bit_identical(tx, PARAMS, GRADS, tmp_path)


def test_nnx_optimizer():
    from flax import nnx

    model = nnx.Linear(64, 80, rngs=nnx.Rngs(0))
    tx = lowrank.quantize_state(optax.adam(1e-2), min_size=1024)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x = jnp.ones((4, 64))

    @nnx.jit
    def train_step(model, optimizer, x):
        grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
        optimizer.update(model, grads)

    before = np.asarray(model.kernel[...])
    train_step(model, optimizer, x)
    train_step(model, optimizer, x)
    assert not np.allclose(before, np.asarray(model.kernel[...]))
    leaves = jax.tree.leaves(nnx.state(optimizer))
    assert any(getattr(v, "dtype", None) == jnp.int8 for v in leaves)


@pytest.mark.parametrize("name", ["blockwise", "quantize"])
def test_docstring_examples(name):
    module = importlib.import_module(f"lowrank_optax._src.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0 and result.attempted > 0


def _quantized_adam(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformation:
    # Tiny conformance targets: quantize every leaf, in blocks of 2 elements.
    return lowrank.quantize_state(optax.adam(learning_rate), block_size=2, min_size=0)


class QuantizedAdamConformance(
    conformance_case(
        {"lowrank_quantized_adam": (_quantized_adam, {"learning_rate": 1e-2})},
        targets=(ct._setup_mixed_tensor_target,),
    )
):
    pass


if __name__ == "__main__":
    absltest.main()
