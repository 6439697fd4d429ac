"""``import lowrank_optax`` limits the BLAS behind jaxlib's CPU LAPACK to one thread.

The environment parsing is tested in-process; the effect is tested in fresh
interpreters (OpenBLAS reads its variables when it is loaded), in both import
orders, by reading the thread counts back with threadpoolctl.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from threadpoolctl import threadpool_info

from lowrank_optax._src import cpu_threads

CLEAN = {k: v for k, v in os.environ.items() if k not in cpu_threads.USER_BLAS_VARS}
CLEAN.pop(cpu_threads.ENV_VAR, None)

# Prints {path: num_threads} of every BLAS library after one SVD, and which one
# holds SciPy's LAPACK (the one jaxlib calls).
PROBE = textwrap.dedent(
    """
    import json, sys
    {first}
    import jax, jax.numpy as jnp
    jnp.linalg.svd(jnp.ones((8, 8))).S.block_until_ready()  # jaxlib loads its LAPACK
    from threadpoolctl import threadpool_info
    from lowrank_optax._src import cpu_threads
    libs = {{d["filepath"]: d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"}}
    numpy_dirs = cpu_threads._numpy_private_dirs()
    print(json.dumps({{"libs": libs, "applied": cpu_threads.applied,
                      "numpy": [p for p in libs if cpu_threads._is_under(p, numpy_dirs)]}}))
    """
)


def _probe(first: str, **env: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(first=first)],
        capture_output=True,
        text=True,
        env={**CLEAN, "JAX_PLATFORMS": "cpu", **env},
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, 1),
        ({"LOWRANK_OPTAX_BLAS_THREADS": "keep"}, None),
        ({"LOWRANK_OPTAX_BLAS_THREADS": "KEEP "}, None),
        ({"LOWRANK_OPTAX_BLAS_THREADS": "3"}, 3),
        ({"LOWRANK_OPTAX_BLAS_THREADS": "3", "OPENBLAS_NUM_THREADS": "2"}, 3),
        ({"LOWRANK_OPTAX_BLAS_THREADS": "zero"}, None),
        ({"LOWRANK_OPTAX_BLAS_THREADS": "0"}, None),
        ({"OPENBLAS_NUM_THREADS": "2"}, None),
        ({"OMP_NUM_THREADS": "4"}, None),
        ({"MKL_NUM_THREADS": "1"}, None),
        ({"OPENBLAS_NUM_THREADS": ""}, 1),  # set but empty: not a configuration
    ],
)
def test_requested_threads(environ, expected):
    threads, reason = cpu_threads.requested_threads(environ)
    assert threads == expected, reason


@pytest.mark.skipif(
    (os.cpu_count() or 1) < 2, reason="one core: OpenBLAS's default is already one thread"
)
@pytest.mark.parametrize("first", ["", "import scipy.linalg", "import lowrank_optax"])
def test_default_environment_limits_jaxlibs_lapack_in_any_import_order(first):
    # '': jax first, lowrank_optax imported by the probe after the SVD has loaded
    # LAPACK; 'import scipy.linalg': the user's SciPy loaded first.
    if first == "":
        first = "import jax.numpy as jnp; jnp.linalg.qr(jnp.ones((4, 4)))[0].block_until_ready()"
    first += "\nimport lowrank_optax"
    out = _probe(first)
    assert out["applied"]["threads"] == 1, out
    limited = out["applied"]["libraries"]
    assert limited, out
    for path, threads in out["libs"].items():
        if path in limited:
            assert threads == 1, out
    # NumPy's private OpenBLAS (pip wheels) keeps its own default (several threads).
    for path in out["numpy"]:
        assert path not in limited and out["libs"][path] > 1, out


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores to see a difference")
@pytest.mark.parametrize(
    ("env", "expected"),
    [({"LOWRANK_OPTAX_BLAS_THREADS": "keep"}, None), ({"OPENBLAS_NUM_THREADS": "2"}, None)],
)
def test_opt_out_and_user_setting_are_left_alone(env, expected):
    out = _probe("import lowrank_optax", **env)
    assert out["applied"]["threads"] is expected and not out["applied"]["libraries"], out
    assert all(n > 1 for n in out["libs"].values()), out  # nothing limited to one


def test_this_process_is_limited():
    # Importing cpu_threads imported lowrank_optax; its LAPACK library is single-threaded
    # here unless the environment running the tests configured BLAS threads.
    if cpu_threads.applied["threads"] is None:
        pytest.skip(f"not applied here: {cpu_threads.applied['reason']}")
    limited = set(cpu_threads.applied["libraries"])
    infos = [d for d in threadpool_info() if d["filepath"] in limited]
    assert infos and all(d["num_threads"] == cpu_threads.applied["threads"] for d in infos)
