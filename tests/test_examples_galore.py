"""The GaLore Flax examples run end to end on a tiny budget and reduce the loss."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclass-based Flax modules look it up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["galore_nnx", "galore_linen"])
def test_flax_example_trains(name, capsys):
    final = _load(name).main(["--steps", "30", "--rank", "4"])
    out = capsys.readouterr().out
    first = float(out.split("loss ")[1].split(" ->")[0])
    assert final < first
