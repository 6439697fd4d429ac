"""Suite-wide settings.

Float32 products run at full precision on every backend. On GPU (TF32) and TPU
(bf16 passes) JAX's default float32 matmul keeps about 10 mantissa bits; the
parity tests compare trajectories with float32 references to ~1e-4 and would
measure that setting rather than the algorithms. The library's own basis
computations do not depend on it (they force ``Precision.HIGHEST``; see
``tests/test_linalg.py::FullPrecisionTest``). On CPU this changes nothing.
"""

import gc

import jax
import pytest

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
