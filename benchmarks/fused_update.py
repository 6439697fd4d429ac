"""Fused per-layer updates vs the ordinary step: compiled memory, step time, equality.

For each configuration × optimizer, one record with:

* ``unfused_peak_bytes`` / ``fused_peak_bytes``: XLA's compiled memory analysis
  of the whole jitted training step (params and optimizer state donated), as
  ``temp + output`` bytes;
* ``gradient_bytes``: bytes of the scanned block's stacked gradient (= its
  parameters' bytes), which the fused step never materialises;
* ``max_rel_diff``: ``max |fused - unfused| / max |unfused|`` over the
  parameter leaves after ``--steps`` steps from the same initialisation on the
  same batches (``nan`` for a configuration that is only compiled);
* ``unfused_ms`` / ``fused_ms``: median step time over ``--rounds`` interleaved
  rounds of ``--reps`` steps (``nan`` when only compiled).

The model is the LLaMA-style decoder of ``examples/llama_lm.py``: the fused
step is its ``loss_fn`` with ``blocks_fn`` replaced by the fused block of
``layer_apply`` on the stacked block parameters. The unfused step is
``jax.value_and_grad(llama_lm.loss_fn)(..., remat=True)`` followed by one
``tx.update`` on all parameters; ``remat=True`` keeps, like the fused block,
only each layer's input for the backward pass, so both steps hold the same
activations. The fused step runs the block's optimizer inside the backward scan
(:func:`lowrank.fused_train_step`) and the embedding, final norm and head
through the ordinary update. Batches are seeded random bytes (the figures do not
depend on the text).

Configurations: ``lm`` (the LM benchmark model ``bench``, run) and ``deep``
(``--deep``, default the GaLore paper's ``llama_350m`` shape, compiled only:
nothing is allocated, parameters are abstract).

Usage::

    python benchmarks/fused_update.py [--json PATH] [--steps 8] [--rounds 15] [--reps 1]
        [--batch 8] [--seq 128] [--deep llama_350m] [--optimizers adamw galore_adamw]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

import llama_lm as lm  # noqa: E402

import lowrank_optax as lowrank  # noqa: E402

LR, WD = 1e-3, 0.1
REST_DIMS = {"embed": None, "final_norm": None, "head": None}


def optimizers(name: str, rank: int) -> tuple[Any, Any, Any]:
    """``(tx on all params (unfused), per-layer tx (fused), tx on the rest (fused))``."""
    if name == "adamw":
        make = lambda: optax.adamw(LR, weight_decay=WD)  # noqa: E731
        return make(), make(), make()
    if name == "galore_adamw":
        make = lambda dims: lowrank.galore_adamw(  # noqa: E731
            LR, weight_decay=WD, rank=rank, update_proj_gap=50, dimension_numbers=dims
        )
        return make(lm.dimension_numbers), make(lm.layer_dimension_numbers()), make(REST_DIMS)
    if name == "galore_adam":
        make = lambda dims: lowrank.galore(  # noqa: E731
            optax.adam(LR), rank=rank, update_proj_gap=50, dimension_numbers=dims
        )
        return make(lm.dimension_numbers), make(lm.layer_dimension_numbers()), make(REST_DIMS)
    raise ValueError(f"unknown optimizer {name!r}")


def split(params: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    return {k: v for k, v in params.items() if k != "blocks"}, params["blocks"]


def fused_loss(rest: dict[str, Any], blocks: Any, batch: jax.Array, shapes: Any) -> jax.Array:
    """``llama_lm.loss_fn`` with the block scan replaced by the fused ``blocks``."""
    params = {**rest, "blocks": shapes}  # the block arrays are only read for their shapes
    return lm.loss_fn(params, batch, blocks_fn=lambda _, x, rope: blocks(x, *rope))


def layer(p: Any, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    return lm.layer_apply(p, x, rope=(cos, sin))


def make_steps(config: lm.LlamaConfig, opt: str, rank: int, seq: int) -> dict[str, Any]:
    tx_all, tx_layer, tx_rest = optimizers(opt, rank)
    layers = lowrank.fused_layers(layer, tx_layer)
    train = lowrank.fused_train_step(fused_loss, layers, tx_rest)

    def unfused(params: Any, state: Any, batch: jax.Array) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(lm.loss_fn)(params, batch, remat=True)
        updates, state = tx_all.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    def fused(params: Any, state: Any, batch: jax.Array) -> tuple[Any, Any, jax.Array]:
        rest, blocks = split(params)
        shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), blocks)
        rest, blocks, state, loss = train.step(rest, blocks, state, batch, shapes)
        return {**rest, "blocks": blocks}, state, loss

    return {
        "unfused": (jax.jit(unfused, donate_argnums=(0, 1)), tx_all.init),
        "fused": (jax.jit(fused, donate_argnums=(0, 1)), lambda p: train.init(*split(p))),
    }


def peak(compiled: Any) -> tuple[int, dict[str, int]]:
    m = compiled.memory_analysis()
    stats = {
        "temp": int(m.temp_size_in_bytes),
        "output": int(m.output_size_in_bytes),
        "argument": int(m.argument_size_in_bytes),
        "alias": int(m.alias_size_in_bytes),
    }
    return stats["temp"] + stats["output"], stats


def measure(
    name: str, config: lm.LlamaConfig, opt: str, rank: int, args: argparse.Namespace, run: bool
) -> dict[str, Any]:
    steps = make_steps(config, opt, rank, args.seq)
    abstract = lm.abstract_params(config)
    batch_struct = jax.ShapeDtypeStruct((args.batch, args.seq + 1), jnp.int32)
    record: dict[str, Any] = {
        "config": name,
        "model": dataclasses.asdict(config) | {"num_params": config.num_params()},
        "optimizer": opt,
        "rank": rank if opt != "adamw" else None,
        "batch": [args.batch, args.seq],
        "gradient_bytes": sum(
            x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract["blocks"])
        ),
        "run": run,
    }
    compiled = {}
    for path, (step, init) in steps.items():
        t0 = time.perf_counter()
        state = jax.eval_shape(init, abstract)
        compiled[path] = step.lower(abstract, state, batch_struct).compile()
        record[f"{path}_peak_bytes"], record[f"{path}_memory"] = peak(compiled[path])
        record[f"{path}_compile_s"] = round(time.perf_counter() - t0, 2)
    record["saved_over_gradient"] = (
        record["unfused_peak_bytes"] - record["fused_peak_bytes"]
    ) / record["gradient_bytes"]
    record["memory_target_met"] = (
        record["fused_peak_bytes"] <= record["unfused_peak_bytes"] - 0.8 * record["gradient_bytes"]
    )
    if not run:
        record.update(max_rel_diff=math.nan, unfused_ms=math.nan, fused_ms=math.nan)
        return record

    rng = np.random.default_rng(0)
    batches = [
        jnp.asarray(rng.integers(0, config.vocab_size, (args.batch, args.seq + 1)), jnp.int32)
        for _ in range(args.steps)
    ]
    params0 = lm.init_params(config, jax.random.key(0))
    live: dict[str, list[Any]] = {}
    for path, (_, init) in steps.items():
        params = jax.tree.map(jnp.copy, params0)
        live[path] = [params, init(params)]
    # Equality: the same batches, one step of each path in turn.
    for b in batches:
        for path in steps:
            p, s = live[path]
            p, s, _ = compiled[path](p, s, b)
            live[path] = [p, s]
    record["max_rel_diff"] = max(
        float(jnp.max(jnp.abs(f - u)) / jnp.max(jnp.abs(u)))
        for f, u in zip(
            jax.tree.leaves(live["fused"][0]), jax.tree.leaves(live["unfused"][0]), strict=True
        )
    )
    # Timing: interleaved rounds (the order of the two paths alternates), median per path.
    times: dict[str, list[float]] = {path: [] for path in steps}
    order = list(steps)
    for i in range(args.rounds):
        for path in order if i % 2 == 0 else order[::-1]:
            p, s = live[path]
            t0 = time.perf_counter()
            for r in range(args.reps):
                p, s, loss = compiled[path](p, s, batches[r % len(batches)])
            jax.block_until_ready((p, s, loss))
            times[path].append((time.perf_counter() - t0) / args.reps * 1e3)
            live[path] = [p, s]
    record["unfused_ms"] = statistics.median(times["unfused"])
    record["fused_ms"] = statistics.median(times["fused"])
    record["time_ratio"] = record["fused_ms"] / record["unfused_ms"]
    return record


def table(records: list[dict[str, Any]]) -> str:
    mib = lambda b: f"{b / 2**20:,.1f}"  # noqa: E731
    head = (
        f"{'config':<8}{'optimizer':<14}{'L':>3}{'grad MiB':>10}{'unfused MiB':>13}"
        f"{'fused MiB':>11}{'saved/grad':>11}{'target':>8}{'max rel diff':>14}"
        f"{'unfused ms':>12}{'fused ms':>10}{'ratio':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in records:
        lines.append(
            f"{r['config']:<8}{r['optimizer']:<14}{r['model']['n_layers']:>3}"
            f"{mib(r['gradient_bytes']):>10}{mib(r['unfused_peak_bytes']):>13}"
            f"{mib(r['fused_peak_bytes']):>11}{r['saved_over_gradient']:>11.2f}"
            f"{'met' if r['memory_target_met'] else 'MISSED':>8}{r['max_rel_diff']:>14.1e}"
            f"{r['unfused_ms']:>12.1f}{r['fused_ms']:>10.1f}"
            f"{r.get('time_ratio', math.nan):>7.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the records to this JSON file")
    parser.add_argument("--config", default="bench", help="llama_lm config that is run")
    parser.add_argument("--deep", default="llama_350m", help="llama_lm config only compiled")
    parser.add_argument("--optimizers", nargs="+", default=["adamw", "galore_adamw"])
    parser.add_argument("--steps", type=int, default=8, help="steps before comparing params")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()

    records = []
    for name, config_name, run in (("lm", args.config, True), ("deep", args.deep, False)):
        config = lm.CONFIGS[config_name]
        rank = lm.PAPER_RANKS.get(config_name, max(config.d_model // 4, 1))
        for opt in args.optimizers:
            t0 = time.perf_counter()
            record = measure(name, config, opt, rank, args, run)
            record["config_name"] = config_name
            record["seconds"] = round(time.perf_counter() - t0, 1)
            records.append(record)
            print(f"[{name}/{config_name} {opt}: {record['seconds']} s]", flush=True)
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs; "
        "peak = XLA temp + output bytes of the donated step"
    )
    print(table(records))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1, default=float)


if __name__ == "__main__":
    main()
