"""optax's conformance bodies on the ten holocron-family transforms
(wrappers around an Adam inner), via tests/conformance_utils.py.

AdamP skips two bodies, for reasons of the algorithm itself, and gets
replacements in tests/test_holocron_transforms.py:

* ``test_optimizers``: holocron's AdamP projects the step onto the tangent space
  whenever the *signed* cosine between weights and gradient is below
  ``delta / sqrt(d)``; when the optimum needs the weight norm to grow (gradient
  anti-parallel to the weights) the radial step is removed and the iterate stops
  short of the target. holocron's torch AdamP stops at the same point on the
  parabola ([0.811, -0.81, 0.833] vs [1, -1, 1]) and at [[0.01, -0.01], [0.01,
  0.01]] on the matrix parabola.
* ``test_optimizers_can_be_wrapped_in_inject_hyperparams``: its params and
  gradients are exactly anti-parallel, so the projected step is pure rounding
  noise (the exact result is ~2 eps/||theta|| times the step) and the rtol-only
  comparison of two compilations of that noise is meaningless.
"""

import optax
from absl.testing import absltest
from conformance_utils import conformance_case
from optax.contrib import _common_test as ct

import lowrank_optax as lowrank


def _lookahead_adam(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformation:
    return lowrank.lookahead(optax.adam(learning_rate), sync_rate=0.5, sync_period=6)


def _scout_adam(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformation:
    return lowrank.scout(optax.adam(learning_rate), sync_rate=0.5, sync_period=6)


REGISTRY = {
    "lowrank_holocron_lars": (lowrank.lars, dict(learning_rate=1e-3, momentum=0.9)),
    "lowrank_holocron_lamb": (lowrank.lamb, dict(learning_rate=1e-3)),
    "lowrank_holocron_ralars": (lowrank.ralars, dict(learning_rate=1e-3)),
    "lowrank_holocron_tadam": (lowrank.tadam, dict(learning_rate=1e-2)),
    "lowrank_holocron_adabelief": (lowrank.adabelief, dict(learning_rate=1e-2)),
    "lowrank_holocron_adan": (lowrank.adan, dict(learning_rate=1e-2)),
    "lowrank_holocron_ademamix": (lowrank.ademamix, dict(learning_rate=1e-2)),
    "lowrank_holocron_lookahead": (_lookahead_adam, dict(learning_rate=1e-2)),
    "lowrank_holocron_scout": (_scout_adam, dict(learning_rate=1e-2)),
}


# The 1-D parabola (non-zero start: trust ratios active) and the mixed 1-D + 2-D
# target (zero start: zero-norm branches); the 2x2 parabola adds nothing the mixed
# target does not cover, and the suite's time budget is tight.
TARGETS = (ct._setup_parabola, ct._setup_mixed_tensor_target)


class HolocronConformanceTest(conformance_case(REGISTRY, targets=TARGETS)):
    pass


class AdampConformanceTest(
    conformance_case(
        {"lowrank_holocron_adamp": (lowrank.adamp, dict(learning_rate=1e-2))},
        skip=("test_optimizers", "test_optimizers_can_be_wrapped_in_inject_hyperparams"),
    )
):
    pass


if __name__ == "__main__":
    absltest.main()
