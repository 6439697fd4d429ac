"""Checks that the conformance harness itself runs optax's bodies (on optax.adam)."""

import optax
from absl.testing import absltest
from conformance_utils import conformance_case


def _adam(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformation:
    return optax.adam(learning_rate)


_adam.__annotations__["learning_rate"] = optax.ScalarOrSchedule


class HarnessTest(conformance_case({"lowrank_ref_adam": (_adam, {"learning_rate": 1e-2})})):
    pass


if __name__ == "__main__":
    absltest.main()
