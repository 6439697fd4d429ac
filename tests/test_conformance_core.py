"""optax's conformance bodies on every public transform of the subspace core.

The bodies come from ``optax/contrib/_common_test.py`` (see ``conformance_utils``).
Their targets are tiny (3-vectors, 2×2 matrices), so rank 2 is a full-rank
projection: these runs check API hygiene (jit, dtypes, ``MultiSteps``,
``inject_hyperparams``, extra args, no recompilation, schedules, convergence),
not the low-rank maths, which the other ``test_*`` files of the core check.

``rank`` and ``update_proj_gap`` are factory parameters so that the
``inject_hyperparams`` body lists them as static arguments, as a user must.
"""

import optax
from absl.testing import absltest
from conformance_utils import conformance_case

import lowrank_optax as lowrank


def _galore_adamw(
    learning_rate: optax.ScalarOrSchedule, rank: int = 2, update_proj_gap: int = 200
) -> optax.GradientTransformationExtraArgs:
    return lowrank.galore_adamw(learning_rate, rank=rank, update_proj_gap=update_proj_gap)


def _galore_wrapper(
    learning_rate: optax.ScalarOrSchedule, rank: int = 2, update_proj_gap: int = 200
) -> optax.GradientTransformationExtraArgs:
    return lowrank.galore(optax.adam(learning_rate), rank=rank, update_proj_gap=update_proj_gap)


def _galore_chain(
    learning_rate: optax.ScalarOrSchedule, rank: int = 2, update_proj_gap: int = 200
) -> optax.GradientTransformationExtraArgs:
    return optax.chain(
        lowrank.galore(rank=rank, update_proj_gap=update_proj_gap), optax.adam(learning_rate)
    )


def _project_lowrank_randomized(
    learning_rate: optax.ScalarOrSchedule, rank: int = 2, update_proj_gap: int = 200
) -> optax.GradientTransformationExtraArgs:
    return lowrank.project_lowrank(
        optax.adam(learning_rate),
        rank=rank,
        update_proj_gap=update_proj_gap,
        projector="randomized",
    )


def _adam_in_basis(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
    return optax.chain(
        lowrank.scale_by_adam_in_basis(), optax.scale_by_learning_rate(learning_rate)
    )


REGISTRY = {
    "lowrank_galore_adamw": (_galore_adamw, {"learning_rate": 1e-2, "rank": 2}),
    "lowrank_galore_wrapper": (_galore_wrapper, {"learning_rate": 1e-2, "rank": 2}),
    "lowrank_galore_chain": (_galore_chain, {"learning_rate": 1e-2, "rank": 2}),
    "lowrank_project_lowrank_randomized": (
        _project_lowrank_randomized,
        {"learning_rate": 1e-2, "rank": 2},
    ),
    "lowrank_scale_by_adam_in_basis": (_adam_in_basis, {"learning_rate": 1e-2}),
}


class CoreConformanceTest(conformance_case(REGISTRY)):
    pass


if __name__ == "__main__":
    absltest.main()
