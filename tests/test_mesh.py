"""Runs the multi-device suites in ``tests/mesh/`` on 8 simulated CPU devices.

``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before JAX is
imported, so each ``tests/mesh/mesh_*.py`` file runs in its own pytest
subprocess. A failure shows the subprocess's report.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

MESH_DIR = pathlib.Path(__file__).resolve().parent / "mesh"
SUITES = sorted(p.name for p in MESH_DIR.glob("mesh_*.py"))
SIMULATED_DEVICE_FLAGS = (
    "--xla_force_host_platform_device_count=8",
    "--xla_cpu_collective_call_terminate_timeout_seconds=600",
    "--xla_cpu_collective_timeout_seconds=600",
    "--xla_cpu_collective_call_warn_stuck_timeout_seconds=120",
)


@pytest.mark.parametrize("suite", SUITES)
def test_mesh_suite(suite: str) -> None:
    env = dict(os.environ)
    # Simulated devices share the host's threads; on a loaded 2-core machine a
    # collective can wait longer than XLA's default 40 s before aborting.
    flags = " ".join(SIMULATED_DEVICE_FLAGS)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
    env["LOWRANK_MESH_SUBPROCESS"] = "1"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            str(MESH_DIR / suite),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=MESH_DIR.parent.parent,
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]
    assert " passed" in result.stdout, result.stdout[-2000:]
