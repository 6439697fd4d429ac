"""Train the LLaMA-style LM with GaLore-AdamW fused into the backward pass.

The model is ``examples/llama_lm.py``: stacked decoder layers run by a
``jax.lax.scan``. Here the scan is replaced by :func:`lowrank.fused_layers`:
each layer's ``galore_adamw`` update runs inside the backward pass as soon as
that layer's gradient exists, so the stacked gradient of the layers is never
held. The embedding, final norm and head are updated after the backward pass by
an ordinary ``galore_adamw`` (they are not projected, as in the GaLore paper).

The script

1. compiles the fused step and the ordinary step and prints XLA's memory
   analysis of both (temp + output bytes; params and state donated);
2. trains both from the same initialisation on the same batches of the
   byte-level corpus (the Python documentation, see ``llama_lm.load_corpus``)
   and prints their losses, which agree to float32 rounding;
3. optionally (``--accumulate K``) trains with K micro-batches per update.

Run::

    python examples/fused_update_lm.py [--config small] [--steps 30] [--accumulate 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import llama_lm as lm  # noqa: E402

import lowrank_optax as lowrank  # noqa: E402

REST_DIMS = {"embed": None, "final_norm": None, "head": None}


def layer(p: Any, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """One decoder layer; the rotary tables come in as layer arguments."""
    return lm.layer_apply(p, x, rope=(cos, sin))


def loss_fn(rest: dict[str, Any], blocks: Any, batch: jax.Array, shapes: Any) -> jax.Array:
    """``llama_lm.loss_fn`` with its block scan replaced by the fused ``blocks``."""
    params = {**rest, "blocks": shapes}  # block arrays are only read for their shapes
    return lm.loss_fn(params, batch, blocks_fn=lambda _, x, rope: blocks(x, *rope))


def split(params: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    return {k: v for k, v in params.items() if k != "blocks"}, params["blocks"]


def make_fused(lr: float, rank: int, accumulate: int) -> tuple[Any, Any]:
    """The fused training step (jitted, donated) and its init function."""
    layers = lowrank.fused_layers(
        layer,
        lowrank.galore_adamw(lr, rank=rank, dimension_numbers=lm.layer_dimension_numbers()),
        accumulation_steps=accumulate,
    )
    train = lowrank.fused_train_step(
        loss_fn, layers, lowrank.galore_adamw(lr, rank=rank, dimension_numbers=REST_DIMS)
    )

    def step(params: Any, state: Any, batch: jax.Array) -> tuple[Any, Any, jax.Array]:
        rest, blocks = split(params)
        shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), blocks)
        rest, blocks, state, loss = train.step(rest, blocks, state, batch, shapes)
        return {**rest, "blocks": blocks}, state, loss

    return jax.jit(step, donate_argnums=(0, 1)), lambda p: train.init(*split(p))


def make_unfused(lr: float, rank: int, accumulate: int) -> tuple[Any, Any]:
    """The ordinary step: the whole gradient, then one ``tx.update``."""
    tx = lowrank.galore_adamw(lr, rank=rank, dimension_numbers=lm.dimension_numbers)
    if accumulate > 1:
        tx = optax.MultiSteps(tx, accumulate).gradient_transformation()

    def step(params: Any, state: Any, batch: jax.Array) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(lm.loss_fn)(params, batch, remat=True)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    return jax.jit(step, donate_argnums=(0, 1)), tx.init


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="small", choices=sorted(lm.CONFIGS))
    ap.add_argument("--steps", type=int, default=30, help="micro-batches to train on")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--rank", type=int, default=None, help="default: d_model // 4")
    ap.add_argument("--accumulate", type=int, default=1, help="micro-batches per update")
    args = ap.parse_args()

    config = lm.CONFIGS[args.config]
    rank = args.rank or max(config.d_model // 4, 1)
    corpus = lm.load_corpus()
    print(corpus.describe())
    batches = lm.train_batches(corpus.train, args.batch, config.seq_len, seed=0)
    data = [jnp.asarray(next(batches), jnp.int32) for _ in range(args.steps)]

    params0 = lm.init_params(config, jax.random.key(0))
    block_bytes = sum(x.nbytes for x in jax.tree.leaves(params0["blocks"]))
    runs = {
        "unfused": make_unfused(args.lr, rank, args.accumulate),
        "fused": make_fused(args.lr, rank, args.accumulate),
    }
    print(
        f"model {args.config}: {lm.num_params(params0):,} params, {config.n_layers} layers; "
        f"stacked block gradient {block_bytes / 2**20:.2f} MiB; galore_adamw rank {rank}; "
        f"{args.accumulate} micro-batch(es) per update"
    )
    live = {}
    for name, (step, init) in runs.items():
        params = jax.tree.map(jnp.copy, params0)
        state = init(params)
        compiled = step.lower(params, state, data[0]).compile()
        m = compiled.memory_analysis()
        peak = m.temp_size_in_bytes + m.output_size_in_bytes
        print(
            f"  {name:>8} step: temp {m.temp_size_in_bytes / 2**20:7.2f} MiB, "
            f"temp + output {peak / 2**20:7.2f} MiB"
        )
        live[name] = [compiled, params, state, []]

    t0 = time.perf_counter()
    for i, batch in enumerate(data):
        for name in runs:
            compiled, params, state, losses = live[name]
            params, state, loss = compiled(params, state, batch)
            live[name][1:3] = [params, state]
            losses.append(float(loss))
        if i % 10 == 0 or i == len(data) - 1:
            print(
                f"  micro-batch {i:3d}: loss unfused {live['unfused'][3][-1]:.4f}, "
                f"fused {live['fused'][3][-1]:.4f}"
            )
    diff = max(
        float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
        for a, b in zip(
            jax.tree.leaves(live["fused"][1]), jax.tree.leaves(live["unfused"][1]), strict=True
        )
    )
    print(
        f"max relative parameter difference fused vs unfused: {diff:.1e} "
        f"({time.perf_counter() - t0:.1f} s for both runs)"
    )


if __name__ == "__main__":
    main()
