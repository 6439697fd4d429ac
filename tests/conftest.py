"""Suite-wide settings.

Float32 products run at full precision on every backend. On GPU (TF32) and TPU
(bf16 passes) JAX's default float32 matmul keeps about 10 mantissa bits; the
parity tests compare trajectories with float32 references to ~1e-4 and would
measure that setting rather than the algorithms. The library's own basis
computations do not depend on it (they force ``Precision.HIGHEST``; see
``tests/test_linalg.py::FullPrecisionTest``). On CPU this changes nothing.
"""

import jax

jax.config.update("jax_default_matmul_precision", "highest")
