"""Writes the golden LRG-Adam trajectories used by ``tests/test_lrg.py``.

The published ``LRGAdam`` is not on PyPI. Its documented behaviour is small: before
each step of :class:`torch.optim.Adam`, concatenate every parameter gradient (in
parameter-group order, torch layouts) into one vector, zero-pad it to an ``s x s``
matrix with ``s = ceil(sqrt(N))``, keep the ``rank`` largest singular values of
that matrix (falling back to the raw matrix when ``torch.linalg.svd`` raises),
crop the first ``N`` entries and write them back into ``p.grad``. This script
re-implements exactly that as a subclass of :class:`torch.optim.Adam`, so the Adam
part (including coupled weight decay and AMSGrad) is torch's own code, and runs it
on a small float64 torch MLP.

The published class allocates its padding buffer in torch's default dtype; the
script sets the default dtype to float64 so that buffer (and everything else) is
float64.

Usage::

    python3 scripts/make_lrg_golden.py            # writes tests/golden/lrg_*.npz
"""

from __future__ import annotations

import argparse
import math
import pathlib

import numpy as np
import torch

IN_DIM, HIDDEN, OUT_DIM = 5, 4, 3  # N = 5*4 + 4 + 4*3 + 3 = 39 -> s = 7 (10 padding zeros)
BATCH = 8
STEPS = 8

VARIANTS = {
    # name: LRGAdam keyword arguments
    "adam": dict(rank=2, lr=1e-2),
    "wd": dict(rank=3, lr=2e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
    "amsgrad": dict(rank=2, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.05, amsgrad=True),
    "fullrank": dict(rank=7, lr=1e-2),
}


class LowRankGradientAdam(torch.optim.Adam):
    """torch.optim.Adam whose step first replaces the gradients by their global
    low-rank approximation (the documented LRGAdam behaviour)."""

    def __init__(
        self,
        params,
        rank: int = 10,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad
        )
        self.rank = rank

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - documented in the class
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with_grad = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not with_grad:
            return loss
        vector = torch.cat([p.grad.reshape(-1) for p in with_grad])
        n = vector.numel()
        side = math.ceil(math.sqrt(n))
        buffer = torch.zeros(side * side)  # torch default dtype, as the published class
        buffer[:n] = vector
        matrix = buffer.view(side, side)
        try:
            u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
            kept = s.clone()
            kept[self.rank :] = 0
            approx = u @ torch.diag(kept) @ vh
        except torch.linalg.LinAlgError:
            approx = matrix
        approx = approx.reshape(-1)[:n]
        start = 0
        for p in with_grad:
            p.grad.copy_(approx[start : start + p.numel()].view_as(p.grad))
            start += p.numel()
        super().step()
        return loss


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(IN_DIM, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, OUT_DIM)
    )


def _flat_params(model: torch.nn.Module) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy().copy()


def make_variant(name: str, kwargs: dict, seed: int = 0) -> dict[str, np.ndarray]:
    torch.manual_seed(seed)
    model = _model()
    gen = np.random.default_rng(seed)
    xs = gen.normal(size=(STEPS, BATCH, IN_DIM))
    ys = gen.integers(0, OUT_DIM, size=(STEPS, BATCH))
    opt = LowRankGradientAdam(model.parameters(), **kwargs)
    trajectory = [_flat_params(model)]
    losses = []
    for t in range(STEPS):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            model(torch.from_numpy(xs[t])), torch.from_numpy(ys[t])
        )
        loss.backward()
        opt.step()
        losses.append(loss.item())
        trajectory.append(_flat_params(model))
    betas = kwargs.get("betas", (0.9, 0.999))
    return dict(
        x=xs,
        y=ys,
        params=np.stack(trajectory),  # (STEPS + 1, N), torch order: W1 (out,in), b1, W2, b2
        losses=np.asarray(losses),
        layer_sizes=np.asarray([IN_DIM, HIDDEN, OUT_DIM]),
        rank=np.asarray(kwargs["rank"]),
        lr=np.asarray(kwargs["lr"]),
        b1=np.asarray(betas[0]),
        b2=np.asarray(betas[1]),
        eps=np.asarray(kwargs.get("eps", 1e-8)),
        weight_decay=np.asarray(kwargs.get("weight_decay", 0.0)),
        amsgrad=np.asarray(kwargs.get("amsgrad", False)),
        torch_version=np.asarray(torch.__version__),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=pathlib.Path(__file__).resolve().parents[1] / "tests" / "golden",
    )
    args = parser.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, kwargs in VARIANTS.items():
        path = args.out / f"lrg_{name}.npz"
        np.savez(path, **make_variant(name, kwargs))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
