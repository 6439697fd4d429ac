"""Memory of the GaLore paper's LLaMA 60M / 130M / 350M / 1B models, measured without allocating.

For each configuration (``llama_lm.CONFIGS``, the shapes of
``jiaweizzhao/GaLore`` ``configs/llama_*.json``) and each optimizer row, the
parameters, gradients and optimizer state are counted by
:func:`lowrank.memory_report` on abstract parameters (``jax.eval_shape``:
nothing is allocated, so the 1B model costs nothing). GaLore runs at the paper's
ranks (128 / 256 / 256 / 512) on the attention and MLP matrices (one basis per
layer: the stacked layer axis is a batch axis); embedding, head and norms get
full-size Adam, as in the paper.

Two tables are printed:

1. float32 parameters: params, gradients, optimizer state and their total (GiB);
2. the paper's convention (Table 2 of arXiv 2403.03507: "a memory estimate of
   the total of parameters and optimizer states based on BF16 format"):
   bfloat16 parameters and state, params + state, next to the paper's numbers.

Rows are one list, :data:`ROWS`: a :class:`Row` is a name and a factory
``make(params, rank) -> optax.GradientTransformation``. To add a row (an 8-bit
or fused-update variant, say), append ``Row('name', factory)``; a row whose
full gradient never exists (an optimizer fused into the backward pass) sets
``grads=lambda report: bytes_that_do_exist``.

Run::

    python examples/memory_table.py [--configs llama_60m,llama_1b] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import llama_lm as lm  # noqa: E402

import lowrank_optax as lowrank  # noqa: E402

GIB = 2**30

# GaLore paper, Table 2 (arXiv 2403.03507v2): memory estimate (GB, "G") of
# parameters + optimizer states in BF16, for the Full-Rank (AdamW) and GaLore rows.
PAPER_TABLE2 = {
    "adamw": {"llama_60m": 0.36, "llama_130m": 0.76, "llama_350m": 2.06, "llama_1b": 7.80},
    "galore_adamw": {"llama_60m": 0.24, "llama_130m": 0.52, "llama_350m": 1.22, "llama_1b": 4.38},
}


@dataclasses.dataclass(frozen=True)
class Row:
    """One optimizer of the table.

    Attributes:
      name: label printed in the table.
      make: ``make(params, rank)`` returns the transformation for (abstract)
        ``params`` at GaLore rank ``rank``.
      grads: optional ``grads(report) -> int``, the gradient bytes that exist
        at once (default: the report's ``grads_bytes``, one full gradient).
    """

    name: str
    make: Callable[[Any, int], optax.GradientTransformation]
    grads: Callable[[dict[str, Any]], int] | None = None


ROWS: list[Row] = [
    Row("adamw", lambda params, rank: optax.adamw(1e-3)),
    Row(
        "galore_adamw",
        lambda params, rank: lowrank.galore_adamw(
            1e-2, rank=rank, scale=0.25, dimension_numbers=lm.dimension_numbers(params)
        ),
    ),
    Row(
        "lorenza",
        lambda params, rank: lowrank.lorenza(
            1e-2, rank=rank, scale=0.25, dimension_numbers=lm.dimension_numbers(params)
        ),
    ),
]


def basis_bytes(report: dict[str, Any]) -> int:
    """Bytes of the projection bases (``ProjectLowrankState.bases``) in a report."""
    return sum(r["bytes"] for r in report["leaves"]["state"] if ".bases[" in r["path"])


def measure(config_name: str, row: Row, dtype: Any = jnp.float32) -> dict[str, Any]:
    """Bytes of ``row`` on ``config_name``'s abstract parameters in ``dtype``."""
    params = lm.abstract_params(lm.CONFIGS[config_name], dtype)
    rank = lm.PAPER_RANKS[config_name]
    report = lowrank.memory_report(row.make(params, rank), params)
    grads = row.grads(report) if row.grads else report["grads_bytes"]
    return {
        "config": config_name,
        "optimizer": row.name,
        "dtype": jnp.dtype(dtype).name,
        "rank": rank,
        "num_params": report["num_params"],
        "params_bytes": report["params_bytes"],
        "grads_bytes": grads,
        "state_bytes": report["state_bytes"],
        "basis_bytes": basis_bytes(report),
        "total_bytes": report["params_bytes"] + grads + report["state_bytes"],
    }


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=",".join(lm.PAPER_RANKS))
    ap.add_argument("--rows", default=None, help="comma-separated row names (default: all)")
    ap.add_argument("--json", default=None, help="write the measurements here")
    args = ap.parse_args(argv)
    configs = args.configs.split(",")
    rows = [r for r in ROWS if args.rows is None or r.name in args.rows.split(",")]
    out: list[dict[str, Any]] = []

    print("float32 parameters: GiB (2^30 bytes), measured by lowrank.memory_report")
    print(
        f"{'model':<11}{'optimizer':<15}{'params':>8}{'grads':>8}{'state':>8}{'total':>8}"
        f"{'state/AdamW':>13}"
    )
    for c in configs:
        adam_state = None
        for row in rows:
            m = measure(c, row)
            out.append(m)
            adam_state = m["state_bytes"] if row.name == "adamw" else adam_state
            ratio = f"{m['state_bytes'] / adam_state:.3f}" if adam_state else "-"
            print(
                f"{c:<11}{row.name:<15}{m['params_bytes'] / GIB:>8.3f}"
                f"{m['grads_bytes'] / GIB:>8.3f}{m['state_bytes'] / GIB:>8.3f}"
                f"{m['total_bytes'] / GIB:>8.3f}{ratio:>13}"
            )

    print()
    print("paper's convention (Table 2): bfloat16 params + optimizer state, GiB")
    print(
        f"{'model':<11}{'optimizer':<15}{'measured':>10}{'no bases':>10}{'paper':>8}"
        f"{'measured/paper':>16}"
    )
    for c in configs:
        for row in rows:
            m = measure(c, row, jnp.bfloat16)
            out.append(m)
            total = (m["params_bytes"] + m["state_bytes"]) / GIB
            no_bases = total - m["basis_bytes"] / GIB
            paper = PAPER_TABLE2.get(row.name, {}).get(c)
            paper_s = f"{paper:.2f}" if paper else "-"
            ratio = f"{total / paper:.3f}" if paper else "-"
            print(f"{c:<11}{row.name:<15}{total:>10.3f}{no_bases:>10.3f}{paper_s:>8}{ratio:>16}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
