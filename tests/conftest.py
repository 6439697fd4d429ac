"""Suite-wide settings.

Float32 products run at full precision on every backend. On GPU (TF32) and TPU
(bf16 passes) JAX's default float32 matmul keeps about 10 mantissa bits; the
parity tests compare trajectories with float32 references to ~1e-4 and would
measure that setting rather than the algorithms. The library's own basis
computations do not depend on it (they force ``Precision.HIGHEST``; see
``tests/test_linalg.py::FullPrecisionTest``). On CPU this changes nothing.

The suite compiles a few thousand small XLA programs and runs each for a few
steps, so on CPU its time is mostly LLVM's optimisation of generated code. The
suite therefore compiles with ``--xla_backend_optimization_level=0`` (about 25 %
less wall time; set before JAX starts its backend, inherited by the subprocesses
of the mesh suites, examples and doc blocks). It changes how fast the machine code
is: the HLO, XLA's fusion and buffer assignment (so every ``memory_analysis()``
figure a test checks) and the float semantics flags (no fast math) are those of
a default build. Results can differ from a default build in the last bits (LLVM
selects instructions differently, e.g. fused multiply-adds; 1e-6 on a 6-step
GaLore trajectory), well inside every tolerance here, and the suite passes at
both levels. Users and benchmarks keep XLA's default. To run the suite at the
default level, give ``XLA_FLAGS`` an ``--xla_backend_optimization_level`` of
your own (``=2`` is the default).
"""

import gc
import os

if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

import jax  # noqa: E402  (after XLA_FLAGS: the backend reads it when it starts)
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Collects garbage before a pytest-xdist worker reports that it has finished.

    Once a worker has sent "workerfinished" (at the end of its sessionfinish), the
    controller shuts it down and execnet gives it 5 s to finish before it sends the
    worker a SIGINT, which prints a stray ``KeyboardInterrupt`` traceback after a
    green run. What a worker still does then is mostly pytest's own cleanup: five
    full ``gc.collect()`` passes that free thousands of compiled XLA executables,
    2.8-5 s on a loaded 2-core machine. Collecting here, before the report, and
    freezing what survives leaves those passes almost nothing to do.
    """
    del session
    gc.collect()
    gc.freeze()


# Modules whose tests each run for tens of seconds (subprocesses, end-to-end
# examples, docs builds), longest first. pytest-xdist's load scheduler hands the
# first quarter of the items out round-robin, so putting these first spreads them
# over both workers; collected in place, several of them could end up on one
# worker at the end while the other sits idle. Tests marked ``slow`` join them.
LONG_FIRST = (
    "test_mesh.py",
    "test_train_lm.py",
    "test_examples_lrg.py",
    "test_fused.py",
    "test_doc_blocks.py",
    "test_docs.py",
    "test_examples_galore.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Runs the long modules first (stable: the order within a module is kept)."""
    del config

    def rank(item: pytest.Item) -> int:
        if item.path.name in LONG_FIRST:
            return LONG_FIRST.index(item.path.name)
        return len(LONG_FIRST) if item.get_closest_marker("slow") else len(LONG_FIRST) + 1

    items.sort(key=rank)
