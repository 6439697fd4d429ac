"""The ``Examples:`` in the LRE docstrings run and print what the code computes.

The hand-checkable ones (inner optimizers' first steps) were checked by hand; the two
5-step optimisation examples print the same value to 2 decimals in float64.
"""

import doctest
import importlib

import pytest

MODULES = ("curvatures", "bases", "inner", "driver")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"lowrank_optax._src.lre.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} doctest failure(s) in {module.__name__}"
    assert result.attempted > 0
