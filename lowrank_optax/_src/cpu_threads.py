"""One thread for the BLAS library behind jaxlib's CPU LAPACK kernels.

jaxlib runs its CPU decompositions (SVD, eigh, QR, Cholesky, triangular solves)
through the LAPACK that SciPy exports (``scipy.linalg.cython_lapack``): on a pip
install, the OpenBLAS bundled in SciPy's wheel. That library is loaded the first
time a decomposition is lowered (or when the user imports :mod:`scipy.linalg`).
Its thread pool defaults to one worker per core, and its workers busy-wait for a
while after every call before they sleep. XLA already drives every core with its
own thread pool, and the library's optimizers call LAPACK every step (LRG-Adam)
or every refresh (GaLore, LRE), so the idle OpenBLAS workers spin against XLA's
threads: on a loaded 2-core machine a step that takes 5 ms took 70 ms.

On ``import lowrank_optax`` (which imports this module first)
:func:`configure_from_environment` therefore loads
``scipy.linalg.cython_lapack`` (the module jaxlib loads anyway at the first
decomposition) and limits that BLAS library to one thread with threadpoolctl,
unless the user configured BLAS threads: any of ``OPENBLAS_NUM_THREADS``,
``GOTO_NUM_THREADS``, ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` or
``BLIS_NUM_THREADS`` set, or the library's own variable ``LOWRANK_OPTAX_BLAS_THREADS``
(``keep``: leave every pool alone; a positive integer: use that many threads). It
works whatever was imported first: the limit acts on the loaded library, and
loading it here means jaxlib finds it already limited.

NumPy's own BLAS is left alone when it is a separate library (pip wheels bundle a
private 64-bit OpenBLAS in ``numpy.libs``), so ``numpy`` matrix products keep
every core; SciPy's ``scipy.linalg`` routines run single-threaded. Where NumPy
and SciPy share one system BLAS (conda, distribution packages), that library is
limited for both; ``LOWRANK_OPTAX_BLAS_THREADS=keep`` restores the old behaviour.
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Mapping
from typing import Any

ENV_VAR = "LOWRANK_OPTAX_BLAS_THREADS"
KEEP = "keep"
# Variables OpenBLAS, MKL and BLIS read at load time: if the user set one, the
# thread count is theirs and the library does not touch it.
USER_BLAS_VARS = (
    "OPENBLAS_NUM_THREADS",
    "GOTO_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
)

_LOG = logging.getLogger(__name__)

# What the import did: ``{"threads": n or None, "reason": str, "libraries": [paths]}``.
applied: dict[str, Any] = {"threads": None, "reason": "not run", "libraries": []}


def requested_threads(environ: Mapping[str, str] | None = None) -> tuple[int | None, str]:
    """The BLAS thread count to set at import (``None``: leave it) and why.

    Args:
      environ: the environment to read (default :data:`os.environ`).

    Returns:
      ``(threads, reason)``: ``(n, ...)`` when ``LOWRANK_OPTAX_BLAS_THREADS=n``;
      ``(None, ...)`` when it is ``keep`` or when the user set one of
      :data:`USER_BLAS_VARS`; ``(1, "default")`` otherwise. An unreadable value of
      ``LOWRANK_OPTAX_BLAS_THREADS`` is treated as ``keep`` (and logged).
    """
    environ = os.environ if environ is None else environ
    value = environ.get(ENV_VAR, "").strip()
    if value:
        if value.lower() == KEEP:
            return None, f"{ENV_VAR}={value}"
        if value.isdigit() and int(value) >= 1:
            return int(value), f"{ENV_VAR}={value}"
        _LOG.warning("%s=%r is neither 'keep' nor an integer >= 1; left unchanged", ENV_VAR, value)
        return None, f"{ENV_VAR}={value!r} (unreadable)"
    for name in USER_BLAS_VARS:
        if environ.get(name, "").strip():
            return None, f"{name} set by the user"
    return 1, "default"


def _numpy_private_dirs() -> tuple[pathlib.Path, ...]:
    """Directories holding NumPy's own bundled BLAS (``numpy.libs``, ``numpy/.dylibs``)."""
    import numpy

    package = pathlib.Path(numpy.__file__).resolve().parent
    return (package, package.parent / "numpy.libs")


def _is_under(path: str, dirs: tuple[pathlib.Path, ...]) -> bool:
    resolved = pathlib.Path(path).resolve()
    return any(resolved.is_relative_to(d) for d in dirs)


def limit_lapack_threads(threads: int) -> list[str]:
    """Limits the BLAS library behind jaxlib's CPU LAPACK to ``threads`` threads.

    Loads ``scipy.linalg.cython_lapack`` (the module jaxlib takes its LAPACK from)
    and sets the thread count of every loaded BLAS library except a copy private
    to NumPy. Returns the paths of the libraries limited.
    """
    import scipy.linalg.cython_lapack  # noqa: F401  (loads the library jaxlib will call)
    from threadpoolctl import ThreadpoolController

    numpy_dirs = _numpy_private_dirs()
    controller = ThreadpoolController().select(user_api="blas")
    paths = [
        lib.filepath
        for lib in controller.lib_controllers
        if not _is_under(lib.filepath, numpy_dirs)
    ]
    if paths:
        controller.select(filepath=paths).limit(limits=threads)
    return paths


def configure_from_environment(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Applies :func:`requested_threads` once (called by ``import lowrank_optax``).

    Never raises: without SciPy or threadpoolctl nothing is changed and the reason
    is recorded in :data:`applied`.
    """
    threads, reason = requested_threads(environ)
    libraries: list[str] = []
    if threads is not None:
        try:
            libraries = limit_lapack_threads(threads)
        except Exception as exc:  # an import must not fail over a speed setting
            _LOG.debug("BLAS thread limit not applied: %s", exc)
            threads, reason = None, f"not applied ({type(exc).__name__}: {exc})"
    applied.update(threads=threads, reason=reason, libraries=libraries)
    return applied


# Importing this module (``import lowrank_optax`` does, first) applies the setting.
configure_from_environment()
