"""The ``Examples:`` in the LORENZA docstrings run and print what the code computes."""

import doctest
import importlib

import pytest


@pytest.mark.parametrize("name", ["lorenza", "loss_closures"])
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"lowrank_optax._src.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} doctest failure(s) in {module.__name__}"
    assert result.attempted > 0
