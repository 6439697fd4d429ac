"""Writes golden LRE trajectories (``tests/golden/lre_reference.npz``) from the reference.

The reference is the published ``inikishev/lre`` (PyTorch, not on PyPI). Clone it and
point this script at the checkout; nothing from it is copied into this repository::

    git clone https://github.com/inikishev/lre /tmp/lre   # HEAD 2e32089 was used
    python3 scripts/make_lre_golden.py --lre-path /tmp/lre

Everything runs in float64. The problem is a tiny tanh regression with parameters
``w (3, 2)`` and ``b (2,)`` (n = 8) on a fixed batch; each configuration is run for
``STEPS`` steps and the parameter trajectory is stored. The configurations are the
deterministic ones the spec says must match to roundoff (covariance / EMA /
parameters curvatures with GGT, Eigen or FullMatrix bases and diagonal inner
optimizers), chosen so that none of the documented reference bugs is exercised.

The reference's ``LRE.step`` needs ``loss=`` even after a manual backward (its
covariance curvature asserts a loss), so the script passes the detached loss.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
import torch

STEPS = 25
LR = 0.05

# name -> (curvature, basis, inner list, update_freq), built from the reference module
CONFIGS = {
    "cov_ggt_default": lambda lre: (
        lre.curvature.Covariance(),
        lre.basis.GGT(history_size=5),
        [lre.opt.Adam(), lre.opt.Cautious(), lre.opt.ClipNormByEMA(normalize=True)],
        1,
    ),
    "cov_ggt_freq2_adam_clip": lambda lre: (
        lre.curvature.Covariance(),
        lre.basis.GGT(history_size=4),
        [lre.opt.Adam(beta1=0.8, beta2=0.95), lre.opt.ClipNormByEMA()],
        2,
    ),
    "cov_eigen_adam": lambda lre: (
        lre.curvature.Covariance(),
        lre.basis.Eigen(rank=4),
        [lre.opt.Adam()],
        1,
    ),
    "ema_ggt_linvsqrt_ema": lambda lre: (
        lre.curvature.EMA(beta=0.9),
        lre.basis.GGT(history_size=6, eig_tol=1e-7),
        [lre.opt.LInvSqrt(), lre.opt.EMA(beta=0.5)],
        1,
    ),
    # FullMatrix has degenerate eigenvalues (0.9 I + rank-1 at first), so only
    # rotation-invariant inner pieces give a unique answer: L^-1/2 then an EMA.
    "params_fullmatrix_linvsqrt_ema": lambda lre: (
        lre.curvature.Parameters(),
        lre.basis.FullMatrix(beta=0.9),
        [lre.opt.LInvSqrt(), lre.opt.EMA(beta=0.8)],
        1,
    ),
}


def problem(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(size=(6, 3)),
        "y": rng.normal(size=(6, 2)) * 0.5,
        "w0": rng.normal(size=(3, 2)) * 0.5,
        "b0": rng.normal(size=2) * 0.1,
    }


def run(lre_module: object, config: str, data: dict[str, np.ndarray]) -> np.ndarray:
    curvature, basis, inner, update_freq = CONFIGS[config](lre_module)
    w = torch.tensor(data["w0"], dtype=torch.float64, requires_grad=True)
    b = torch.tensor(data["b0"], dtype=torch.float64, requires_grad=True)
    x = torch.tensor(data["x"], dtype=torch.float64)
    y = torch.tensor(data["y"], dtype=torch.float64)
    opt = lre_module.LRE(
        [w, b],
        lr=LR,
        curvature=curvature,
        basis=basis,
        basis_optimizer=inner,
        update_freq=update_freq,
    )
    trajectory = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = torch.mean((torch.tanh(x @ w + b) - y) ** 2)
        loss.backward()
        opt.step(loss=loss.detach())
        trajectory.append(torch.cat([w.detach().ravel(), b.detach().ravel()]).numpy().copy())
    return np.stack(trajectory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lre-path", required=True, help="checkout of inikishev/lre")
    parser.add_argument(
        "--out",
        default=str(pathlib.Path(__file__).resolve().parents[1] / "tests/golden/lre_reference.npz"),
    )
    args = parser.parse_args()
    sys.path.insert(0, args.lre_path)
    import lre  # noqa: PLC0415  (the reference, from the given checkout)

    torch.set_default_dtype(torch.float64)
    data = problem()
    out = {f"data_{k}": v for k, v in data.items()}
    for name in CONFIGS:
        out[name] = run(lre, name, data)
        print(name, out[name][-1])
    out["steps"] = np.array(STEPS)
    out["lr"] = np.array(LR)
    np.savez(args.out, **out)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
