"""Writes float64 golden trajectories of holocron.optim (pylocron 0.3.0).

Run from the repository root::

    python3 scripts/make_holocron_golden.py            # writes tests/golden/holocron.npz

holocron's top-level package imports its vision models (torchvision), so this
script does not ``import holocron``: it registers an empty ``holocron`` package
pointing at the installed directory and imports only ``holocron.optim``, whose
modules need nothing but torch.

Every trajectory is *teacher-forced*: a fixed, pre-drawn gradient sequence is fed
to the optimizer whatever the parameters, so the test can feed the same
gradients to the JAX port and compare parameters step by step. The file holds:

* ``params/<problem>/<leaf>``: initial parameters; ``grads/<problem>/<leaf>``:
  gradients, shape ``(steps, *leaf_shape)``;
* ``traj/<case>/<leaf>``: parameters after steps ``0..steps``;
* ``__meta__``: JSON list of cases: name, problem, optimizer, holocron kwargs,
  the port's kwargs (``ours``) and ``kind`` -- ``parity`` (code and docs agree:
  the port must match) or ``holocron_behaviour`` (holocron's code departs from
  its docs: used by the reference tests to show the departure is the documented
  one).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import pathlib
import sys
import types
from typing import Any

import numpy as np
import torch

STEPS = 30


def load_holocron_optim() -> types.ModuleType:
    """Imports ``holocron.optim`` without executing ``holocron/__init__.py``."""
    spec = importlib.util.find_spec("holocron")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pylocron is not installed (pip install pylocron==0.3.0)")
    if "holocron" not in sys.modules:
        stub = types.ModuleType("holocron")
        stub.__path__ = list(spec.submodule_search_locations)
        sys.modules["holocron"] = stub
    return importlib.import_module("holocron.optim")


def make_problems() -> dict[str, dict[str, Any]]:
    """Two parameter sets with pre-drawn gradients.

    ``standard`` has a zero-initialised bias (zero-norm branches at step 1), a
    leaf whose norm (12) exceeds the default clip (10) and a leaf whose gradient
    is exactly zero at step 3. ``small`` drops the large leaf (every norm stays
    below 10, so LARS' clip is inactive). ``dense`` has a non-zero bias: LAMB's
    parity needs every trust ratio active (the fallback ratio 1 of a zero weight
    norm does not cancel holocron's missing bias correction).
    """
    rng = np.random.default_rng(20240611)
    big = rng.normal(size=(2, 3))
    init = {
        "w": 0.5 * rng.normal(size=(4, 3)),
        "b": np.zeros(3),
        "v": rng.normal(size=(5,)),
        "big": 12.0 * big / np.linalg.norm(big),
    }
    scales = {"w": 1.0, "b": 0.3, "v": 2.0, "big": 0.5}
    grads = {k: scales[k] * rng.normal(size=(STEPS, *v.shape)) for k, v in init.items()}
    # A systematic component along the initial weights, so that AdamP's cosine
    # test takes both branches along the trajectory.
    grads["w"] += 0.8 * np.sign(np.sin(np.arange(STEPS)))[:, None, None] * init["w"]
    grads["v"][2] = 0.0
    small = {k: v for k, v in init.items() if k != "big"}
    dense = dict(init, b=0.1 * rng.normal(size=3))
    return {
        "standard": {"params": init, "grads": grads},
        "dense": {"params": dense, "grads": grads},
        "small": {"params": small, "grads": {k: grads[k] for k in small}},
    }


def _betas(kw: dict[str, Any], n: int) -> dict[str, Any]:
    """Port kwargs (b1, b2, b3) -> holocron's ``betas`` tuple (defaults filled by caller)."""
    out = {k: v for k, v in kw.items() if k not in ("b1", "b2", "b3")}
    names = ("b1", "b2", "b3")[:n]
    if any(k in kw for k in names):
        out["betas"] = tuple(kw[k] for k in names)
    return out


# name, optimizer, problem, holocron kwargs, port kwargs, kind
def cases() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(
        name: str,
        opt: str,
        problem: str,
        ours: dict[str, Any],
        holo: dict[str, Any],
        kind: str = "parity",
    ) -> None:
        out.append(
            dict(name=name, optimizer=opt, problem=problem, ours=ours, holocron=holo, kind=kind)
        )

    # LARS: parity only without momentum and with an inactive clip.
    add("lars_plain", "lars", "small", dict(learning_rate=0.1), dict(lr=0.1))
    add(
        "lars_wd_noclip",
        "lars",
        "standard",
        dict(learning_rate=0.05, weight_decay=5e-3, scale_clip=(0.0, 100.0)),
        dict(lr=0.05, weight_decay=5e-3, scale_clip=(0.0, 100.0)),
    )
    # LAMB: parity for weight_decay = 0 and eps = 0 (bias correction cancels in
    # the trust ratio, provided the ratio is not the zero-norm fallback 1).
    add("lamb_clip", "lamb", "dense", dict(learning_rate=0.05, eps=0.0), dict(lr=0.05, eps=0.0))
    add(
        "lamb_custom_clip",
        "lamb",
        "standard",
        dict(learning_rate=0.02, b1=0.8, b2=0.99, eps=0.0, scale_clip=(0.5, 2.0)),
        dict(lr=0.02, betas=(0.8, 0.99), eps=0.0, scale_clip=(0.5, 2.0)),
    )
    # RaLars: holocron's code is the reference.
    add("ralars_default", "ralars", "standard", dict(learning_rate=0.05), dict(lr=0.05))
    add(
        "ralars_forced_wd_clip",
        "ralars",
        "standard",
        dict(
            learning_rate=0.03,
            b1=0.85,
            b2=0.99,
            weight_decay=1e-2,
            scale_clip=(0.1, 5.0),
            force_adaptive_momentum=True,
        ),
        dict(
            lr=0.03,
            betas=(0.85, 0.99),
            weight_decay=1e-2,
            scale_clip=(0.1, 5.0),
            force_adaptive_momentum=True,
        ),
    )
    # TAdam.
    add("tadam_default", "tadam", "standard", dict(learning_rate=1e-2), dict(lr=1e-2))
    add(
        "tadam_amsgrad_dof_wd",
        "tadam",
        "standard",
        dict(learning_rate=2e-2, b1=0.8, weight_decay=1e-2, dof=3.0, amsgrad=True),
        dict(lr=2e-2, betas=(0.8, 0.999), weight_decay=1e-2, dof=3.0, amsgrad=True),
    )
    # AdaBelief: holocron has no eps inside s_t -> parity with eps_root = 0.
    add(
        "adabelief_default",
        "adabelief",
        "standard",
        dict(learning_rate=1e-2, eps_root=0.0),
        dict(lr=1e-2),
    )
    add(
        "adabelief_amsgrad_wd",
        "adabelief",
        "standard",
        dict(learning_rate=2e-2, b1=0.8, b2=0.99, weight_decay=1e-2, eps_root=0.0, amsgrad=True),
        dict(lr=2e-2, betas=(0.8, 0.99), weight_decay=1e-2, amsgrad=True),
    )
    # AdamP.
    add("adamp_default", "adamp", "standard", dict(learning_rate=1e-2), dict(lr=1e-2))
    add(
        "adamp_amsgrad_wd_delta",
        "adamp",
        "standard",
        dict(learning_rate=2e-2, weight_decay=1e-2, delta=0.2, amsgrad=True),
        dict(lr=2e-2, weight_decay=1e-2, delta=0.2, amsgrad=True),
    )
    # AdEMAMix (coupled weight decay, as holocron).
    add("ademamix_default", "ademamix", "standard", dict(learning_rate=1e-2), dict(lr=1e-2))
    add(
        "ademamix_wd_alpha_b3",
        "ademamix",
        "standard",
        dict(learning_rate=2e-2, b1=0.8, b2=0.99, b3=0.99, alpha=3.0, weight_decay=1e-2),
        dict(lr=2e-2, betas=(0.8, 0.99, 0.99), alpha=3.0, weight_decay=1e-2),
    )
    # Wrappers: ours = wrapper kwargs + inner spec.
    for name, inner, wrap in [
        ("sgd", dict(name="sgd", learning_rate=0.1), dict(sync_rate=0.5, sync_period=5)),
        (
            "sgd_nesterov",
            dict(name="sgd", learning_rate=0.05, momentum=0.9, nesterov=True),
            dict(sync_rate=0.3, sync_period=4),
        ),
        ("adam", dict(name="adam", learning_rate=1e-2), dict(sync_rate=0.8, sync_period=6)),
    ]:
        add(f"lookahead_{name}", "lookahead", "standard", dict(inner=inner, **wrap), dict(wrap))
    for name, inner, wrap in [
        ("adam", dict(name="adam", learning_rate=1e-2), dict(sync_rate=0.5, sync_period=6)),
        (
            "adam_lowrate",
            dict(name="adam", learning_rate=2e-2, b1=0.8),
            dict(sync_rate=0.1, sync_period=4),
        ),
        (
            "sgd_momentum",
            dict(name="sgd", learning_rate=0.05, momentum=0.9),
            dict(sync_rate=0.2, sync_period=3),
        ),
    ]:
        add(f"scout_{name}", "scout", "standard", dict(inner=inner, **wrap), dict(wrap))

    # holocron's code where it departs from its documentation (reference tests).
    dev = "holocron_behaviour"
    add(
        "lars_momentum",
        "lars",
        "small",
        dict(learning_rate=0.05, momentum=0.9, weight_decay=1e-2),
        dict(lr=0.05, momentum=0.9, weight_decay=1e-2),
        dev,
    )
    add(
        "lars_nesterov",
        "lars",
        "small",
        dict(learning_rate=0.05, momentum=0.8, nesterov=True),
        dict(lr=0.05, momentum=0.8, nesterov=True),
        dev,
    )
    add(
        "lars_clip_ignored",
        "lars",
        "standard",
        dict(learning_rate=0.1, weight_decay=1e-3),
        dict(lr=0.1, weight_decay=1e-3),
        dev,
    )
    add(
        "lamb_wd_eps",
        "lamb",
        "standard",
        dict(learning_rate=0.05, weight_decay=1e-2),
        dict(lr=0.05, weight_decay=1e-2),
        dev,
    )
    add(
        "adabelief_eps_root",
        "adabelief",
        "standard",
        dict(learning_rate=1e-2, eps=1e-3),
        dict(lr=1e-2, eps=1e-3),
        dev,
    )
    add("adan_default", "adan", "standard", dict(learning_rate=1e-2), dict(lr=1e-2), dev)
    add(
        "adan_wd_amsgrad",
        "adan",
        "standard",
        dict(learning_rate=1e-2, weight_decay=0.05, amsgrad=True),
        dict(lr=1e-2, weight_decay=0.05, amsgrad=True),
        dev,
    )
    add(
        "scout_zero_grad_element",
        "scout",
        "frozen",
        dict(inner=dict(name="sgd", learning_rate=0.1), sync_rate=0.5, sync_period=3),
        dict(sync_rate=0.5, sync_period=3),
        dev,
    )
    add(
        "scout_period_one",
        "scout",
        "standard",
        dict(inner=dict(name="sgd", learning_rate=0.1), sync_rate=0.5, sync_period=1),
        dict(sync_rate=0.5, sync_period=1),
        dev,
    )
    return out


def holocron_optimizer(optim: types.ModuleType, case: dict[str, Any], params: list) -> Any:
    opt = case["optimizer"]
    if opt in ("lookahead", "scout"):
        spec = dict(case["ours"]["inner"])
        kind = spec.pop("name")
        lr = spec.pop("learning_rate")
        if kind == "sgd":
            inner = torch.optim.SGD(
                params,
                lr=lr,
                momentum=spec.get("momentum", 0.0),
                nesterov=spec.get("nesterov", False),
            )
        else:
            inner = torch.optim.Adam(params, lr=lr, betas=(spec.get("b1", 0.9), 0.999))
        cls = optim.Lookahead if opt == "lookahead" else optim.Scout
        return cls(inner, **case["holocron"])
    cls = {
        "lars": optim.LARS,
        "lamb": optim.LAMB,
        "ralars": optim.RaLars,
        "tadam": optim.TAdam,
        "adabelief": optim.AdaBelief,
        "adamp": optim.AdamP,
        "adan": optim.Adan,
        "ademamix": optim.AdEMAMix,
    }[opt]
    return cls(params, **case["holocron"])


def run_case(
    optim: types.ModuleType, case: dict[str, Any], problem: dict[str, Any]
) -> dict[str, np.ndarray]:
    names = list(problem["params"])
    tensors = [
        torch.tensor(problem["params"][k], dtype=torch.float64, requires_grad=True) for k in names
    ]
    opt = holocron_optimizer(optim, case, tensors)
    traj = {k: [problem["params"][k].copy()] for k in names}
    for t in range(STEPS):
        for k, p in zip(names, tensors, strict=True):
            p.grad = torch.tensor(problem["grads"][k][t], dtype=torch.float64)
        opt.step()
        for k, p in zip(names, tensors, strict=True):
            traj[k].append(p.detach().numpy().copy())
    return {k: np.stack(v) for k, v in traj.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="tests/golden/holocron.npz")
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    optim = load_holocron_optim()
    problems = make_problems()
    # Scout's degenerate case: one element of `w` never gets a gradient.
    frozen = {
        "params": dict(problems["small"]["params"]),
        "grads": {k: v.copy() for k, v in problems["small"]["grads"].items()},
    }
    frozen["grads"]["w"][:, 0, 0] = 0.0
    problems["frozen"] = frozen

    arrays: dict[str, np.ndarray] = {}
    for pname, prob in problems.items():
        for k in prob["params"]:
            arrays[f"params/{pname}/{k}"] = prob["params"][k]
            arrays[f"grads/{pname}/{k}"] = prob["grads"][k]
    meta = cases()
    for case in meta:
        traj = run_case(optim, case, problems[case["problem"]])
        for k, v in traj.items():
            arrays[f"traj/{case['name']}/{k}"] = v
        finite = all(np.isfinite(v).all() for v in traj.values())
        print(f"{case['name']:28s} {case['kind']:20s} finite={finite}")
    arrays["__meta__"] = np.array(json.dumps({"steps": STEPS, "cases": meta}))
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    print(f"wrote {out} ({out.stat().st_size / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
