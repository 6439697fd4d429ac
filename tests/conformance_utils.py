"""Reuse of optax's own conformance test bodies for lowrank_optax transforms.

optax ships ``optax/contrib/_common_test.py`` inside its wheel. Its
``ContribTest`` methods are decorated with ``parameterized.product`` over optax's
own optimizers; ``inspect.unwrap`` returns the undecorated bodies, which we
re-parametrise over our own registry. The bodies look optimizers up through the
module-global ``_get_opt_factory``; we patch it to read our registry. Nothing
from optax is copied: the test logic runs from the installed optax 0.2.8.

Usage from a family's test module::

    from conformance_utils import conformance_case

    REGISTRY = {"lowrank_lamb": (lowrank.lamb, {"learning_rate": 1e-2})}

    class LambConformanceTest(conformance_case(REGISTRY)):
        pass

Registry names must start with ``lowrank_`` so they never collide with the names
that the bodies special-case (``'sgd'``, ``'galore'``, ``'momo'``, ...).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any
from unittest import mock

import jax.numpy as jnp
from absl.testing import parameterized
from optax.contrib import _common_test as ct


def _raw(name: str) -> Callable[..., Any]:
    return inspect.unwrap(getattr(ct.ContribTest, name + "0"))


TARGETS = (ct._setup_parabola, ct._setup_matrix_parabola, ct._setup_mixed_tensor_target)


def conformance_case(
    registry: Mapping[str, tuple[Callable[..., Any], dict[str, Any]]],
    *,
    targets: tuple[Callable[..., Any], ...] = TARGETS,
    skip: tuple[str, ...] = (),
) -> type[parameterized.TestCase]:
    """Builds a ``TestCase`` class running optax's conformance bodies on ``registry``.

    Args:
      registry: maps a name (prefixed ``lowrank_``) to ``(factory, kwargs)``.
      targets: objective set-ups for ``test_optimizers``.
      skip: names of conformance bodies not to run (each skip must be justified
        by the caller).

    Returns:
      A ``parameterized.TestCase`` subclass; subclass it in a test module.
    """
    for name in registry:
        if not name.startswith("lowrank_"):
            raise ValueError(f"registry names must start with 'lowrank_', got {name!r}")
    factories = {name: factory for name, (factory, _) in registry.items()}
    cases = [
        dict(opt_name=name, opt_kwargs=dict(kwargs), wrapper_name=None, wrapper_kwargs=None)
        for name, (_, kwargs) in registry.items()
    ]
    main_cases = [dict(opt_name=c["opt_name"], opt_kwargs=c["opt_kwargs"]) for c in cases]

    def setUp(self: parameterized.TestCase) -> None:
        parameterized.TestCase.setUp(self)
        patcher = mock.patch.object(ct, "_get_opt_factory", factories.__getitem__)
        patcher.start()
        self.addCleanup(patcher.stop)

    bodies: dict[str, Callable[..., Any]] = {
        "test_optimizers": parameterized.product(cases, target=targets, dtype=("float32",))(
            _raw("test_optimizers")
        ),
        "test_optimizers_accept_extra_args": parameterized.product(cases, wrap=(False,))(
            _raw("test_optimizers_accept_extra_args")
        ),
        "test_optimizers_can_be_wrapped_in_inject_hyperparams": parameterized.product(main_cases)(
            _raw("test_optimizers_can_be_wrapped_in_inject_hyperparams")
        ),
        "test_preserve_dtype": parameterized.product(main_cases, dtype=("bfloat16", "float32"))(
            _raw("test_preserve_dtype")
        ),
        "test_gradient_accumulation": parameterized.product(
            main_cases, dtype=("bfloat16", "float32")
        )(_raw("test_gradient_accumulation")),
        "test_state_shape_dtype_shard_stability": parameterized.product(
            cases, dtype=(jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)
        )(_raw("test_state_shape_dtype_shard_stability")),
        "test_optimizers_accept_learning_rate_schedule_if_type_annotated_as_such": (
            parameterized.product(cases)(
                _raw("test_optimizers_accept_learning_rate_schedule_if_type_annotated_as_such")
            )
        ),
    }
    namespace: dict[str, Any] = {"setUp": setUp}
    namespace.update({name: body for name, body in bodies.items() if name not in skip})
    # parameterized.TestCase expands the decorated bodies when the class is created.
    return type("Conformance", (parameterized.TestCase,), namespace)
