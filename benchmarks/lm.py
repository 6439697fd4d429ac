"""LM benchmark: AdamW vs GaLore vs LORENZA on the byte-level LLaMA-style model.

For every optimizer of ``examples/train_lm.py`` (AdamW; AdamW with GaLore's
per-group step-size control, i.e. the block matrices' updates scaled by
``scale``; ``lowrank.galore_adamw`` with the SVD and the randomized projector;
``optax.contrib.galore``; ``lowrank.lorenza``) it trains the ``bench`` model
(~1.7 M parameters, 4 stacked layers) on the Python-documentation corpus for
each learning rate of a small sweep and each seed (model init and data order),
then reports per optimizer, at its best learning rate (lowest mean final
validation loss over the seeds):

* final validation loss (mean, and every seed), and its ratio to the *tuned
  AdamW* (the best of ``adamw`` and ``adamw_scaled`` over their sweeps);
* optimizer-state bytes (:func:`lowrank.memory_report`) and the ratio to AdamW's;
* the training step's compiled bytes (XLA's memory analysis of the jitted step
  with params and state donated): arguments + outputs - aliased + temporaries,
  and XLA's own peak figure;
* median step time and the refresh's own cost (a step with
  ``update_proj_gap=1``, which refreshes every step, minus a normal step),
  measured after training in interleaved rounds (every candidate once per
  round; medians over rounds; ratios against AdamW in the same rounds).

8-bit state (``--optimizers ...,adamw_8bit,galore_adamw_8bit``, not in the
default set): ``quantize_state(optax.adamw)`` and ``galore_adamw(...,
state_bits=8)``; each is also compared with its fp32 version at the fp32
version's best learning rate, seed by seed (relative difference of the final
validation loss), the quality check of 8-bit state (no retuning).

Results are appended to ``--json`` after every run (``--resume`` skips runs
already there), so a partial run keeps what it measured. Usage::

    python benchmarks/lm.py --steps 600 --seeds 0,1 --json /tmp/lm.json --plot /tmp/lm.png
    python benchmarks/lm.py --optimizers adamw,galore_adamw --lrs adamw=3e-3 \\
        --lrs galore_adamw=1e-2,2e-2 --seeds 0 --steps 100
    python benchmarks/lm.py --steps 0          # timing and memory only
    python benchmarks/lm.py --config small --steps 400 --default-lrs --timing-rounds 0 \\
        --optimizers adamw,adamw_8bit,galore_adamw,galore_adamw_8bit
"""

from __future__ import annotations

import argparse
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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

import llama_lm as lm  # noqa: E402
import train_lm  # noqa: E402

_GRID = (4e-3, 8e-3, 1.6e-2, 3.2e-2, 6.4e-2)  # scale 0.25: block matrices move at lr / 4
DEFAULT_LRS = {
    "adamw": (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2),
    "adamw_scaled": _GRID,
    "galore_adamw": _GRID,
    "galore_adamw_randomized": _GRID,
    "optax_galore": _GRID,
    "lorenza": _GRID,
    "adamw_8bit": (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2),
    "galore_adamw_8bit": _GRID,
}
ADAMW_FAMILY = ("adamw", "adamw_scaled")
# 8-bit variants are opt-in (--optimizers): each is compared with its fp32 version.
EIGHT_BIT = {"adamw_8bit": "adamw", "galore_adamw_8bit": "galore_adamw"}
DEFAULT_OPTIMIZERS = tuple(n for n in train_lm.OPTIMIZERS if n not in EIGHT_BIT)


def parse_lrs(items: list[str] | None, optimizers: list[str]) -> dict[str, list[float]]:
    lrs = {name: list(DEFAULT_LRS[name]) for name in optimizers}
    for item in items or []:
        name, _, values = item.partition("=")
        if name not in lrs:
            raise SystemExit(f"--lrs names {name!r}, not one of --optimizers")
        lrs[name] = [float(v) for v in values.split(",")]
    return lrs


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Best learning rate per optimizer: lowest mean final validation loss over the seeds.

    Only learning rates run with every seed the optimizer was run with take
    part (a diverged run counts as an infinite loss).
    """
    by: dict[str, dict[float, dict[int, float]]] = {}
    for r in runs:
        loss = math.inf if r["diverged"] else r["final_val_loss"]
        by.setdefault(r["optimizer"], {}).setdefault(r["lr"], {}).setdefault(r["seed"], loss)
    best: dict[str, dict[str, Any]] = {}
    for name, per_lr in by.items():
        seeds = sorted({s for d in per_lr.values() for s in d})
        sweep = {
            lr: statistics.fmean(d[s] for s in seeds)
            for lr, d in sorted(per_lr.items())
            if set(d) == set(seeds)
        }
        lr = min(sweep, key=sweep.get)
        best[name] = {
            "lr": lr,
            "mean": sweep[lr],
            "losses": [per_lr[lr][s] for s in seeds],
            "seeds": seeds,
            "sweep": sweep,
        }
    return best


def load_runs(paths: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Runs and optimizer figures of several ``--json`` files (the first run of a key wins)."""
    runs, optimizers, seen = [], {}, set()
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        for r in data["runs"]:
            key = (r["optimizer"], r["lr"], r["seed"])
            if key not in seen:
                seen.add(key)
                runs.append(r)
        for name, e in data["optimizers"].items():
            merged = optimizers.setdefault(name, {})
            merged.update({k: v for k, v in e.items() if k not in merged})
    return runs, optimizers


class Timed:
    """A jitted, donated step held at a fixed position, timed in rounds.

    ``gap=1`` makes every step a refresh; otherwise the step index stays at 1
    and fewer than ``gap`` steps are taken, so no timed step refreshes.
    """

    def __init__(
        self, kwargs: dict[str, Any], name: str, gap: int, batch: jax.Array, trainer: Any = None
    ):
        config = kwargs["config"]
        if trainer is not None and name != "lorenza":
            tx, self.step = trainer.tx, trainer.step  # already compiled
        else:
            abstract = lm.abstract_params(config)
            tx = train_lm.make_optimizer(
                name, abstract, rank=kwargs["rank"], update_proj_gap=gap, scale=kwargs["scale"]
            )
            # LORENZA's timed step skips the loss-only forward pass of its training step.
            self.step = train_lm.make_train_step(tx, name, update_proj_gap=gap, with_loss=False)
        self.params = lm.init_params(config, jax.random.key(0))
        self.state = tx.init(self.params)
        self.batch = batch
        self.t = jnp.int32(1)  # 1 % gap == 0 only for gap == 1
        self.lr = jnp.float32(1e-4)
        self.params, self.state, _ = self.step(self.params, self.state, batch, self.lr, self.t)
        jax.block_until_ready(self.params)

    def run(self, reps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            self.params, self.state, _ = self.step(
                self.params, self.state, self.batch, self.lr, self.t
            )
        jax.block_until_ready((self.params, self.state))
        return (time.perf_counter() - t0) / reps * 1e3


def time_steps(
    kwargs: dict[str, Any],
    names: list[str],
    rounds: int,
    reps: int,
    batch: jax.Array,
    trainers: dict[str, Any],
) -> dict[str, dict[str, float]]:
    """Median normal-step and refresh-every-step times (ms), interleaved over ``rounds``."""
    gap = kwargs["update_proj_gap"]
    cands = {}
    for name in names:
        cands[(name, "normal")] = Timed(kwargs, name, gap, batch, trainers.get(name))
        if name not in ADAMW_FAMILY:
            cands[(name, "refresh")] = Timed(kwargs, name, 1, batch)
    samples: dict[tuple[str, str], list[float]] = {k: [] for k in cands}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(rounds):
        for key, c in cands.items():
            samples[key].append(c.run(reps))
        if "adamw" in names:
            base = samples[("adamw", "normal")][-1]
            for n in names:
                ratios[n].append(samples[(n, "normal")][-1] / base)
    out = {}
    for name in names:
        normal = statistics.median(samples[(name, "normal")])
        entry = {"step_ms": normal, "step_ms_rounds": samples[(name, "normal")]}
        if ratios[name]:
            entry["step_ratio_to_adamw"] = statistics.median(ratios[name])
        if (name, "refresh") in samples:
            refresh = statistics.median(samples[(name, "refresh")])
            entry["refresh_step_ms"] = refresh
            entry["refresh_ms"] = refresh - normal
        out[name] = entry
    return out


def plot_best(runs: list[dict[str, Any]], best: dict[str, dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for name, b in best.items():
        curves = [r["val_curve"] for r in runs if r["optimizer"] == name and r["lr"] == b["lr"]]
        steps = [s for s, _ in curves[0]]
        mean = np.mean([[v for _, v in c] for c in curves], axis=0)
        ax.plot(steps[1:], mean[1:], marker="o", ms=3, label=f"{name} (lr {b['lr']:g})")
    ax.set_xlabel("step")
    ax.set_ylabel(f"validation loss, mean of {len(curves)} seeds (nats/byte)")
    ax.set_title("bench LM: each optimizer at its best learning rate")
    finals = [b["mean"] for b in best.values() if math.isfinite(b["mean"])]
    if finals:  # the interesting part: the end of training
        ax.set_ylim(min(finals) - 0.15, min(finals) + 1.2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def step_bytes(compiled: dict[str, Any] | None) -> int | None:
    """Bytes live during the compiled step: arguments + outputs - aliased + temporaries.

    XLA's own ``peak_bytes`` is reported too, but on CPU it leaves the temporary
    buffer out (for the LM step it equals arguments + outputs - aliased), so
    this sum is the figure that compares across backends.
    """
    if not compiled:
        return None
    c = compiled
    return c["argument_bytes"] + c["output_bytes"] - c["alias_bytes"] + c["temp_bytes"]


def print_table(best: dict[str, dict[str, Any]], extra: dict[str, dict[str, Any]]) -> None:
    family = [n for n in ADAMW_FAMILY if n in best]
    tuned = min(family, key=lambda n: best[n]["mean"]) if family else None
    ref_loss = best[tuned]["mean"] if tuned else None
    ref_state = extra.get("adamw", {}).get("state_bytes")
    print()
    if tuned:
        print(f"tuned AdamW = {tuned} at lr {best[tuned]['lr']:g}")
    head = (
        f"{'optimizer':<25}{'lr':>8}{'val loss':>10}{'x AdamW':>9}{'state KiB':>11}"
        f"{'x AdamW':>9}{'step MiB':>10}{'XLA peak':>10}{'step ms':>9}{'x AdamW':>9}"
        f"{'refresh ms':>12}"
    )
    print(head)
    for name, b in best.items():
        e = extra.get(name, {})
        loss_ratio = b["mean"] / ref_loss if ref_loss else float("nan")
        state = e.get("state_bytes")
        state_ratio = state / ref_state if state and ref_state else float("nan")
        live = step_bytes(e.get("compiled")) or 0
        peak = e.get("compiled_peak_bytes") or 0
        print(
            f"{name:<25}{b['lr']:>8g}{b['mean']:>10.4f}{loss_ratio:>9.3f}"
            f"{(state or 0) / 1024:>11.1f}{state_ratio:>9.3f}"
            f"{live / 2**20:>10.2f}{peak / 2**20:>10.2f}"
            f"{e.get('step_ms', float('nan')):>9.1f}"
            f"{e.get('step_ratio_to_adamw', float('nan')):>9.2f}"
            f"{e.get('refresh_ms', float('nan')):>12.1f}"
        )
    print()
    print("per seed (final validation loss) and the sweep (mean over seeds per lr):")
    for name, b in best.items():
        seeds = ", ".join(f"{s}: {x:.4f}" for s, x in zip(b["seeds"], b["losses"], strict=True))
        sweep = ", ".join(f"{lr:g}: {m:.4f}" for lr, m in sorted(b["sweep"].items()))
        print(f"  {name:<25} seeds [{seeds}]  sweep [{sweep}]")


def compare_8bit(
    runs: list[dict[str, Any]], best: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Each 8-bit optimizer against its fp32 version at the fp32 version's best lr, per seed.

    8-bit state is used without retuning (Dettmers et al.), so the comparison
    is at the same learning rate and seeds: relative difference of the final
    validation loss, ``(8-bit - fp32) / fp32``.
    """
    loss = {
        (r["optimizer"], r["lr"], r["seed"]): math.inf if r["diverged"] else r["final_val_loss"]
        for r in runs
    }
    out = {}
    for name, fp32 in EIGHT_BIT.items():
        if name not in best or fp32 not in best:
            continue
        lr = best[fp32]["lr"]
        seeds = [s for s in best[fp32]["seeds"] if (name, lr, s) in loss]
        if not seeds:
            continue
        pairs = {s: (loss[(fp32, lr, s)], loss[(name, lr, s)]) for s in seeds}
        rel = {s: (b - a) / a for s, (a, b) in pairs.items()}
        out[name] = {
            "fp32": fp32,
            "lr": lr,
            "seeds": seeds,
            "fp32_losses": [pairs[s][0] for s in seeds],
            "losses": [pairs[s][1] for s in seeds],
            "rel_diff": [rel[s] for s in seeds],
            "mean_rel_diff": statistics.fmean(rel.values()),
            "max_abs_rel_diff": max(abs(x) for x in rel.values()),
        }
    return out


def print_8bit(comparison: dict[str, dict[str, Any]], extra: dict[str, dict[str, Any]]) -> None:
    if not comparison:
        return
    print()
    print("8-bit vs fp32 (same lr and seeds; final validation loss, (8-bit - fp32) / fp32):")
    for name, c in comparison.items():
        per_seed = ", ".join(
            f"{s}: {a:.4f} -> {b:.4f} ({100 * r:+.2f} %)"
            for s, a, b, r in zip(
                c["seeds"], c["fp32_losses"], c["losses"], c["rel_diff"], strict=True
            )
        )
        state = extra.get(name, {}).get("state_bytes")
        state32 = extra.get(c["fp32"], {}).get("state_bytes")
        ratio = f"  state {state / state32:.3f}x fp32" if state and state32 else ""
        print(
            f"  {name:<19} vs {c['fp32']:<13} lr {c['lr']:g}: [{per_seed}]  mean "
            f"{100 * c['mean_rel_diff']:+.2f} %{ratio}"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="bench", choices=["tiny", "small", "bench"])
    ap.add_argument(
        "--optimizers",
        default=",".join(DEFAULT_OPTIMIZERS),
        help=f"comma-separated, from {','.join(train_lm.OPTIMIZERS)}",
    )
    ap.add_argument("--lrs", action="append", help="NAME=lr1,lr2 (repeatable)")
    ap.add_argument(
        "--default-lrs",
        action="store_true",
        help="no sweep: each optimizer at train_lm.DEFAULT_LR (the bench sweep's best)",
    )
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--rank", type=int, default=None, help="default d_model // 4 (bench: 48)")
    ap.add_argument("--update-proj-gap", type=int, default=200)
    ap.add_argument("--scale", type=float, default=0.25)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-batches", type=int, default=16)
    ap.add_argument("--timing-rounds", type=int, default=5)
    ap.add_argument("--timing-reps", type=int, default=3)
    ap.add_argument("--precision", default="highest", help="jax_default_matmul_precision")
    ap.add_argument("--corpus", default=None, help=".npz from train_lm.py --save-corpus")
    ap.add_argument("--json", default=None)
    ap.add_argument("--resume", action="store_true", help="skip runs already in --json")
    ap.add_argument("--plot", default=None, help="PNG of the best runs' validation curves")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--timing-first", action="store_true", help="time before training")
    ap.add_argument(
        "--report", default=None, help="comma-separated --json files: summarize them and exit"
    )
    ap.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="start no run after this many seconds of the script",
    )
    args = ap.parse_args(argv)
    start = time.perf_counter()
    if args.report:
        runs, optimizers = load_runs(args.report.split(","))
        best = summarize(runs)
        print_table(best, optimizers)
        print_8bit(compare_8bit(runs, best), optimizers)
        if args.plot:
            plot_best(runs, best, args.plot)
            print(f"wrote {args.plot}")
        return {"runs": runs, "optimizers": optimizers, "best": best}
    jax.config.update("jax_default_matmul_precision", args.precision)

    names = args.optimizers.split(",")
    if args.default_lrs:
        args.lrs = [f"{n}={train_lm.DEFAULT_LR[n]}" for n in names] + (args.lrs or [])
    lrs = parse_lrs(args.lrs, names)
    seeds = [int(s) for s in args.seeds.split(",")]
    config = lm.CONFIGS[args.config]
    args.rank = args.rank or max(config.d_model // 4, 1)
    corpus = lm.load_corpus(args.corpus)
    meta = {
        "config": args.config,
        "num_params": config.num_params(),
        "corpus": corpus.describe(),
        "args": vars(args),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
    }
    print(corpus.describe())
    print(f"model {args.config}: {config.num_params():,} params; backend {meta['device']}")
    out: dict[str, Any] = {"meta": meta, "runs": [], "optimizers": {}}
    if args.resume and args.json and os.path.exists(args.json):
        with open(args.json) as f:
            out["runs"] = json.load(f)["runs"]
    done = {(r["optimizer"], r["lr"], r["seed"]) for r in out["runs"]}

    def save() -> None:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1)

    kwargs = dict(
        config=config,
        rank=args.rank,
        update_proj_gap=args.update_proj_gap,
        scale=args.scale,
        batch_size=args.batch_size,
    )
    trainers = {}
    for name in names:
        t0 = time.perf_counter()
        trainers[name] = train_lm.Trainer(name=name, **kwargs)
        memory = trainers[name].memory
        out["optimizers"][name] = {
            "description": train_lm.DESCRIPTIONS[name],
            "state_bytes": memory["state_bytes"],
            "params_bytes": memory["params_bytes"],
            "compiled": memory["compiled"],
            "compiled_peak_bytes": (memory["compiled"] or {}).get("peak_bytes"),
            "compile_s": time.perf_counter() - t0,
        }
        print(f"{name:<25} state {memory['state_bytes']:>10,} B  compiled {memory['compiled']}")
    save()

    def timing() -> None:
        if args.timing_rounds <= 0:
            return
        data = lm.train_batches(corpus.train, args.batch_size, config.seq_len, 0)
        batch = jnp.asarray(next(data))
        res = time_steps(kwargs, names, args.timing_rounds, args.timing_reps, batch, trainers)
        for name, entry in res.items():
            out["optimizers"][name].update(entry)
        save()

    if args.timing_first:
        timing()
    skipped = []
    # Middle learning rates first, every seed, then outward: a run cut short by
    # --time-budget still has every optimizer on the central part of its sweep.
    plan = []
    for name in names:
        grid = lrs[name]
        order = sorted(range(len(grid)), key=lambda i: (abs(i - (len(grid) - 1) / 2), i))
        plan += [(rank, seed, name, grid[i]) for rank, i in enumerate(order) for seed in seeds]
    plan.sort(key=lambda p: (p[0], p[1], names.index(p[2])))
    for _, seed, name, lr in plan if args.steps > 0 else []:
        if (name, lr, seed) in done:
            continue
        if args.time_budget and time.perf_counter() - start > args.time_budget:
            skipped.append((name, lr, seed))
            continue
        t0 = time.perf_counter()
        r = trainers[name].run(
            corpus,
            lr=lr,
            steps=args.steps,
            seed=seed,
            eval_every=args.eval_every,
            eval_batches=args.eval_batches,
            progress=args.progress,
        )
        r["run_s"] = time.perf_counter() - t0
        out["runs"].append(r)
        save()
        print(
            f"seed {seed} {name:<25} lr {lr:<8g} val {r['final_val_loss']:.4f}"
            f"{' (diverged)' if r['diverged'] else ''}  {r['run_s']:.1f} s",
            flush=True,
        )
    meta["skipped_runs"] = skipped
    if skipped:
        print(f"time budget reached: {len(skipped)} runs not started: {skipped}")
    if not args.timing_first:
        timing()

    if out["runs"]:
        best = summarize([r for r in out["runs"] if r["optimizer"] in names])
        out["best"] = {
            k: v | {"sweep": {str(lr): m for lr, m in v["sweep"].items()}} for k, v in best.items()
        }
        save()
        print_table(best, out["optimizers"])
        out["8bit_vs_fp32"] = compare_8bit(out["runs"], best)
        save()
        print_8bit(out["8bit_vs_fp32"], out["optimizers"])
        if args.plot:
            plot_best(out["runs"], best, args.plot)
            print(f"wrote {args.plot}")
    else:
        for name, e in out["optimizers"].items():
            print(
                f"{name:<25} state {e['state_bytes']:>10,} B"
                f"  step {step_bytes(e['compiled']) or 0:,} B"
                f" (XLA peak {e['compiled_peak_bytes']:,})"
                f"  step {e.get('step_ms', float('nan')):.1f} ms"
                f" ({e.get('step_ratio_to_adamw', float('nan')):.2f}x AdamW)"
                f"  refresh {e.get('refresh_ms', float('nan')):.1f} ms"
            )
    return out


if __name__ == "__main__":
    main()
