"""Parity with holocron.optim (pylocron 0.3.0) where its code matches its docs.

Golden trajectories come from ``scripts/make_holocron_golden.py`` (holocron run
in float64 on pre-drawn gradients); the ports must follow them within 1e-10.
"""

import jax
import numpy as np
import pytest
from holocron_golden import cases, port, problem, run, trajectory

PARITY = cases("parity")


def test_golden_covers_every_optimizer_twice() -> None:
    counts: dict[str, int] = {}
    for c in PARITY:
        counts[c["optimizer"]] = counts.get(c["optimizer"], 0) + 1
    expected = {
        "lars",
        "lamb",
        "ralars",
        "tadam",
        "adabelief",
        "adamp",
        "ademamix",
        "lookahead",
        "scout",
    }
    assert set(counts) == expected
    assert min(counts.values()) >= 2


@pytest.mark.parametrize("case", PARITY, ids=[c["name"] for c in PARITY])
def test_matches_holocron(case: dict) -> None:
    params, grads = problem(case["problem"])
    expected = trajectory(case["name"])
    with jax.enable_x64(True):
        got = run(port(case), params, grads, len(next(iter(grads.values()))))
    for leaf, traj in expected.items():
        assert traj.shape[0] >= 26  # >= 25 steps
        np.testing.assert_allclose(got[leaf], traj, rtol=0, atol=1e-10, err_msg=leaf)
