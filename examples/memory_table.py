"""Memory of the GaLore paper's LLaMA 60M / 130M / 350M / 1B models, measured without allocating.

For each configuration (``llama_lm.CONFIGS``, the shapes of
``jiaweizzhao/GaLore`` ``configs/llama_*.json``) and each optimizer row, the
parameters, gradients and optimizer state are counted by
:func:`lowrank.memory_report` on abstract parameters (``jax.eval_shape``:
nothing is allocated, so the 1B model costs nothing). GaLore runs at the paper's
ranks (128 / 256 / 256 / 512) on the attention and MLP matrices (one basis per
layer: the stacked layer axis is a batch axis); embedding, head and norms get
full-size Adam, as in the paper.

The rows: AdamW, 8-bit AdamW (``quantize_state(optax.adamw(...))``),
``galore_adamw``, 8-bit GaLore (``galore_adamw(..., state_bits=8)``),
``lorenza``, and three fused-update variants (the optimizer of every stacked
layer runs inside the backward scan, :func:`lowrank.fused_layers`, so one
layer's gradient of the block exists at a time; the embedding, final norm and
head are updated afterwards): AdamW fused, GaLore fused, and 8-bit GaLore fused
with 8-bit AdamW for the other parameters, the paper's full recipe (8-bit GaLore
with per-layer weight updates). A fused row's state is the fused step's own
(:class:`lowrank.FusedTrainStep`'s ``init``) and its gradient is counted with
``memory_report(..., fused_blocks='blocks')``.

Three tables are printed:

1. float32 parameters: params, gradients, optimizer state and their total (GiB);
2. the paper's convention (Table 2 of arXiv 2403.03507: "a memory estimate of
   the total of parameters and optimizer states based on BF16 format"):
   bfloat16 parameters and state, params + state, next to the paper's numbers;
3. with ``--configs ...,llama_7b`` (LLaMA 7B, GaLore rank 1024, not a default
   config): the optimizer-state and total reductions next to the paper's
   abstract (GaLore: up to 65.5 % of the optimizer state; 8-bit GaLore: up to
   82.5 %, and 63.3 % of the total training memory, against a BF16 baseline),
   and the 8-bit states next to APOLLO's reported 7B figures (arXiv
   2412.05270: 8-bit Adam 13G, 8-bit GaLore 4.9G).

Rows are one list, :data:`ROWS`: a :class:`Row` is a name and a factory
``make(params, rank)`` returning an ``optax.GradientTransformation`` (or, for a
fused row, ``fused=True`` and a :class:`lowrank.FusedTrainStep`). To add a row,
append ``Row('name', factory)``.

Run::

    python examples/memory_table.py [--configs llama_60m,llama_1b] [--json out.json]
    python examples/memory_table.py --configs llama_7b --rows adamw_8bit,galore_adamw_8bit
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

import fused_update_lm  # noqa: E402
import llama_lm as lm  # noqa: E402

import lowrank_optax as lowrank  # noqa: E402

GIB = 2**30

# GaLore paper, Table 2 (arXiv 2403.03507v2): memory estimate (GB, "G") of
# parameters + optimizer states in BF16, for the Full-Rank (AdamW) and GaLore rows.
PAPER_TABLE2 = {
    "adamw": {"llama_60m": 0.36, "llama_130m": 0.76, "llama_350m": 2.06, "llama_1b": 7.80},
    "galore_adamw": {"llama_60m": 0.24, "llama_130m": 0.52, "llama_350m": 1.22, "llama_1b": 4.38},
}
# LLaMA 7B (d 4096, 32 layers, 32 heads, MLP 11008) at GaLore's 7B rank 1024; APOLLO
# (arXiv 2412.05270, its 7B pre-training comparison, 150K steps) reports the optimizer
# state memory ("G") of 8-bit Adam and 8-bit GaLore.
LLAMA_7B = lm.LlamaConfig(32000, 4096, 32, 32, 11008, seq_len=256)
CONFIGS = {**lm.CONFIGS, "llama_7b": LLAMA_7B}
RANKS = {**lm.PAPER_RANKS, "llama_7b": 1024}
APOLLO_7B_STATE = {"adamw_8bit": 13.0, "galore_adamw_8bit": 4.9}


@dataclasses.dataclass(frozen=True)
class Row:
    """One optimizer of the table.

    Attributes:
      name: label printed in the table.
      make: ``make(params, rank)`` returns the transformation for (abstract)
        ``params`` at GaLore rank ``rank``; with ``fused=True`` it returns the
        :class:`lowrank.FusedTrainStep` of a step whose stacked block
        ``params['blocks']`` is updated inside the backward pass.
      fused: whether the block's gradient exists one layer at a time (counted
        with ``memory_report(..., fused_blocks='blocks')``).
    """

    name: str
    make: Callable[[Any, int], Any]
    fused: bool = False


def _galore(params: Any, rank: int, **kw: Any) -> optax.GradientTransformation:
    dims = lm.dimension_numbers(params)
    return lowrank.galore_adamw(1e-2, rank=rank, scale=0.25, dimension_numbers=dims, **kw)


def _fused(layer_tx: optax.GradientTransformation, rest_tx: optax.GradientTransformation) -> Any:
    """The fused step of ``examples/fused_update_lm.py``: ``layer_tx`` per layer in the
    backward scan, ``rest_tx`` for the embedding, final norm and head.

    ``check_leafwise=False``: the leaf-wise probe would run small computations, and
    this script runs none (the fused tests check these transformations).
    """
    layers = lowrank.fused_layers(fused_update_lm.layer, layer_tx, check_leafwise=False)
    return lowrank.fused_train_step(fused_update_lm.loss_fn, layers, rest_tx)


def _layer_galore(rank: int, **kw: Any) -> optax.GradientTransformation:
    dims = lm.layer_dimension_numbers()  # one layer's leaves: no layer axis
    return lowrank.galore_adamw(1e-2, rank=rank, scale=0.25, dimension_numbers=dims, **kw)


ROWS: list[Row] = [
    Row("adamw", lambda params, rank: optax.adamw(1e-3)),
    Row("adamw_8bit", lambda params, rank: lowrank.quantize_state(optax.adamw(1e-3))),
    Row("galore_adamw", lambda params, rank: _galore(params, rank)),
    Row("galore_adamw_8bit", lambda params, rank: _galore(params, rank, state_bits=8)),
    Row(
        "lorenza",
        lambda params, rank: lowrank.lorenza(
            1e-2, rank=rank, scale=0.25, dimension_numbers=lm.dimension_numbers(params)
        ),
    ),
    Row("adamw_fused", lambda params, rank: _fused(optax.adamw(1e-3), optax.adamw(1e-3)), True),
    Row(
        "galore_fused",
        lambda params, rank: _fused(_layer_galore(rank), optax.adamw(1e-3)),
        True,
    ),
    Row(
        "galore_8bit_fused",
        lambda params, rank: _fused(
            _layer_galore(rank, state_bits=8), lowrank.quantize_state(optax.adamw(1e-3))
        ),
        True,
    ),
]


def basis_bytes(report: dict[str, Any]) -> int:
    """Bytes of the projection bases (``ProjectLowrankState.bases``) in a report."""
    return sum(r["bytes"] for r in report["leaves"]["state"] if ".bases[" in r["path"])


def measure(config_name: str, row: Row, dtype: Any = jnp.float32) -> dict[str, Any]:
    """Bytes of ``row`` on ``config_name``'s abstract parameters in ``dtype``."""
    params = lm.abstract_params(CONFIGS[config_name], dtype)
    rank = RANKS[config_name]
    report = lowrank.memory_report(
        row.make(params, rank), params, fused_blocks="blocks" if row.fused else None
    )
    return {
        "config": config_name,
        "optimizer": row.name,
        "dtype": jnp.dtype(dtype).name,
        "rank": rank,
        "fused": row.fused,
        "num_params": report["num_params"],
        "params_bytes": report["params_bytes"],
        "grads_bytes": report["grads_bytes"],
        "state_bytes": report["state_bytes"],
        "basis_bytes": basis_bytes(report),
        "total_bytes": report["total_bytes"],
    }


def print_7b_anchors(m: dict[str, dict[str, Any]]) -> None:
    """LLaMA 7B (bfloat16) against the GaLore paper's and APOLLO's 7B memory figures."""
    print()
    print("LLaMA 7B, bfloat16: measured vs reported (GaLore abstract; APOLLO's 7B table)")
    state = {n: r["state_bytes"] for n, r in m.items()}
    bases = {n: r["basis_bytes"] for n, r in m.items()}
    if "adamw" in m:
        for name, paper in (("galore_adamw", 65.5), ("galore_adamw_8bit", 82.5)):
            if name in m:
                cut = 100 * (1 - state[name] / state["adamw"])
                cut_nb = 100 * (1 - (state[name] - bases[name]) / state["adamw"])
                print(
                    f"  {name:<19} optimizer state -{cut:.1f} % vs AdamW (-{cut_nb:.1f} % "
                    f"without bases); paper: up to -{paper} %"
                )
        if "galore_8bit_fused" in m:
            cut = 100 * (1 - m["galore_8bit_fused"]["total_bytes"] / m["adamw"]["total_bytes"])
            print(
                f"  {'galore_8bit_fused':<19} params + grads + state -{cut:.1f} % vs AdamW; "
                "paper: total training memory -63.3 % (measured, with activations)"
            )
    for name, apollo in APOLLO_7B_STATE.items():
        if name in m:
            print(
                f"  {name:<19} optimizer state {state[name] / 1e9:.2f} GB = "
                f"{state[name] / GIB:.2f} GiB ({(state[name] - bases[name]) / 1e9:.2f} GB "
                f"without bases); APOLLO: {apollo}G"
            )


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=",".join(lm.PAPER_RANKS), help=",".join(CONFIGS))
    ap.add_argument("--rows", default=None, help="comma-separated row names (default: all)")
    ap.add_argument("--json", default=None, help="write the measurements here")
    args = ap.parse_args(argv)
    configs = args.configs.split(",")
    rows = [r for r in ROWS if args.rows is None or r.name in args.rows.split(",")]
    out: list[dict[str, Any]] = []

    print("float32 parameters: GiB (2^30 bytes), measured by lowrank.memory_report")
    print(
        f"{'model':<11}{'optimizer':<19}{'params':>8}{'grads':>8}{'state':>8}{'total':>8}"
        f"{'state/AdamW':>13}{'total/AdamW':>13}"
    )
    for c in configs:
        adam = None
        for row in rows:
            m = measure(c, row)
            out.append(m)
            adam = m if row.name == "adamw" else adam
            state = f"{m['state_bytes'] / adam['state_bytes']:.3f}" if adam else "-"
            total = f"{m['total_bytes'] / adam['total_bytes']:.3f}" if adam else "-"
            print(
                f"{c:<11}{row.name:<19}{m['params_bytes'] / GIB:>8.3f}"
                f"{m['grads_bytes'] / GIB:>8.3f}{m['state_bytes'] / GIB:>8.3f}"
                f"{m['total_bytes'] / GIB:>8.3f}{state:>13}{total:>13}"
            )

    print()
    print("paper's convention (Table 2): bfloat16 params + optimizer state, GiB")
    print(
        f"{'model':<11}{'optimizer':<19}{'measured':>10}{'no bases':>10}{'paper':>8}"
        f"{'measured/paper':>16}{'+ grads':>9}"
    )
    bf16: dict[tuple[str, str], dict[str, Any]] = {}
    for c in configs:
        for row in rows:
            m = measure(c, row, jnp.bfloat16)
            out.append(m)
            bf16[(c, row.name)] = m
            total = (m["params_bytes"] + m["state_bytes"]) / GIB
            no_bases = total - m["basis_bytes"] / GIB
            paper = PAPER_TABLE2.get(row.name, {}).get(c)
            paper_s = f"{paper:.2f}" if paper else "-"
            ratio = f"{total / paper:.3f}" if paper else "-"
            print(
                f"{c:<11}{row.name:<19}{total:>10.3f}{no_bases:>10.3f}{paper_s:>8}{ratio:>16}"
                f"{m['total_bytes'] / GIB:>9.3f}"
            )
    if "llama_7b" in configs:
        print_7b_anchors({n: m for (c, n), m in bf16.items() if c == "llama_7b"})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
