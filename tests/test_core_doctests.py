"""The ``Examples:`` in the subspace-core docstrings print what the code computes.

The printed numbers were checked against a float64 numpy re-run of each example.
"""

import doctest
import importlib

import pytest

CORE_MODULES = (
    "subspace",
    "linalg",
    "basis_rotation",
    "adam_in_basis",
    "project_lowrank",
    "projectors",
    "galore",
    "weight_decay",
    "keras_extras",
)
# Modules whose public functions carry runnable examples.
WITH_EXAMPLES = {
    "adam_in_basis",
    "project_lowrank",
    "projectors",
    "galore",
    "weight_decay",
    "keras_extras",
}


@pytest.mark.parametrize("name", CORE_MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"lowrank_optax._src.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} doctest failure(s) in {module.__name__}"
    if name in WITH_EXAMPLES:
        assert result.attempted > 0
