"""Parity of ``lowrank.galore_adamw`` with galore-torch 1.0 ``GaLoreAdamW`` (spec galore.md §6.4).

Golden trajectories in ``tests/golden/galore_torch/`` are written by
``scripts/make_galore_golden.py``, which runs the published galore-torch 1.0 optimizer in float32
with its SVD wrapped by the canonical sign rule (spec §2.2). Each file holds one shape and gradient
regime: ``tall`` (12×8) and ``wide`` (8×12) with realistic gradients (~1e-3) for every proj_type,
and ``*_large`` (gradients ~1) for ``'full'`` and the one-sided control ``'std'``. All cases use
rank 3, refresh gap 4 (refreshes at steps 0, 4, 8, 12 of 16), lr 1e-2, weight decay 0.1,
scale 0.25, and carry a bias leaf that galore-torch optimises in a param group without ``rank``.

Three things are checked:

* the independent float64 numpy implementation of the spec (``galore_numpy_reference.py``)
  reproduces every golden, which validates the goldens and the reference against each other
  without the library;
* the tolerances are discriminating: each plausible implementation mistake (eps placement, order
  or scaling of weight decay, bias correction, moment reset, refresh clock, basis signs, bias decay)
  made in the numpy reference moves the trajectory outside them;
* ``lowrank.galore_adamw`` (jitted, float32) follows every golden step for step, and the aliases
  ``'symmetric'``/``'asymmetric'`` give exactly the trajectories of ``'full'``/``'std'``.
"""

from __future__ import annotations

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from galore_numpy_reference import DEVIATIONS, galore_adamw_trajectory

import lowrank_optax as lowrank

GOLDEN_DIR = pathlib.Path(__file__).parent / "golden" / "galore_torch"
FILES = ("tall", "wide", "tall_large", "wide_large")
HYPERPARAMS = (
    "learning_rate",
    "b1",
    "b2",
    "eps",
    "weight_decay",
    "rank",
    "update_proj_gap",
    "scale",
)
EPS32 = float(np.finfo(np.float32).eps)

# Relative tolerance required by the issue for the one-sided projections.
RTOL = 1e-4
# Absolute tolerance, scaled to the parameter magnitude: entries that pass near zero have no
# meaningful relative error, their error is float32 round-off at the scale of the largest entries.
# One float32 ulp there is EPS32 · max|W| ≈ 1.2e-7 · max|W|; each of the 16 steps rounds a handful
# of times at that scale in each implementation, so the worst-case accumulated difference is about
# 16 steps × 4 roundings × 1.2e-7 ≈ 8e-6 · max|W|. We take 1e-5 · max|W0| (0.9e-6 to 1.7e-6 for
# these params). Measured torch vs float64 numpy: ≤ 4.3e-8 absolute (≈ 3e-7 · max|W|), so there is
# wide headroom, while the tolerance is ~1e-3 of a single step's update (lr · scale · |N| ≈ 2.5e-3)
# and test_tolerances_detect_each_deviation shows that each plausible mistake exceeds it (by ≥ 30×
# in the small-gradient goldens, where eps and the weight-decay order matter most).
# The library itself (float32 throughout) was measured at ≤ 7.1e-7 from the goldens, ~0.27 of this
# budget, for every one-sided case; that is dominated by optax's float32 bias correction:
# 1 - β2ᵗ computed from float32(0.999) = 0.99900001 is off by 1.3e-5 relative, so every Adam
# direction is off by ~6e-6 relative, whereas galore-torch computes it in Python float64.
ATOL_PER_PARAM_SCALE = 1e-5


@functools.cache
def load(file: str) -> dict:
    with np.load(GOLDEN_DIR / f"{file}.npz") as z:
        data = {key: z[key] for key in z.files}
    data["config"] = json.loads(str(data["config"]))
    return data


CASES = [(file, pt) for file in FILES for pt in load(file)["config"]["proj_types"]]
CASE_IDS = [f"{pt}-{file}" for file, pt in CASES]


def hyperparams(data: dict) -> dict:
    return {key: data["config"][key] for key in HYPERPARAMS}


def full_amplification_atol(data: dict) -> float:
    """Extra absolute tolerance for ``proj_type='full'`` (Adam's amplification of SVD round-off).

    With ``'full'`` the projected gradient at a refresh, ``P_Lᵀ G P_Rᵀ``, is ``diag(σ_1..σ_r)``
    in exact arithmetic: its off-diagonal coordinates are zero up to float32 round-off
    ``|δ| ≲ EPS32 · σ_1(G)``, and which round-off depends on the SVD implementation. At step 0 the
    moments are empty, and Adam's first direction ``x ↦ x √(1-β2) / (√(1-β2) |x| + eps)`` has slope
    ``√(1-β2)/eps`` (3e4 for eps = 1e-6) at 0: it turns that round-off into a direction entry of
    size up to ``min(√(1-β2) |δ| / eps, 1)`` instead of 0. Two float32 implementations round
    independently, so their directions may differ by twice that in each of the ``r(r-1)``
    off-diagonal entries (the diagonal ``σ_j ≫ eps`` is well conditioned); back-projection with
    orthonormal bases bounds a parameter's change by the Frobenius norm of that difference, scaled
    by ``lr · scale``.
    At later refreshes ``V`` already holds real second moments, so the same round-off is divided by
    ``√V ≫ eps`` and is negligible; the step-0 difference then just persists (measured: constant
    over all 16 steps). One-sided projections have no such coordinates (``G Pᵀ = U_r diag(σ)``).

    Calibration, max |torch float32 - numpy float64| over all steps: small gradients (σ_1 ≈ 5e-3),
    this bound 0.8e-7 to 2.3e-7 vs measured ≤ 4.3e-8 for ``'full'`` (no worse than one-sided);
    large gradients (σ_1 ≈ 6), bound 2.9e-4 vs measured 2.1e-5 (tall) and 4.3e-5 (wide), while
    one-sided ``'std'`` stays at ≤ 2.8e-8 on the same inputs. The bound leaves 7-14× headroom for
    a second float32 implementation's own round-off; in the large regime every mistake of
    test_tolerances_detect_each_deviation still exceeds it (by ≥ 2.5×).
    """
    c = hyperparams(data)
    sigma_1 = float(np.linalg.norm(data["grads_w"][0].astype(np.float64), 2))
    per_entry = min(np.sqrt(1.0 - c["b2"]) * EPS32 * sigma_1 / c["eps"], 1.0)
    r = c["rank"]
    return c["learning_rate"] * c["scale"] * np.sqrt(r * (r - 1)) * 2.0 * per_entry


def tolerances(data: dict, proj_type: str) -> tuple[float, float]:
    """``(atol_w, atol_b)`` for a case; ``rtol`` is ``RTOL`` throughout."""
    atol_w = ATOL_PER_PARAM_SCALE * float(np.abs(data["w0"]).max())
    atol_b = ATOL_PER_PARAM_SCALE * float(np.abs(data["b0"]).max())
    if proj_type in ("full", "symmetric"):
        atol_w += full_amplification_atol(data)
    return atol_w, atol_b


def excess(w, b, data: dict, proj_type: str) -> float:
    """``max |x - golden| / (atol + RTOL |golden|)`` over both leaves and all steps (≤ 1 passes)."""
    atol_w, atol_b = tolerances(data, proj_type)
    gw, gb = data[f"w_{proj_type}"], data[f"b_{proj_type}"]
    ew = np.abs(np.asarray(w, np.float64) - gw) / (atol_w + RTOL * np.abs(gw))
    eb = np.abs(np.asarray(b, np.float64) - gb) / (atol_b + RTOL * np.abs(gb))
    return float(max(ew.max(), eb.max()))


def error_summary(w, b, data: dict, proj_type: str) -> str:
    gw, gb = data[f"w_{proj_type}"], data[f"b_{proj_type}"]
    dw = np.abs(np.asarray(w, np.float64) - gw)
    db = np.abs(np.asarray(b, np.float64) - gb)
    first_bad = int(np.argmax(dw.reshape(len(dw), -1).max(axis=1) > tolerances(data, proj_type)[0]))
    return (
        f"w: max abs {dw.max():.3g}, max rel {(dw / np.abs(gw)).max():.3g}, "
        f"per-step max abs {np.array2string(dw.reshape(len(dw), -1).max(axis=1), precision=2)}"
        f" (first step over atol: {first_bad}); b: max abs {db.max():.3g}"
    )


def numpy_trajectory(data: dict, proj_type: str, deviation: str | None = None):
    return galore_adamw_trajectory(
        data["w0"],
        data["b0"],
        data["grads_w"],
        data["grads_b"],
        proj_type=proj_type,
        deviation=deviation,
        **hyperparams(data),
    )


# --------------------------------------------------------------------------------------------------
# Goldens vs the independent numpy reference (no library involved).
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("file", "proj_type"), CASES, ids=CASE_IDS)
def test_numpy_reference_reproduces_goldens(file, proj_type):
    data = load(file)
    assert data["config"]["galore_torch_version"] == "1.0"
    w, b = numpy_trajectory(data, proj_type)
    assert excess(w, b, data, proj_type) <= 1.0, error_summary(w, b, data, proj_type)


@pytest.mark.parametrize(("file", "proj_type"), CASES, ids=CASE_IDS)
def test_tolerances_detect_each_deviation(file, proj_type):
    data = load(file)
    missed = []
    for deviation in DEVIATIONS:
        w, b = numpy_trajectory(data, proj_type, deviation)
        if excess(w, b, data, proj_type) <= 1.0:
            missed.append(deviation)
    assert not missed, f"tolerances too loose to detect {missed}"


@pytest.mark.parametrize("file", FILES)
def test_goldens_exercise_refreshes(file):
    """Every refresh sees a new leading subspace, and the projection side changes the result."""
    data = load(file)
    c = hyperparams(data)
    r, gap = c["rank"], c["update_proj_gap"]
    refresh_steps = list(range(0, len(data["grads_w"]), gap))
    assert len(refresh_steps) >= 4
    for side in (0, 1):  # left and right singular subspaces
        bases = []
        for t in refresh_steps:
            u, _, vh = np.linalg.svd(data["grads_w"][t].astype(np.float64))
            bases.append(u[:, :r] if side == 0 else vh[:r].T)
        for old, new in zip(bases, bases[1:], strict=False):
            overlap = np.linalg.norm(old.T @ new) ** 2  # = r iff the subspaces coincide
            assert overlap < r - 0.5
    trajectories = {pt: data[f"w_{pt}"] for pt in data["config"]["proj_types"]}
    if "reverse_std" in trajectories:
        assert np.abs(trajectories["std"] - trajectories["reverse_std"]).max() > 1e-4


# --------------------------------------------------------------------------------------------------
# The library vs the goldens.
# --------------------------------------------------------------------------------------------------


@functools.cache
def library_trajectory(file: str, proj_type: str) -> tuple[np.ndarray, np.ndarray]:
    data = load(file)
    tx = lowrank.galore_adamw(proj_type=proj_type, **hyperparams(data))
    params = {"w": jnp.asarray(data["w0"]), "b": jnp.asarray(data["b0"])}
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    ws, bs = [], []
    for gw, gb in zip(data["grads_w"], data["grads_b"], strict=True):
        params, state = step(params, state, {"w": jnp.asarray(gw), "b": jnp.asarray(gb)})
        assert params["w"].dtype == jnp.float32 and params["b"].dtype == jnp.float32
        ws.append(np.asarray(params["w"]))
        bs.append(np.asarray(params["b"]))
    return np.stack(ws), np.stack(bs)


@pytest.mark.parametrize(("file", "proj_type"), CASES, ids=CASE_IDS)
def test_galore_adamw_matches_galore_torch(file, proj_type):
    data = load(file)
    w, b = library_trajectory(file, proj_type)
    if excess(w, b, data, proj_type) > 1.0:
        # Say which side the float64 reference agrees with, to tell a library bug from a bad golden.
        ref_w, ref_b = numpy_trajectory(data, proj_type)
        pytest.fail(
            f"library vs galore-torch: {error_summary(w, b, data, proj_type)}\n"
            f"library vs numpy float64: max abs {np.abs(w - ref_w).max():.3g} (w), "
            f"{np.abs(b - ref_b).max():.3g} (b)\n"
            f"numpy float64 vs galore-torch: {error_summary(ref_w, ref_b, data, proj_type)}"
        )


@pytest.mark.parametrize(("alias", "target"), [("symmetric", "full"), ("asymmetric", "std")])
@pytest.mark.parametrize("file", ["tall", "wide"])
def test_proj_type_aliases_match_targets_exactly(file, alias, target):
    w_alias, b_alias = library_trajectory(file, alias)
    w_target, b_target = library_trajectory(file, target)
    np.testing.assert_array_equal(w_alias, w_target)
    np.testing.assert_array_equal(b_alias, b_target)
