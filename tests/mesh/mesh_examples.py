"""The sharded-mesh example runs on 8 simulated devices (via tests/test_mesh.py)."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import jax
import pytest

if jax.device_count() != 8:  # pragma: no cover - guarded by test_mesh.py
    pytest.skip("needs 8 simulated devices", allow_module_level=True)

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "galore_sharded_mesh.py"


def test_sharded_mesh_example(capsys):
    spec = importlib.util.spec_from_file_location("galore_sharded_mesh", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclass-based Flax modules look it up
    spec.loader.exec_module(module)
    loss = module.main(["--steps", "20", "--rank", "4"])
    out = capsys.readouterr().out
    assert "w1: param float32[64,256@model]  low-rank moment float32[4,256@model]" in out
    assert "w2: param float32[256@model,16]  low-rank moment float32[256@model,4]" in out
    assert loss < 0.5
