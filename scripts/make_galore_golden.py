"""Regenerates the galore-torch 1.0 golden trajectories used by ``tests/test_galore_parity.py``.

Runs the published reference optimizer ``galore_torch.GaLoreAdamW`` (galore-torch 1.0) in float32 on
a parameter set with one projected matrix ``w`` (param group with ``rank``) and one bias ``b``
(param group without ``rank``: plain AdamW), feeding it a fixed, seeded sequence of gradients, and
stores the initial parameters, the gradients and the parameters after every step, for every
``proj_type``, in one ``.npz`` per shape and gradient regime (``tall``: 12×8, ``wide``: 8×12;
``*_large``: gradients ~1 instead of ~1e-3, see ``REGIMES``) under
``tests/golden/galore_torch/``; keys ``w_<proj_type>``/``b_<proj_type>`` hold ``(steps, ...)``
trajectories and ``config`` a JSON string with the hyperparameters and versions.

Two things are adapted around the reference, neither of which changes its algorithm:

* ``galore_torch/__init__.py`` imports ``transformers`` and ``bitsandbytes``, and
  ``galore_torch/adamw.py`` imports ``transformers.utils.versions.require_version`` (used only for
  a torch version check). The script loads ``adamw.py`` and ``galore_projector.py`` directly through
  ``importlib`` under a namespace-only ``galore_torch`` package and stubs ``require_version`` with a
  no-op, so neither dependency is needed.
* Singular vectors are only defined up to sign and LAPACK builds disagree on them, while under
  GaLore's default moment policy the trajectory depends on the signs across refreshes. The library
  canonicalises its bases (spec ``galore.md`` section 2.2: each left singular vector's
  largest-magnitude entry is made positive, first index on ties, and the matching right singular
  vector flips with it). The projector module's ``torch`` global is replaced by a proxy whose
  ``linalg.svd`` applies that rule to the reference's own ``torch.linalg.svd`` result; the global
  ``torch`` module is left untouched.

Gradients are ``G_t = c_t U_t diag(s) V_tᵀ + noise`` with orthonormal factors ``U_t``, ``V_t`` that
drift randomly every step (so the leading singular subspaces at the refresh steps 0, 4, 8, 12 all
differ) and well-separated singular values. Refresh-step gradients are re-drawn (deterministically)
until their top-``rank + 1`` singular values are separated and the sign rule's peak entry of every
kept left singular vector is unambiguous, so float32 and float64 SVDs agree on the basis.

Usage::

    python3 scripts/make_galore_golden.py            # writes tests/golden/galore_torch/*.npz
    python3 scripts/make_galore_golden.py --check    # regenerates in memory, compares to the files
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import pathlib
import sys
import types
import warnings

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
GOLDEN_DIR = ROOT / "tests" / "golden" / "galore_torch"

PROJ_TYPES = ("std", "reverse_std", "right", "left", "full")
SHAPES = {"tall": (12, 8), "wide": (8, 12)}
# Gradient regimes: file suffix -> (overall gradient scale, proj_types run).
# * "" (small, realistic gradients ~1e-3): every proj_type. Projected coordinates are then within a
#   few orders of eps, so galore's eps placement and the order of weight decay are visible.
# * "_large" (gradients ~1): 'full' next to the one-sided control 'std'. Here the float32 round-off
#   in the off-diagonal r×r coordinates at step 0 is no longer small next to eps, and Adam's
#   normalisation amplifies it; the test's tolerance for 'full' is checked in this regime.
REGIMES = {"": (1e-3, PROJ_TYPES), "_large": (1.0, ("std", "full"))}
CONFIG = {
    "learning_rate": 1e-2,
    "b1": 0.9,
    "b2": 0.999,
    "eps": 1e-6,
    "weight_decay": 0.1,
    "rank": 3,
    "update_proj_gap": 4,
    "scale": 0.25,
    "num_steps": 16,
}
# Gradient model: singular values of the noiseless part, relative to the step's overall scale.
SINGULAR_VALUES = np.array([3.0, 2.0, 1.2, 0.4, 0.25, 0.15, 0.08, 0.04])
PARAM_SCALE = 0.05
MIN_SIGN_MARGIN = 0.02  # |U| peak minus runner-up, for every kept left singular vector
MIN_REL_GAP = 0.05  # (s_k - s_{k+1}) / s_1 for k <= rank, at refresh steps


# --------------------------------------------------------------------------------------------------
# Loading galore-torch 1.0 without transformers / bitsandbytes.
# --------------------------------------------------------------------------------------------------


def _canonical_svd(svd):
    """Wraps ``svd`` so each left singular vector's peak-magnitude entry is positive."""

    def wrapped(a, *args, **kwargs):
        u, s, vh = svd(a, *args, **kwargs)
        peak = torch.argmax(u.abs(), dim=-2, keepdim=True)  # first index on ties
        sign = torch.where(torch.gather(u, -2, peak) < 0, -1.0, 1.0).to(u.dtype)
        return u * sign, s, vh * sign.transpose(-1, -2)

    return wrapped


class _LinalgProxy:
    def __init__(self) -> None:
        self.svd = _canonical_svd(torch.linalg.svd)

    def __getattr__(self, name):
        return getattr(torch.linalg, name)


class _TorchProxy:
    """Stands in for ``torch`` inside ``galore_projector`` only; ``linalg.svd`` is canonicalised."""

    linalg = _LinalgProxy()

    def __getattr__(self, name):
        return getattr(torch, name)


def load_galore_torch():
    """Returns ``(GaLoreAdamW, galore_torch version)`` loaded from the installed package files."""
    dist = importlib.metadata.distribution("galore-torch")
    version = dist.version
    pkg_dir = pathlib.Path(str(dist.locate_file("galore_torch")))
    if not (pkg_dir / "adamw.py").exists():
        raise RuntimeError(f"galore_torch sources not found in {pkg_dir}")

    # Stub transformers.utils.versions.require_version (a torch version check) as a no-op.
    if "transformers" not in sys.modules:
        tf = types.ModuleType("transformers")
        tf_utils = types.ModuleType("transformers.utils")
        tf_versions = types.ModuleType("transformers.utils.versions")
        tf_versions.require_version = lambda *args, **kwargs: None
        tf.utils = tf_utils
        tf_utils.versions = tf_versions
        sys.modules.update(
            {
                "transformers": tf,
                "transformers.utils": tf_utils,
                "transformers.utils.versions": tf_versions,
            }
        )

    # A package object that does not execute galore_torch/__init__.py, so that the relative
    # import in adamw.py (`from .galore_projector import GaLoreProjector`) resolves.
    pkg = types.ModuleType("galore_torch")
    pkg.__path__ = [str(pkg_dir)]
    sys.modules["galore_torch"] = pkg
    projector = importlib.import_module("galore_torch.galore_projector")
    projector.torch = _TorchProxy()
    adamw = importlib.import_module("galore_torch.adamw")
    assert adamw.GaLoreProjector is projector.GaLoreProjector
    return adamw.AdamW, version


# --------------------------------------------------------------------------------------------------
# Gradient sequence.
# --------------------------------------------------------------------------------------------------


def _orthonormal(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, k)))
    return q * np.sign(np.diag(r))


def _well_conditioned(g: np.ndarray, rank: int) -> bool:
    u, s, _ = np.linalg.svd(g.astype(np.float64), full_matrices=False)
    gaps = (s[:rank] - s[1 : rank + 1]) / s[0]
    if gaps.min() < MIN_REL_GAP:
        return False
    peaks = np.sort(np.abs(u[:, :rank]), axis=0)
    return bool((peaks[-1] - peaks[-2]).min() >= MIN_SIGN_MARGIN)


def make_gradients(rng: np.random.Generator, shape: tuple[int, int], config: dict, scale: float):
    """Float32 gradients ``(steps, m, n)`` for ``w`` and ``(steps, n)`` for the bias."""
    m, n = shape
    k = min(m, n)
    steps, gap, rank = config["num_steps"], config["update_proj_gap"], config["rank"]
    u_base, v_base = _orthonormal(rng, m, k), _orthonormal(rng, n, k)
    grads_w = []
    for t in range(steps):
        while True:
            u = np.linalg.qr(u_base + 0.8 * rng.standard_normal((m, k)))[0]
            v = np.linalg.qr(v_base + 0.8 * rng.standard_normal((n, k)))[0]
            s = SINGULAR_VALUES[:k] * rng.uniform(0.85, 1.15, size=k)
            c = scale * rng.uniform(0.5, 2.0)
            g = c * (u * s) @ v.T + 0.02 * c * rng.standard_normal((m, n))
            g = g.astype(np.float32)
            if t % gap != 0 or _well_conditioned(g, rank):
                break
        grads_w.append(g)
        u_base, v_base = u, v  # the subspace keeps drifting from step to step
    grads_b = scale * rng.standard_normal((steps, n))
    return np.stack(grads_w), grads_b.astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Running the reference.
# --------------------------------------------------------------------------------------------------


def run_reference(adamw_cls, proj_type: str, w0, b0, grads_w, grads_b, config: dict):
    """Params after every step of galore-torch's AdamW (float32)."""
    w = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    b = torch.nn.Parameter(torch.from_numpy(b0.copy()))
    groups = [
        {
            "params": [w],
            "rank": config["rank"],
            "update_proj_gap": config["update_proj_gap"],
            "scale": config["scale"],
            "proj_type": proj_type,
        },
        {"params": [b]},
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # HF AdamW deprecation notice
        opt = adamw_cls(
            groups,
            lr=config["learning_rate"],
            betas=(config["b1"], config["b2"]),
            eps=config["eps"],
            weight_decay=config["weight_decay"],
        )
    w_traj, b_traj = [], []
    for t in range(config["num_steps"]):
        w.grad = torch.from_numpy(grads_w[t].copy())
        b.grad = torch.from_numpy(grads_b[t].copy())
        opt.step()
        w_traj.append(w.detach().numpy().copy())
        b_traj.append(b.detach().numpy().copy())
    assert w.dtype == torch.float32 and b.dtype == torch.float32
    return np.stack(w_traj), np.stack(b_traj)


def build_cases(adamw_cls, version: str) -> dict[str, dict[str, np.ndarray]]:
    """One file per shape and regime; it holds the inputs and each proj_type's trajectory."""
    files = {}
    for case_index, (shape_name, shape) in enumerate(SHAPES.items()):
        for regime_index, (suffix, (grad_scale, proj_types)) in enumerate(REGIMES.items()):
            rng = np.random.default_rng(20240311 + 10 * case_index + regime_index)
            m, n = shape
            w0 = (PARAM_SCALE * rng.standard_normal((m, n))).astype(np.float32)
            b0 = (PARAM_SCALE * rng.standard_normal(n)).astype(np.float32)
            grads_w, grads_b = make_gradients(rng, shape, CONFIG, grad_scale)
            config = dict(
                CONFIG,
                proj_types=list(proj_types),
                shape=list(shape),
                grad_scale=grad_scale,
                reference=f"galore-torch {version} (galore_torch.GaLoreAdamW), float32",
                galore_torch_version=version,
                torch_version=torch.__version__,
                svd_signs="canonical: peak |U[:, j]| positive (first index on ties), Vh[j] follows",
                generator="scripts/make_galore_golden.py",
            )
            arrays = {
                "config": np.array(json.dumps(config, sort_keys=True)),
                "w0": w0,
                "b0": b0,
                "grads_w": grads_w,
                "grads_b": grads_b,
            }
            for proj_type in proj_types:
                w_traj, b_traj = run_reference(
                    adamw_cls, proj_type, w0, b0, grads_w, grads_b, CONFIG
                )
                arrays[f"w_{proj_type}"] = w_traj
                arrays[f"b_{proj_type}"] = b_traj
            files[shape_name + suffix] = arrays
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the stored files")
    args = parser.parse_args()
    torch.set_num_threads(1)
    adamw_cls, version = load_galore_torch()
    if version != "1.0":
        raise RuntimeError(f"expected galore-torch 1.0, found {version}")
    cases = build_cases(adamw_cls, version)
    if args.check:
        worst = 0.0
        for name, arrays in cases.items():
            with np.load(GOLDEN_DIR / f"{name}.npz") as stored:
                assert sorted(stored.files) == sorted(arrays), name
                for key in ("w0", "b0", "grads_w", "grads_b"):
                    np.testing.assert_array_equal(stored[key], arrays[key], err_msg=f"{name}:{key}")
                for key in arrays:
                    if key.startswith(("w_", "b_")):
                        worst = max(worst, float(np.abs(stored[key] - arrays[key]).max()))
        print(f"inputs identical; max |regenerated - stored| over trajectories: {worst:.3g}")
        return
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    for name, arrays in cases.items():
        path = GOLDEN_DIR / f"{name}.npz"
        np.savez_compressed(path, **arrays)
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
