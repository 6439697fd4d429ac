"""optax's own conformance bodies run on ``lowrank.lre`` (recommended configuration).

The configuration is the default (covariance curvature, GGT basis, Adam → cautious →
normalised EMA norm clip) except ``history_size=10`` instead of 100: the targets have
at most a handful of parameters, so the history only changes the cost of the 30k-step
convergence runs, not what they check.
"""

import optax
from absl.testing import absltest
from conformance_utils import conformance_case

import lowrank_optax as lowrank


def _lre(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
    return lowrank.lre(learning_rate, basis=lowrank.bases.ggt(history_size=10))


class LreConformanceTest(conformance_case({"lowrank_lre": (_lre, {"learning_rate": 1e-2})})):
    pass


if __name__ == "__main__":
    absltest.main()
