"""8-bit optimizer state (``lowrank.quantize_state``): memory, step time and quality.

Prints, in one run:

* **memory**: optimizer-state bytes (``jax.eval_shape`` of ``init``, nothing
  allocated) of fp32 Adam vs 8-bit Adam on the LLaMA-block matrices of
  ``benchmarks/galore.py`` (targets: <= 0.27x), and of fp32 vs 8-bit GaLore
  (``galore_adamw``'s chain with its ``scale_by_adam_in_basis`` inner wrapped in
  ``quantize_state``; moments target <= 0.3x, bases stay in the param dtype);
* **speed**: median time of a jitted step (params and state donated) of each
  8-bit optimizer against its fp32 version, timed runs interleaved round after
  round (ratio target <= 1.25x);
* **training step** (what a user runs): the jitted training step (loss, gradient,
  update; params and state donated) of the LM (``--lm-config``, batch 16) and of
  the mnist1d MLP, fp32 vs 8-bit, with the LM's update-only step alongside to show
  the optimizer's share; with ``--floor``, Adam's update step with the dynamic map
  swapped for a linear code (the cheapest possible map: a floor for any map in this
  dequantize -> update -> quantize structure); with ``--breakdown``, where Adam's step spends its
  time: the profiler's kernel durations summed per kind of XLA kernel (fusion names
  without their numeric suffix), fp32 against 8-bit, median over rounds;
* **quality**: final train and test loss on mnist1d (``examples/mnist1d_common.py``)
  of 8-bit vs fp32 Adam and GaLore over several seeds, with a control run (target:
  within 1 %); and final validation loss of 8-bit vs fp32 AdamW and GaLore on the
  LLaMA-style byte-level LM of ``examples/llama_lm.py`` (``bench`` model).

Usage::

    python benchmarks/quantize_state.py [--rounds 7] [--reps 3] [--seeds 0 1]
        [--epochs 20] [--lm-steps 600] [--lm-seeds 0 1] [--lm-corpus corpus.npz]
        [--breakdown] [--floor] [--skip-speed] [--skip-train-step] [--skip-quality]
        [--skip-lm]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lowrank_optax as lowrank

# The LLaMA-block matrices of benchmarks/galore.py (hidden 1024, MLP 2816).
LLAMA_BLOCK = [(1024, 1024)] * 4 + [(1024, 2816), (2816, 1024), (1024, 2816)]
RANK = 128


def make_params(shapes: list[tuple[int, int]], seed: int = 0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {
        f"w{i}": jnp.asarray(rng.standard_normal(s, dtype=np.float32) * 0.02)
        for i, s in enumerate(shapes)
    }


def block_params_and_grads() -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """The LLaMA-block parameters and a fixed random gradient (the timed steps' inputs)."""
    params = make_params(LLAMA_BLOCK)
    rng = np.random.default_rng(1)
    grads = jax.tree.map(
        lambda p: jnp.asarray(rng.standard_normal(p.shape, dtype=np.float32) * 1e-3), params
    )
    return params, grads


def nbytes(tree: Any) -> int:
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def adam(learning_rate: float, *, bits: int | None, min_size: int = 4096) -> Any:
    tx = optax.adam(learning_rate)
    return tx if bits is None else lowrank.quantize_state(tx, min_size=min_size)


def galore(
    learning_rate: float,
    *,
    bits: int | None,
    rank: int = RANK,
    update_proj_gap: int = 200,
    min_size: int = 4096,
) -> Any:
    """``galore_adamw``'s chain (no weight decay), its inner optionally quantized."""
    inner = lowrank.scale_by_adam_in_basis(0.9, 0.999, 1e-6, eps_mode="galore")
    if bits is not None:
        inner = lowrank.quantize_state(inner, min_size=min_size)
    return optax.chain(
        lowrank.project_lowrank(inner, rank=rank, update_proj_gap=update_proj_gap),
        optax.scale_by_learning_rate(learning_rate),
    )


def memory_table() -> list[str]:
    params = make_params(LLAMA_BLOCK)
    shapes = jax.eval_shape(lambda: params)
    rows = ["| optimizer | state MiB | of fp32 |", "|---|---:|---:|"]
    a32 = nbytes(jax.eval_shape(adam(1e-3, bits=None).init, shapes))
    a8 = nbytes(jax.eval_shape(adam(1e-3, bits=8).init, shapes))
    rows.append(f"| Adam fp32 | {a32 / 2**20:.2f} | 1.000 |")
    rows.append(f"| Adam 8-bit | {a8 / 2**20:.2f} | {a8 / a32:.3f} |")
    # galore_adamw itself, to check that the fp32 chain above is its state.
    ref = jax.eval_shape(lowrank.galore_adamw(1e-3, rank=RANK).init, shapes)
    g32 = jax.eval_shape(galore(1e-3, bits=None).init, shapes)
    g8 = jax.eval_shape(galore(1e-3, bits=8).init, shapes)
    assert nbytes(ref) == nbytes(g32), (nbytes(ref), nbytes(g32))
    m32, m8 = nbytes(g32[0].inner_state), nbytes(g8[0].inner_state)
    b32, b8 = nbytes(g32[0].bases), nbytes(g8[0].bases)
    rows.append(f"| GaLore fp32 (rank {RANK}): moments | {m32 / 2**20:.2f} | 1.000 |")
    rows.append(f"| GaLore 8-bit: moments | {m8 / 2**20:.2f} | {m8 / m32:.3f} |")
    rows.append(f"| GaLore fp32: bases | {b32 / 2**20:.2f} | |")
    rows.append(f"| GaLore 8-bit: bases (param dtype) | {b8 / 2**20:.2f} | {b8 / b32:.3f} |")
    rows.append(f"| GaLore fp32: total | {nbytes(g32) / 2**20:.2f} | 1.000 |")
    rows.append(
        f"| GaLore 8-bit: total | {nbytes(g8) / 2**20:.2f} | {nbytes(g8) / nbytes(g32):.3f} |"
    )
    return rows


class Candidate:
    """A jitted, donated optimizer step (the first step, a GaLore refresh, is run here)."""

    def __init__(self, tx: Any, params: Any, grads: Any):
        def step(p: Any, s: Any, g: Any) -> tuple[Any, Any]:
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        self.grads = grads
        self.step = jax.jit(step, donate_argnums=(0, 1))
        self.params = jax.tree.map(jnp.copy, params)
        self.state = jax.jit(tx.init)(self.params)
        self.params, self.state = self.step(self.params, self.state, grads)
        jax.block_until_ready(self.params)
        compiled = self.step.lower(self.params, self.state, grads).compile()
        self.temp_mb = compiled.memory_analysis().temp_size_in_bytes / 2**20

    def run(self, reps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            self.params, self.state = self.step(self.params, self.state, self.grads)
        jax.block_until_ready((self.params, self.state))
        return (time.perf_counter() - t0) / reps * 1e3


def speed_table(rounds: int, reps: int) -> list[str]:
    params, grads = block_params_and_grads()
    candidates = {
        "Adam fp32": Candidate(adam(1e-3, bits=None), params, grads),
        "Adam 8-bit": Candidate(adam(1e-3, bits=8), params, grads),
        "GaLore fp32": Candidate(galore(1e-3, bits=None), params, grads),
        "GaLore 8-bit": Candidate(galore(1e-3, bits=8), params, grads),
    }
    med = interleaved(candidates, rounds, reps)
    rows = ["| step | median ms | of fp32 | XLA temp MiB |", "|---|---:|---:|---:|"]
    for name, c in candidates.items():
        base = med[name.replace("8-bit", "fp32")]
        rows.append(f"| {name} | {med[name]:.1f} | {med[name] / base:.2f} | {c.temp_mb:.1f} |")
    return rows


class TimedTrainStep:
    """A jitted, donated *training* step (forward, backward, optimizer update) at a
    fixed batch, timed like :class:`Candidate`; ``call(params, state)`` runs one step,
    and a timed sample runs ``repeat`` times as many steps (for sub-millisecond steps)."""

    def __init__(self, call: Any, params: Any, state: Any, repeat: int = 1):
        self.call, self.repeat = call, repeat
        self.params, self.state = call(params, state)  # compiles
        jax.block_until_ready(self.params)

    def run(self, reps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(reps * self.repeat):
            self.params, self.state = self.call(self.params, self.state)
        jax.block_until_ready((self.params, self.state))
        return (time.perf_counter() - t0) / (reps * self.repeat) * 1e3


def interleaved(candidates: dict[str, Any], rounds: int, reps: int) -> dict[str, float]:
    """Median ms per step of each candidate, every candidate once per round."""
    times: dict[str, list[float]] = {k: [] for k in candidates}
    for _ in range(rounds):
        for name, c in candidates.items():
            times[name].append(c.run(reps))
    return {k: statistics.median(v) for k, v in times.items()}


def train_step_table(
    rounds: int, reps: int, corpus_path: str | None, config_name: str = "bench"
) -> list[str]:
    """What a user runs: the training step (loss, gradient, update; params and state
    donated) of the LM and of the mnist1d MLP with fp32 vs 8-bit state, and, on the
    same LM parameters, the optimizer update alone (random gradients), in one set of
    interleaved rounds. The update-only rows say how much of the training step the
    optimizer is."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import llama_lm as lm
    import mnist1d_common as common
    import train_lm

    config = lm.CONFIGS[config_name]
    corpus = lm.load_corpus(corpus_path)
    abstract = lm.abstract_params(config)
    make = functools.partial(lm_optimizer, lm=lm, abstract=abstract, rank=config.d_model // 4)
    batch = jnp.asarray(next(lm.train_batches(corpus.train, 16, config.seq_len, 0)))
    lr, t = jnp.float32(1e-4), jnp.int32(1)  # t=1: no GaLore refresh in the timed steps
    candidates: dict[str, Any] = {}
    for name in ("AdamW", "GaLore"):
        for bits in (None, 8):
            tx = make(name, bits)
            step = train_lm.make_train_step(tx, name.lower())
            params = lm.init_params(config, jax.random.key(0))
            label = f"LM {config_name} train step, {name} {'8-bit' if bits else 'fp32'}"
            candidates[label] = TimedTrainStep(
                lambda p, s, step=step: step(p, s, batch, lr, t)[:2], params, tx.init(params)
            )
    lm_params = lm.init_params(config, jax.random.key(0))
    rng = np.random.default_rng(1)
    lm_grads = jax.tree.map(
        lambda p: jnp.asarray(rng.standard_normal(p.shape) * 1e-3, p.dtype), lm_params
    )
    for bits in (None, 8):
        label = f"LM {config_name} update only, AdamW {'8-bit' if bits else 'fp32'}"
        candidates[label] = Candidate(make("AdamW", bits), lm_params, lm_grads)
    data = common.load_mnist1d()
    x, y = jnp.asarray(data.x), jnp.asarray(data.y)
    idx = jnp.asarray(common.batch_indices(x.shape[0], 64)[0])
    hparams = {"lr": jnp.float32(1e-3)}
    mnist = {
        "Adam": lambda bits: lambda h: adam(h["lr"], bits=bits, min_size=256),
        "GaLore r16": lambda bits: (
            lambda h: galore(h["lr"], bits=bits, rank=16, update_proj_gap=50, min_size=256)
        ),
    }
    for name, make_tx in mnist.items():
        for bits in (None, 8):
            step = common.make_train_step(make_tx(bits))
            params = common.init_params(0)
            label = f"mnist1d train step, {name} {'8-bit' if bits else 'fp32'}"
            candidates[label] = TimedTrainStep(
                lambda p, s, step=step: step(p, s, hparams, x, y, idx)[:2],
                params,
                make_tx(bits)(hparams).init(params),
                repeat=50,  # a step takes ~0.1-0.3 ms
            )
    med = interleaved(candidates, rounds, reps)
    rows = ["| step | median ms | of fp32 |", "|---|---:|---:|"]
    for name in candidates:
        base = med[name.replace("8-bit", "fp32")]
        rows.append(f"| {name} | {med[name]:.2f} | {med[name] / base:.2f} |")
    return rows


@contextlib.contextmanager
def linear_codec() -> Any:
    """Replaces the dynamic map's encoder and decoder by the cheapest possible code:
    linear, ``round(127 a)`` (signed) or ``round(255 a)`` (unsigned), one multiply
    and one conversion each way. An experiment, not a format: it keeps every other
    part of :func:`lowrank.quantize_state`'s step (block maxima, scales, layout), so
    its step time is a floor for *any* code map in this structure."""
    from lowrank_optax._src import blockwise

    saved = blockwise._encode_blocks, blockwise._decode_unit

    def encode(r: jax.Array, slopes: list[jax.Array], signed: bool) -> jax.Array:
        # slopes[0] = 10^(n-1) / scale (the first line of the dynamic map's encoder)
        n = blockwise._magnitude_bits(signed)
        unit = r * (slopes[0] * np.float32(10.0 ** -(n - 1)))
        top = 127 if signed else 255
        return jnp.round(unit * top).astype(jnp.int32).astype(jnp.int8 if signed else jnp.uint8)

    def decode(codes: jax.Array, signed: bool) -> jax.Array:
        return codes.astype(jnp.float32) * np.float32(1 / (127 if signed else 255))

    blockwise._encode_blocks, blockwise._decode_unit = encode, decode
    try:
        yield
    finally:
        blockwise._encode_blocks, blockwise._decode_unit = saved


def floor_table(rounds: int, reps: int) -> list[str]:
    """Adam's update step: fp32, 8-bit with the dynamic map, 8-bit with the linear
    code of :func:`linear_codec` (each compiled under its codec), interleaved."""
    params, grads = block_params_and_grads()
    candidates = {
        "Adam fp32": Candidate(adam(1e-3, bits=None), params, grads),
        "Adam 8-bit, dynamic map": Candidate(adam(1e-3, bits=8), params, grads),
    }
    with linear_codec():
        linear = Candidate(adam(1e-3, bits=8), params, grads)  # traced and compiled here
    candidates["Adam 8-bit, linear code (floor)"] = linear
    med = interleaved(candidates, rounds, reps)
    rows = ["| step | median ms | of fp32 |", "|---|---:|---:|"]
    for name in candidates:
        rows.append(f"| {name} | {med[name]:.1f} | {med[name] / med['Adam fp32']:.2f} |")
    return rows


def breakdown_table(rounds: int, reps: int) -> list[str]:
    """Summed kernel time per step by kind of XLA kernel, Adam fp32 vs 8-bit (the
    profiler's Perfetto trace; kernels of one step run concurrently where they are
    independent, so a sum can exceed the step's wall time)."""
    import collections
    import gzip
    import json
    import re
    import tempfile

    params, grads = block_params_and_grads()
    candidates = {
        "Adam fp32": Candidate(adam(1e-3, bits=None), params, grads),
        "Adam 8-bit": Candidate(adam(1e-3, bits=8), params, grads),
    }
    kernel = re.compile(r"^[a-z_\-]+(\.\d+)?$")  # XLA kernel names, e.g. reduce_fusion.3
    sums: dict[str, dict[str, list[float]]] = {k: collections.defaultdict(list) for k in candidates}
    for _ in range(rounds):
        for name, c in candidates.items():
            c.run(1)
            with tempfile.TemporaryDirectory() as d:
                with jax.profiler.trace(d, create_perfetto_trace=True):
                    c.run(reps)
                trace = next(Path(d).rglob("*.trace.json.gz"))
                events = json.load(gzip.open(trace))
            events = events["traceEvents"] if isinstance(events, dict) else events
            per_kind: dict[str, float] = collections.defaultdict(float)
            for e in events:
                if e.get("ph") == "X" and kernel.match(e.get("name", "")):
                    per_kind[re.sub(r"\.\d+$", "", e["name"])] += e["dur"] / 1e3 / reps
            per_kind["total"] = sum(per_kind.values())
            for kind, ms in per_kind.items():
                sums[name][kind].append(ms)
    rows = ["| step | kernel kind | ms per step |", "|---|---|---:|"]
    for name, kinds in sums.items():
        med = {k: statistics.median(v + [0.0] * (rounds - len(v))) for k, v in kinds.items()}
        for kind, ms in sorted(med.items(), key=lambda kv: -kv[1]):
            if ms >= 0.05:
                rows.append(f"| {name} | {kind} | {ms:.2f} |")
    return rows


def quality_table(seeds: list[int], epochs: int, batch_size: int, lr: float) -> list[str]:
    """Final losses of fp32 and 8-bit runs, and of a *control*: the fp32 run from
    initial parameters perturbed by 1e-6 relative noise. Training a small network
    to convergence is chaotic, so the control's distance to the fp32 run measures
    the run-to-run noise that any perturbation (quantization included) produces."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import mnist1d_common as common

    data = common.load_mnist1d()
    # min_size=256: also quantize GaLore's small low-rank moments (1024 elements) and
    # the 640-element output kernel; biases stay fp32.
    configs = {
        "Adam": lambda bits: lambda h: adam(h["lr"], bits=bits, min_size=256),
        "GaLore r16": lambda bits: (
            lambda h: galore(h["lr"], bits=bits, rank=16, update_proj_gap=50, min_size=256)
        ),
    }
    evals = {"train": (data.x, data.y, 1000), "test": (data.x_test, data.y_test, 1000)}

    def perturbed(params: Any, seed: int) -> Any:
        key = jax.random.key(10_000 + seed)
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(key, len(leaves))
        noisy = [
            x * (1 + 1e-6 * jax.random.normal(k, x.shape))
            for x, k in zip(leaves, keys, strict=True)
        ]
        return jax.tree.unflatten(treedef, noisy)

    rows = [
        "| optimizer | seed | train fp32 | train 8-bit | train control "
        "| test fp32 | test 8-bit | test control |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, make in configs.items():
        finals = []  # per seed: [[train, test] for fp32, 8-bit, control]
        for seed in seeds:
            runs = []
            for bits, init in ((None, False), (8, False), (None, True)):
                params0 = common.init_params(seed)
                history = common.train(
                    make(bits),
                    perturbed(params0, seed) if init else params0,
                    data.x,
                    data.y,
                    epochs=epochs,
                    batch_size=batch_size,
                    shuffle_seed=seed,
                    eval_sets=evals,
                    hparams={"lr": lr},
                )
                runs.append([history.evals[k]["loss"][-1] for k in ("train", "test")])
            finals.append(runs)
            (a, b), (c, d), (e, f) = runs
            rows.append(
                f"| {name} | {seed} | {a:.4f} | {c:.4f} | {e:.4f} | {b:.4f} | {d:.4f} | {f:.4f} |"
            )
        r = np.asarray(finals)  # (seeds, 3 runs, 2 metrics)
        mean = r.mean(axis=0)
        rows.append(
            f"| {name} | mean | {mean[0, 0]:.4f} | {mean[1, 0]:.4f} | {mean[2, 0]:.4f} "
            f"| {mean[0, 1]:.4f} | {mean[1, 1]:.4f} | {mean[2, 1]:.4f} |"
        )
        rel = (mean[1:] - mean[0]) / mean[0]
        dev = np.abs(r[:, 1:] - r[:, :1]) / r[:, :1]  # per-seed |x - fp32| / fp32
        rows.append(
            f"| {name} | mean vs fp32 | | {rel[0, 0]:+.2%} | {rel[1, 0]:+.2%} "
            f"| | {rel[0, 1]:+.2%} | {rel[1, 1]:+.2%} |"
        )
        rows.append(
            f"| {name} | mean abs. per-seed dev. | | {dev[:, 0, 0].mean():.2%} "
            f"| {dev[:, 1, 0].mean():.2%} | | {dev[:, 0, 1].mean():.2%} "
            f"| {dev[:, 1, 1].mean():.2%} |"
        )
    return rows


def lm_optimizer(name: str, bits: int | None, *, lm: Any, abstract: Any, rank: int) -> Any:
    """The LM runs' optimizers (learning rate 1: train_lm's step scales the updates):
    AdamW, or GaLore (rank, scale 0.25, gap 200), with fp32 or 8-bit state."""
    if name == "AdamW":
        tx = optax.adamw(1.0, weight_decay=0.0)
        return tx if bits is None else lowrank.quantize_state(tx)
    inner = lowrank.scale_by_adam_in_basis(0.9, 0.999, 1e-6, eps_mode="galore")
    if bits is not None:
        inner = lowrank.quantize_state(inner)
    return optax.chain(
        lowrank.project_lowrank(
            inner,
            rank=rank,
            update_proj_gap=200,
            scale=0.25,
            dimension_numbers=lm.dimension_numbers(abstract),
        ),
        optax.scale_by_learning_rate(1.0),
    )


def lm_table(
    seeds: list[int], steps: int, corpus_path: str | None, config_name: str = "bench"
) -> list[str]:
    """Final validation loss of fp32 vs 8-bit AdamW and GaLore on an ``examples/llama_lm.py``
    model (train_lm.py's step and schedule, batch 16, the bench model's tuned peak lrs,
    GaLore rank d/4, scale 0.25, gap 200)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import llama_lm as lm
    import train_lm

    config = lm.CONFIGS[config_name]
    corpus = lm.load_corpus(corpus_path)
    abstract = lm.abstract_params(config)
    # benchmarks/lm.py's bench settings: rank d/4 (48 on bench), batch 16.
    rank, batch_size = config.d_model // 4, 16

    make = functools.partial(lm_optimizer, lm=lm, abstract=abstract, rank=rank)

    peak = {"AdamW": train_lm.DEFAULT_LR["adamw"], "GaLore": train_lm.DEFAULT_LR["galore_adamw"]}
    val = jnp.asarray(lm.eval_batches(corpus.val, batch_size, config.seq_len, 16))
    rows = [
        f"corpus: {corpus.describe()}",
        "",
        "| optimizer | seed | val loss fp32 | val loss 8-bit | rel. diff "
        "| state MiB fp32 / 8-bit |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("AdamW", "GaLore"):
        finals = []
        for seed in seeds:
            out = {}
            for bits in (None, 8):
                tx = make(name, bits)
                step = train_lm.make_train_step(tx, name.lower())
                params = lm.init_params(config, jax.random.key(seed))
                state = tx.init(params)
                out[bits] = nbytes(state)
                data = lm.train_batches(corpus.train, batch_size, config.seq_len, seed)
                for t in range(steps):
                    lr = jnp.float32(train_lm.lr_at(t, peak[name], steps))
                    batch = jnp.asarray(next(data))
                    params, state, _ = step(params, state, batch, lr, jnp.int32(t))
                out[(bits, "loss")] = float(train_lm.evaluate(params, val))
            a, b = out[(None, "loss")], out[(8, "loss")]
            finals.append((a, b))
            rows.append(
                f"| {name} | {seed} | {a:.4f} | {b:.4f} | {(b - a) / a:+.2%} "
                f"| {out[None] / 2**20:.2f} / {out[8] / 2**20:.2f} |"
            )
        m = np.mean(np.asarray(finals), axis=0)
        rows.append(f"| {name} | mean | {m[0]:.4f} | {m[1]:.4f} | {(m[1] - m[0]) / m[0]:+.2%} | |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.0059)  # Adam's tuned lr, lrg_mnist1d.py
    p.add_argument("--lm-steps", type=int, default=600)
    p.add_argument("--lm-seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--lm-corpus", default=None, help="corpus .npz (llama_lm.save_corpus)")
    p.add_argument("--lm-config", default="bench", help="a llama_lm.CONFIGS name")
    p.add_argument("--breakdown", action="store_true", help="kernel time per kind (Adam)")
    p.add_argument("--floor", action="store_true", help="Adam's step with a linear code (a floor)")
    p.add_argument("--skip-train-step", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-lm", action="store_true")
    args = p.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.devices()[0]}")
    print("\n## State memory (LLaMA block: 4 x 1024^2, 2 x 1024x2816, 1 x 2816x1024)\n")
    print("\n".join(memory_table()))
    if not args.skip_speed:
        print(f"\n## Step time ({args.rounds} interleaved rounds x {args.reps} steps)\n")
        print("\n".join(speed_table(args.rounds, args.reps)))
    if not args.skip_train_step:
        print(f"\n## Training step ({args.rounds} interleaved rounds x {args.reps} steps)\n")
        print("\n".join(train_step_table(args.rounds, args.reps, args.lm_corpus, args.lm_config)))
    if args.floor:
        print(f"\n## Adam's step with a linear code ({args.rounds} rounds x {args.reps} steps)\n")
        print("\n".join(floor_table(args.rounds, args.reps)))
    if args.breakdown:
        print(f"\n## Adam's step by kernel kind ({args.rounds} rounds x {args.reps} steps)\n")
        print("\n".join(breakdown_table(args.rounds, args.reps)))
    if not args.skip_quality:
        print(
            f"\n## mnist1d quality ({args.epochs} epochs, batch {args.batch_size}, lr {args.lr})\n"
        )
        print("\n".join(quality_table(args.seeds, args.epochs, args.batch_size, args.lr)))
    if not args.skip_lm:
        print(f"\n## LM quality ({args.lm_config} model, {args.lm_steps} steps, batch 16)\n")
        rows = lm_table(args.lm_seeds, args.lm_steps, args.lm_corpus, args.lm_config)
        print("\n".join(rows))


if __name__ == "__main__":
    main()
