"""``examples/memory_table.py``: 8-bit and fused rows, measured without running anything."""

from __future__ import annotations

import json
import pathlib
import resource
import sys

import jax
from optax._src import test_utils

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))

import llama_lm as lm  # noqa: E402
import memory_table  # noqa: E402

import lowrank_optax as lowrank  # noqa: E402


def test_rows_on_the_paper_models_allocate_and_compile_nothing(tmp_path):
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    live = len(jax.live_arrays())
    with test_utils.log_compilations() as compiled:
        memory_table.main(["--configs", "llama_60m,llama_1b", "--json", str(tmp_path / "m.json")])
    assert not compiled and len(jax.live_arrays()) == live
    # The 1B model's float32 parameters alone are 5.4 GB.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 2**20

    rows = json.loads((tmp_path / "m.json").read_text())
    f32 = {(r["config"], r["optimizer"]): r for r in rows if r["dtype"] == "float32"}
    names = [row.name for row in memory_table.ROWS]
    assert {"adamw_8bit", "galore_adamw_8bit", "adamw_fused", "galore_fused"} <= set(names)
    assert "galore_8bit_fused" in names
    for config in ("llama_60m", "llama_1b"):
        m = {n: f32[(config, n)] for n in names}
        # 8-bit Adam: 1 byte per moment element plus a float32 scale per 256.
        assert m["adamw_8bit"]["state_bytes"] <= 0.27 * m["adamw"]["state_bytes"]
        # 8-bit GaLore: the moments at ~0.254x, the bases as they were.
        galore_moments = m["galore_adamw"]["state_bytes"] - m["galore_adamw"]["basis_bytes"]
        moments_8bit = m["galore_adamw_8bit"]["state_bytes"] - m["galore_adamw_8bit"]["basis_bytes"]
        assert moments_8bit <= 0.3 * galore_moments
        assert m["galore_adamw_8bit"]["basis_bytes"] == m["galore_adamw"]["basis_bytes"]
        # Fused rows: one layer of the block's gradient, as fused_gradient_bytes says.
        params = lm.abstract_params(lm.CONFIGS[config])
        for name in ("adamw_fused", "galore_fused", "galore_8bit_fused"):
            assert m[name]["fused"] and m[name]["grads_bytes"] == lowrank.fused_gradient_bytes(
                params
            )
        assert m["adamw"]["grads_bytes"] == m["adamw"]["params_bytes"]
        # The fused step's state: the unfused one plus per-layer counters and keys.
        for fused, plain in (("adamw_fused", "adamw"), ("galore_fused", "galore_adamw")):
            extra = m[fused]["state_bytes"] - m[plain]["state_bytes"]
            assert 0 < extra < 1024
        full_recipe = m["galore_8bit_fused"]["total_bytes"]
        assert full_recipe < m["galore_fused"]["total_bytes"] < m["galore_adamw"]["total_bytes"]
