"""The randomized refresh on a sharded gradient: sketch-sized collectives only.

Run through ``tests/test_mesh.py`` (which sets 8 simulated devices). For meshes
``(8,)``, ``(4, 2)`` and ``(2, 4)`` (axes ``fsdp`` and ``tp``), Explicit and Auto,
one jitted refresh step of :func:`galore_adamw` with the randomized projector on
leaves sharded along rows, columns, both and a stacked leaf with its layer axis
sharded: the compiled HLO (every computation, the refresh branch included) holds
no collective whose result is as large as a projected gradient (on Explicit
meshes: a quarter of one); bases
equal the single-device ones within 1e-5 and are laid out as
:func:`state_sharding` says; updates agree within 1e-3 of their largest entry.
The same for LORENZA; the checker is shown to flag the SVD projector's gather;
the Householder fallback (TSQR) is exercised on rank-deficient sketches.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import lowrank_optax as lowrank
from lowrank_optax._src import linalg

if jax.device_count() != 8:  # pragma: no cover - guarded by test_mesh.py
    pytest.skip("needs 8 simulated devices", allow_module_level=True)

RNG = np.random.default_rng(0)


def _gradient_like(*shape: int) -> jax.Array:
    """Matrices with a geometric spectrum (ratio 0.8), as gradients tend to have.

    A well separated top of the spectrum keeps the single-device/sharded
    comparison at round-off level (an ill-separated one amplifies summation
    order differences by 1/gap).
    """
    *batch, m, n = shape
    k = min(m, n)
    u = np.linalg.qr(RNG.standard_normal((*batch, m, k)))[0]
    v = np.linalg.qr(RNG.standard_normal((*batch, n, k)))[0]
    s = 0.8 ** np.arange(k)
    return jnp.asarray((u * s[..., None, :]) @ np.swapaxes(v, -1, -2), jnp.float32)


SHAPES = {"tall": (128, 64), "wide": (64, 128), "stack": (8, 32, 64)}
PARAMS = {k: _gradient_like(*s) for k, s in SHAPES.items()} | {"bias": _gradient_like(1, 64)[0]}
GRADS = [jax.tree.map(lambda x: _gradient_like(*x.shape) if x.ndim > 1 else x, PARAMS)]
GRADS += [jax.tree.map(lambda x: 0.5 * x[::-1] if x.ndim == 2 else 0.5 * x, GRADS[0])] * 2
DIMS = {
    "tall": lowrank.DimensionNumbers(0, 1),
    "wide": lowrank.DimensionNumbers(0, 1),
    "stack": lowrank.DimensionNumbers(1, 2),  # axis 0: stacked layers (batch axis)
    "bias": None,
}
# Projected gradients' element counts (the matrix views, batch included).
FULL = {k: math.prod(s) for k, s in SHAPES.items()}
# Rows only, columns only, both, and the stacked leaf's layer axis sharded.
MESHES = {
    (8,): {
        "tall": P("fsdp", None),
        "wide": P(None, "fsdp"),
        "stack": P("fsdp", None, None),
        "bias": P("fsdp"),
    },
    (4, 2): {
        "tall": P("fsdp", "tp"),
        "wide": P("tp", "fsdp"),
        "stack": P("fsdp", None, "tp"),
        "bias": P("tp"),
    },
    (2, 4): {
        "tall": P("fsdp", None),
        "wide": P(None, ("fsdp", "tp")),
        "stack": P(None, "fsdp", "tp"),
        "bias": P(None),
    },
}
PROJECTOR = lowrank.randomized_projector(oversampling=4, power_iterations=1, seed=3)


def _galore() -> optax.GradientTransformation:
    return lowrank.galore_adamw(
        1e-2,
        weight_decay=0.1,
        rank=3,
        update_proj_gap=2,
        projector=PROJECTOR,
        dimension_numbers=DIMS,
    )


# -- the HLO checker ----------------------------------------------------------------

_COLLECTIVE = re.compile(
    r"=\s*(?P<result>.+?)\s+(?P<op>all-gather|all-reduce|all-to-all|reduce-scatter|"
    r"collective-permute|collective-broadcast|ragged-all-to-all)(?:-start)?\("
)
_ARRAY = re.compile(r"\b[a-z]+\d*\[([\d,]*)\]")


def large_collectives(hlo: str, limit: int) -> list[str]:
    """Collectives in compiled HLO text whose result holds ``limit`` elements or more.

    Every computation is scanned (conditional branches, loop bodies, shard_map
    regions), and every array of a tuple-shaped result counts.
    """
    found = []
    for line in hlo.splitlines():
        match = _COLLECTIVE.search(line)
        if match is None:
            continue
        for dims in _ARRAY.findall(match["result"]):
            size = math.prod(int(d) for d in dims.split(",") if d)
            if size >= limit:
                found.append(f"{match['op']} -> {match['result']}")
    return found


# The criterion: no collective result as large as a projected gradient. On
# Explicit meshes the range finder lays every thin matrix out itself, and a much
# stricter limit holds: a quarter of the smallest projected gradient (the largest
# sketch-sized result here is K x 128 = 896 elements, K = 7). On Auto meshes XLA's
# partitioner decides and may gather a whole thin sketch (up to L x 64 x K = 3584
# elements here, before LAPACK in the Householder fallback).
LIMIT = {AxisType.Explicit: min(FULL.values()) // 4, AxisType.Auto: min(FULL.values())}


def _bases(state: object) -> dict:
    return state[0].bases


def _close_updates(updates: dict, ref: dict) -> None:
    for k in ref:
        top = float(np.max(np.abs(ref[k])))
        np.testing.assert_allclose(updates[k], ref[k], atol=1e-3 * top, rtol=0, err_msg=k)


def _close_bases(bases: dict, ref: dict) -> None:
    for k, b in ref.items():
        for side in ("left", "right"):
            want = getattr(b, side)
            if want is not None:
                np.testing.assert_allclose(getattr(bases[k], side), want, atol=1e-5, err_msg=k)


def _single_device(tx: optax.GradientTransformation, step) -> list:
    state, params, out = tx.init(PARAMS), PARAMS, []
    for g in GRADS:
        updates, state = step(g, state, params)
        params = optax.apply_updates(params, updates)
        out.append((updates, state))
    return out


@pytest.fixture(scope="module")
def reference():
    tx = _galore()
    return _single_device(tx, jax.jit(tx.update))


def _specs(tree: object) -> list:
    def norm(x: object) -> tuple:
        spec = tuple(getattr(x, "sharding", x).spec)
        while spec and spec[-1] is None:
            spec = spec[:-1]
        return spec

    return jax.tree.leaves(jax.tree.map(norm, tree, is_leaf=lambda x: isinstance(x, P)))


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])
@pytest.mark.parametrize("shape", list(MESHES), ids=lambda s: "x".join(map(str, s)))
def test_refresh_collectives_are_sketch_sized(reference, shape, axis_type):
    tx = _galore()
    names = ("fsdp", "tp")[: len(shape)]
    mesh = jax.make_mesh(shape, names, axis_types=(axis_type,) * len(shape))
    with jax.set_mesh(mesh):
        shardings = {k: NamedSharding(mesh, s) for k, s in MESHES[shape].items()}
        state_shardings = lowrank.state_sharding(tx, PARAMS, shardings)
        params = jax.device_put(PARAMS, shardings)
        state = jax.jit(tx.init, out_shardings=state_shardings)(params)
        grads = [jax.device_put(g, shardings) for g in GRADS]
        # Explicit: the types alone give the state its layout (no out_shardings).
        out = (
            {}
            if axis_type == AxisType.Explicit
            else {"out_shardings": (shardings, state_shardings)}
        )
        step = jax.jit(tx.update, **out).lower(grads[0], state, params).compile()
        assert large_collectives(step.as_text(), LIMIT[axis_type]) == []
        for g, (ref_updates, ref_state) in zip(grads, reference, strict=True):
            updates, state = step(g, state, params)
            params = optax.apply_updates(params, updates)
            _close_updates(updates, ref_updates)
            _close_bases(_bases(state), _bases(ref_state))
            assert _specs(_bases(state)) == _specs(_bases(state_shardings))


def test_checker_flags_the_svd_projectors_gather():
    """The exact SVD needs the whole matrix: its refresh all-gathers each gradient.

    The same checker and limit as above must report it (the check cannot pass
    vacuously), from inside the refresh's conditional branch.
    """
    tx = lowrank.galore_adamw(1e-2, rank=3, projector="svd")
    mesh = jax.make_mesh((4, 2), ("fsdp", "tp"))
    with jax.set_mesh(mesh):
        params = {"tall": jax.device_put(PARAMS["tall"], P("fsdp", "tp"))}
        state = jax.jit(tx.init)(params)
        hlo = jax.jit(tx.update).lower(params, state, params).compile().as_text()
    found = large_collectives(hlo, LIMIT[AxisType.Auto])  # the looser limit
    assert any(f.startswith("all-gather -> f32[128,64]") for f in found), found


def test_lorenza_refresh_is_sharded():
    """LORENZA's refresh is the randomized projector (K = r, no power iteration)."""
    tx = lowrank.lorenza(
        1e-2, weight_decay=0.1, rank=3, update_proj_gap=2, num_probes=1, dimension_numbers=DIMS
    )
    targets = GRADS[0]

    def loss(params):
        return sum(0.5 * jnp.sum((params[k] - targets[k]) ** 2) for k in params)

    def step(params, state):
        updates, state = tx.update(jax.grad(loss)(params), state, params, value_fn=loss)
        return optax.apply_updates(params, updates), state

    params, state, reference = PARAMS, tx.init(PARAMS), []
    single = jax.jit(step)
    for _ in range(2):
        params, state = single(params, state)
        reference.append((params, state))
    mesh = jax.make_mesh((4, 2), ("fsdp", "tp"))
    with jax.set_mesh(mesh):
        shardings = {k: NamedSharding(mesh, s) for k, s in MESHES[(4, 2)].items()}
        params = jax.device_put(PARAMS, shardings)
        state = jax.jit(tx.init)(params)
        compiled = jax.jit(step).lower(params, state).compile()
        assert large_collectives(compiled.as_text(), LIMIT[AxisType.Explicit]) == []
        for ref_params, ref_state in reference:
            params, state = compiled(params, state)
            _close_bases(_bases(state), _bases(ref_state))
            for k in ref_params:
                np.testing.assert_allclose(params[k], ref_params[k], atol=1e-5, err_msg=k)


# -- the range finder itself on 2-D sharded matrices (sides, rank deficiency) ------


@jax.jit
def _factors(g: jax.Array) -> tuple:
    """Both factors (``proj_type='full'``) and the left one alone, in one compile."""

    def factors(sides: str) -> tuple:
        key = jax.random.PRNGKey(5)
        return linalg.randomized_factors_checked(
            g, 3, key, oversampling=4, power_iterations=1, sides=sides
        )

    return factors("both"), factors("left")


def _rank_deficient(m: int, n: int, rank: int) -> jax.Array:
    full = np.asarray(_gradient_like(m, n))
    u, s, vh = np.linalg.svd(full, full_matrices=False)
    return jnp.asarray((u[:, :rank] * s[:rank]) @ vh[:rank], jnp.float32)


def test_rank_deficient_sketch_uses_the_sharded_householder():
    # rank 5: r = 3 < 5 < K = 7, so the sketch is rank-deficient (CholeskyQR2 is
    # rejected, TSQR runs over the sharded rows) while the top-3 basis is still
    # determined by the gradient alone.
    g = _rank_deficient(128, 64, 5)
    want = _factors(g)
    mesh = jax.make_mesh((4, 2), ("fsdp", "tp"))
    with jax.set_mesh(mesh):
        got = _factors(jax.device_put(g, P("fsdp", "tp")))
        # The fallback is taken: it returns T = I exactly (CholeskyQR2 never does).
        sketch = jax.device_put(jnp.asarray(g[:, :7].T), P(None, "fsdp"))
        _, transform, _ = jax.jit(linalg._orthonormal_rows_deferred)(sketch)
        np.testing.assert_array_equal(transform, np.eye(7, dtype=np.float32))
    for got_sides, want_sides in zip(got, want, strict=True):
        for a, b in zip(got_sides[:2], want_sides[:2], strict=True):
            if b is not None:
                np.testing.assert_allclose(a, b, atol=1e-5)
        np.testing.assert_array_equal(got_sides[2], want_sides[2])
    assert got[0][0].sharding.spec == P("fsdp", None)  # u: rows as the gradient's
    assert got[0][1].sharding.spec == P(None, "tp")  # vh: columns as the gradient's
    assert got[1][0].sharding.spec == P("fsdp", None)


def test_tsqr_matches_householder_and_stays_orthonormal():
    """Full rank: the unique positive-diagonal QR; rank-deficient: Q still orthonormal."""
    mesh = jax.make_mesh((4, 2), ("fsdp", "tp"))
    rows = jax.jit(linalg._householder_rows)
    # (rows, spec): 4 blocks of 16 rows; 8 blocks of 5 rows, fewer than K = 7.
    for a, spec in ((64, P(None, "fsdp")), (40, P(None, ("fsdp", "tp")))):
        full = np.asarray(_gradient_like(a, 7)).T  # the rows layout: Yᵀ, (K, a)
        poor = np.asarray(_rank_deficient(a, 7, 3)).T
        want_q, want_r = rows(jnp.asarray(full))
        with jax.set_mesh(mesh):
            q, r = rows(jax.device_put(full, spec))
            assert q.sharding.spec == spec
            np.testing.assert_allclose(q, want_q, atol=1e-5)
            np.testing.assert_allclose(r, want_r, atol=1e-5)
            q, r = map(np.asarray, rows(jax.device_put(poor, spec)))
        np.testing.assert_allclose(q @ q.T, np.eye(7), atol=1e-5)
        np.testing.assert_allclose(q.T @ r, poor.T, atol=1e-5)


def test_lre_qr_of_n_row_matrices_stays_sharded():
    """LRE's flattened-vector basis: the orthonormal completion's QR runs where the rows lie.

    ``n``-row matrices (``n`` = the flattened model) are sharded along ``n``; the
    completion of a basis update factors its residual columns with the sharded
    Householder QR (no ``n × k`` gather) and agrees with one device, dependent
    columns included (flagged invalid and zeroed in both).
    """
    from lowrank_optax._src.lre import linalg as lre_linalg

    n = 256
    q = np.linalg.qr(RNG.standard_normal((n, 4)))[0].astype(np.float32)
    cols = RNG.standard_normal((n, 6)).astype(np.float32)
    # Dependent columns last: a QR's columns after a dependent one are not unique
    # (they are orthogonalised against an arbitrary completion direction).
    cols[:, 4] = cols[:, 0] - 2.0 * cols[:, 1]  # dependent: not a new direction
    cols[:, 5] = q @ np.arange(1.0, 5.0, dtype=np.float32)  # inside span(Q)
    valid = np.ones(6, bool)
    completion = jax.jit(lre_linalg.orthonormal_completion)
    want = completion(q, cols, valid)
    mesh = jax.make_mesh((4, 2), ("fsdp", "tp"))
    with jax.set_mesh(mesh):
        rows = P(("fsdp", "tp"), None)
        args = (jax.device_put(q, rows), jax.device_put(cols, rows), valid)
        compiled = completion.lower(*args).compile()
        assert large_collectives(compiled.as_text(), n * 6 // 4) == []
        got = compiled(*args)
    assert got[0].sharding.spec == rows
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[1], [True, True, True, True, False, False])
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)
    np.testing.assert_allclose(got[2], want[2], atol=1e-5)
