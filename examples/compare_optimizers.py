"""The main job: train the mnist1d MLP with every optimizer in lowrank_optax.

Trains the MLP 40 -> 128 -> 64 -> 10 on mnist1d (generated offline: 2000 train /
1000 test) with ``optax.adamw`` as the baseline and every optimizer of the library
that this installed version provides. Every optimizer runs with the hyperparameters
chosen by a recorded sweep (``scripts/sweep_main_job.py``, which trains on 1500
training samples and validates on the other 500; its choices are stored in
``examples/main_job_hparams.json`` and its table in ``docs/guides/main_job.rst``).

Prints two Markdown tables (each under 100 columns): the results (final test
accuracy and its difference to AdamW, test and train loss, milliseconds per jitted
step with params and state donated, measured after warm-up, and optimizer-state
size relative to AdamW's) and the configuration (hyperparameters and what each
optimizer's state holds), followed by notes explaining every optimizer more than
0.05 below AdamW and every pair that trains identically. Saves a figure (one panel
pair per family against the AdamW baseline), the tables (Markdown) and all numbers
(JSON) in ``--out`` (default ``outputs/``). Every step function is compiled before
the progress bar starts, so its ETA never includes compilation.

Optimizers are discovered from ``REGISTRY``: an entry runs only if the library has
the names it needs (``hasattr(lowrank, name)``), so the comparison grows with the
library; an optimizer that fails to build or train is reported and skipped.

Usage::

    python3 examples/compare_optimizers.py                         # everything
    python3 examples/compare_optimizers.py --optimizers adamw,lrg_adam --epochs 5 --seeds 2
    python3 examples/compare_optimizers.py --list                   # what is available
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import platform
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import mnist1d_common as common  # noqa: E402

import lowrank_optax as lowrank  # noqa: E402

HPARAMS_FILE = pathlib.Path(__file__).resolve().parent / "main_job_hparams.json"
BASELINE = "adamw"
GAP = 0.05  # an optimizer further than this below AdamW's test accuracy needs a note
LR_ADAM = (1e-3, 3e-3, 1e-2, 3e-2, 0.1)  # the sweep's learning rates (Adam-like)

LINESTYLES = ("-", "--", ":", "-.", (0, (1, 1)))
FAMILIES = (
    "LRG-Adam",
    "GaLore / LORENZA",
    "LRE",
    "LARS / LAMB",
    "Adam variants",
    "Lookahead / Scout",
)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One optimizer of the comparison.

    ``build(**hparams)`` returns the transformation. Hyperparameters named in
    ``traced`` reach it as traced scalars (the sweep varies them without
    recompiling); the others are static Python values. ``grid`` maps every
    hyperparameter to the values the sweep tries; its first value of each is the
    fallback when the recorded sweep has no entry for this optimizer.
    """

    name: str
    family: str
    build: Callable[..., optax.GradientTransformation]
    describe: str  # how it is built, with {placeholders} for the hyperparameters
    state: str  # what the optimizer state holds (N = number of parameters)
    grid: dict[str, tuple[Any, ...]]
    traced: tuple[str, ...] = ("lr",)
    requires: tuple[str, ...] = ()  # attributes of ``lowrank_optax`` it needs
    extra_args: bool = False  # update() needs value_fn / grad_fn closures
    # Why it trails AdamW or equals another entry: a string, or hparams -> string.
    note: str | Callable[[dict[str, Any]], str] = ""


REGISTRY: tuple[Entry, ...] = (
    Entry(
        "adamw",
        "baseline",
        lambda lr: optax.adamw(lr, weight_decay=1e-4),
        "optax.adamw(lr={lr}, weight_decay=1e-4)",
        "mu, nu (2 x N)",
        {"lr": LR_ADAM},
    ),
    Entry(
        "lrg_adam",
        "LRG-Adam",
        lambda lr, rank: lowrank.lrg_adam(lr, rank=rank),
        "lrg_adam(lr={lr}, rank={rank}), randomized projector",
        "Adam's mu, nu (2 x N) + a PRNG key",
        {"lr": LR_ADAM, "rank": (20, 10)},
        requires=("lrg_adam",),
    ),
    Entry(
        "galore_adamw",
        "GaLore / LORENZA",
        lambda lr: lowrank.galore_adamw(lr, rank=16, update_proj_gap=50),
        "galore_adamw(lr={lr}, rank=16, update_proj_gap=50)",
        "per kernel a rank-16 basis + Adam moments of its projection; biases: Adam",
        {"lr": LR_ADAM},
        requires=("galore_adamw",),
    ),
    Entry(
        "lorenza",
        "GaLore / LORENZA",
        lambda lr: lowrank.lorenza(lr, rank=16, update_proj_gap=50),
        "lorenza(lr={lr}, rank=16, update_proj_gap=50, rho=0.05, mu=1e-3)",
        "as galore_adamw + the ZO-SAM state",
        {"lr": LR_ADAM},
        requires=("lorenza",),
        extra_args=True,
    ),
    Entry(
        "lre",
        "LRE",
        lambda lr, history_size: lowrank.lre(
            lr, basis=lowrank.bases.ggt(history_size=history_size)
        ),
        "lre(lr={lr}, basis=bases.ggt(history_size={history_size}))",
        "GGT history: the last h gradients (N x h), h x h Gram, Adam in the h-dim basis",
        {"lr": (0.01, 0.03, 0.1, 0.3, 1.0), "history_size": (100, 20)},
        requires=("lre",),
        note=(
            "its update lies in the span of the last h gradients and is norm-clipped, so it "
            "needs ~30-100x Adam's learning rate (at lr 0.003 it ended at 0.23 test accuracy); "
            "history 20 was no better than 100 at any lr (sweep)"
        ),
    ),
    Entry(
        "lars",
        "LARS / LAMB",
        lambda lr: lowrank.lars(lr, momentum=0.9),
        "lars(lr={lr}, momentum=0.9, trust_coefficient=1.0)",
        "momentum (N)",
        {"lr": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)},
        requires=("lars",),
    ),
    Entry(
        "lamb",
        "LARS / LAMB",
        lambda lr: lowrank.lamb(lr),
        "lamb(lr={lr})",
        "mu, nu (2 x N)",
        {"lr": LR_ADAM},
        requires=("lamb",),
    ),
    Entry(
        "ralars",
        "LARS / LAMB",
        lambda lr: lowrank.ralars(lr),
        "ralars(lr={lr})",
        "mu, nu (2 x N)",
        {"lr": LR_ADAM},
        requires=("ralars",),
    ),
    Entry(
        "tadam",
        "Adam variants",
        lambda lr: lowrank.tadam(lr),
        "tadam(lr={lr})",
        "mu, nu (2 x N) + per-leaf weights",
        {"lr": LR_ADAM},
        requires=("tadam",),
    ),
    Entry(
        "adabelief",
        "Adam variants",
        lambda lr: lowrank.adabelief(lr),
        "adabelief(lr={lr})",
        "mu, belief s (2 x N)",
        {"lr": LR_ADAM},
        requires=("adabelief",),
    ),
    Entry(
        "adamp",
        "Adam variants",
        lambda lr: lowrank.adamp(lr),
        "adamp(lr={lr})",
        "mu, nu (2 x N)",
        {"lr": LR_ADAM},
        requires=("adamp",),
    ),
    Entry(
        "adan",
        "Adam variants",
        lambda lr: lowrank.adan(lr),
        "adan(lr={lr})",
        "mu, delta, nu, previous gradient (4 x N)",
        {"lr": LR_ADAM},
        requires=("adan",),
    ),
    Entry(
        "ademamix",
        "Adam variants",
        lambda lr: lowrank.ademamix(lr),
        "ademamix(lr={lr})",
        "fast and slow EMA, nu (3 x N)",
        {"lr": LR_ADAM},
        requires=("ademamix",),
    ),
    Entry(
        "lookahead_adam",
        "Lookahead / Scout",
        lambda lr, sync_rate: lowrank.lookahead(optax.adam(lr), sync_rate=sync_rate),
        "lookahead(optax.adam({lr}), sync_rate={sync_rate}, sync_period=6)",
        "slow weights + Adam's mu, nu (3 x N)",
        {"lr": LR_ADAM, "sync_rate": (0.5, 0.2)},
        traced=("lr", "sync_rate"),
        requires=("lookahead",),
    ),
    Entry(
        "scout_adam",
        "Lookahead / Scout",
        lambda lr, sync_rate: lowrank.scout(optax.adam(lr), sync_rate=sync_rate),
        "scout(optax.adam({lr}), sync_rate={sync_rate}, sync_period=6)",
        "slow weights, Adam's mu, nu, window statistics (7 x N)",
        {"lr": LR_ADAM, "sync_rate": (0.5, 0.2)},
        traced=("lr", "sync_rate"),
        requires=("scout",),
        note=lambda hp: (
            "at sync_rate 0.5 its adaptive rate max(1 - C, 0.5) is at most 0.51 (6-step "
            "windows), so it trains almost exactly like lookahead_adam"
            if hp["sync_rate"] >= 0.5
            else ""
        ),
    ),
)


def available(registry: tuple[Entry, ...] | None = None) -> tuple[list[Entry], list[Entry]]:
    """Splits the registry into entries this library version provides and the rest."""
    present, missing = [], []
    for entry in REGISTRY if registry is None else registry:
        (present if all(hasattr(lowrank, a) for a in entry.requires) else missing).append(entry)
    return present, missing


def recorded_hparams(path: pathlib.Path = HPARAMS_FILE) -> dict[str, dict[str, Any]]:
    """The sweep's chosen hyperparameters per optimizer ({} if never swept)."""
    if not path.exists():
        return {}
    return {k: v["hparams"] for k, v in json.loads(path.read_text())["chosen"].items()}


def hparams_of(entry: Entry, recorded: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """``(hyperparameters, swept)``: the recorded sweep's choice, else the grid's first."""
    if entry.name in recorded and set(recorded[entry.name]) == set(entry.grid):
        return dict(recorded[entry.name]), True
    return {k: v[0] for k, v in entry.grid.items()}, False


def describe(entry: Entry, hp: dict[str, Any]) -> str:
    return entry.describe.format(
        **{k: f"{v:g}" if isinstance(v, float) else v for k, v in hp.items()}
    )


def make_step(entry: Entry, hp: dict[str, Any]) -> tuple[common.MakeTx, Callable[..., Any]]:
    """``(make_tx, jitted step)``; traced hyperparameters come from the ``hparams`` dict."""
    static = {k: v for k, v in hp.items() if k not in entry.traced}

    def make_tx(traced: dict[str, jax.Array]) -> optax.GradientTransformation:
        return entry.build(**static, **traced)

    return make_tx, common.make_train_step(make_tx, extra_args=entry.extra_args)


def train_runs(
    entry: Entry,
    hp: dict[str, Any],
    x: np.ndarray,
    y: np.ndarray,
    eval_sets: dict[str, tuple[np.ndarray, np.ndarray, int]],
    *,
    seeds: list[int],
    epochs: int,
    batch_size: int,
    time_steps: bool = False,
    step: tuple[common.MakeTx, Callable[..., Any]] | None = None,
    on_epoch: Callable[[int, int, dict[str, dict[str, float]]], None] | None = None,
) -> list[common.History]:
    """One training run per seed (initial weights and shuffling), same compiled step."""
    make_tx, step_fn = step if step is not None else make_step(entry, hp)
    traced = {k: v for k, v in hp.items() if k in entry.traced}
    runs = []
    for seed in seeds:
        runs.append(
            common.train(
                make_tx,
                common.init_params(seed),
                x,
                y,
                epochs=epochs,
                batch_size=batch_size,
                shuffle_seed=seed,
                eval_sets=eval_sets,
                hparams=traced,
                step_fn=step_fn,
                time_steps=time_steps,
                on_epoch=None if on_epoch is None else (lambda e, c, s=seed: on_epoch(s, e, c)),
            )
        )
    return runs


def warm_up(
    entry: Entry,
    hp: dict[str, Any],
    data: common.Mnist1d,
    eval_sets: dict[str, tuple[np.ndarray, np.ndarray, int]],
    batch_size: int,
) -> tuple[common.MakeTx, Callable[..., Any]]:
    """Compiles everything a run compiles (step, init, shuffling, evaluation): one epoch."""
    step = make_step(entry, hp)
    train_runs(
        entry, hp, data.x, data.y, eval_sets, seeds=[0], epochs=1, batch_size=batch_size,
        time_steps=True, step=step,
    )  # fmt: skip
    return step


def summarize(entry: Entry, hp: dict[str, Any], swept: bool, runs: list[common.History]) -> dict:
    def stat(split: str, metric: str) -> tuple[float, float]:
        finals = np.asarray([r.evals[split][metric][-1] for r in runs])
        return float(finals.mean()), float(finals.std())

    return {
        "name": entry.name,
        "family": entry.family,
        "hparams": hp,
        "swept": swept,
        "hyperparameters": describe(entry, hp),
        "state_holds": entry.state,
        "note": entry.note(hp) if callable(entry.note) else entry.note,
        "baseline": entry.name == BASELINE,
        "runs": [
            {
                "train_loss": r.evals["train"]["loss"],
                "test_loss": r.evals["test"]["loss"],
                "test_accuracy": r.evals["test"]["accuracy"],
                "ms_per_step": float(np.median(r.step_times_ms)) if r.step_times_ms else None,
                "opt_state_bytes": r.opt_state_bytes,
                "wall_time_s": r.wall_time_s,
            }
            for r in runs
        ],
        "final_train_loss": stat("train", "loss"),
        "final_test_loss": stat("test", "loss"),
        "final_test_accuracy": stat("test", "accuracy"),
        "ms_per_step": float(np.median([r.step_times_ms for r in runs])),
        "opt_state_bytes": runs[0].opt_state_bytes,
    }


def identical_pairs(results: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Pairs of optimizers whose test-accuracy curves agree to 1e-6 on every seed."""
    pairs = []
    for i, a in enumerate(results):
        for b in results[i + 1 :]:
            ca = np.asarray([r["test_accuracy"] for r in a["runs"]])
            cb = np.asarray([r["test_accuracy"] for r in b["runs"]])
            la = np.asarray([r["train_loss"] for r in a["runs"]])
            lb = np.asarray([r["train_loss"] for r in b["runs"]])
            if ca.shape == cb.shape and np.allclose(ca, cb, atol=1e-6) and np.allclose(la, lb):
                pairs.append((a["name"], b["name"]))
    return pairs


def notes_for(results: list[dict[str, Any]]) -> list[str]:
    """Notes: every optimizer > GAP below AdamW, every identical pair, unswept entries."""
    base = next((r for r in results if r["baseline"]), None)
    notes = []
    for r in results:
        gap = None if base is None else base["final_test_accuracy"][0] - r["final_test_accuracy"][0]
        if r["note"]:
            notes.append(f"{r['name']}: {r['note']}.")
        elif gap is not None and gap > GAP:
            notes.append(
                f"{r['name']}: {gap:.3f} below AdamW's test accuracy and no explanation is "
                "recorded (add a note to its registry entry)."
            )
        if not r["swept"]:
            notes.append(f"{r['name']}: not in the recorded sweep; ran the grid's first values.")
    for a, b in identical_pairs(results):
        notes.append(f"{a} and {b} train identically at these settings (same curves).")
    return notes


def format_tables(results: list[dict[str, Any]], n_seeds: int) -> str:
    """Results table, configuration table and notes; every line under 100 columns."""
    base = next((r for r in results if r["baseline"]), None)
    base_bytes = base["opt_state_bytes"] if base else None
    base_acc = base["final_test_accuracy"][0] if base else None

    def pm(v: tuple[float, float], digits: int) -> str:
        return f"{v[0]:.{digits}f}" + (f" ± {v[1]:.{digits}f}" if n_seeds > 1 else "")

    lines = [
        "| optimizer | test acc | vs AdamW | test loss | train loss | ms/step | state |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        delta = "" if base_acc is None else f"{r['final_test_accuracy'][0] - base_acc:+.3f}"
        state = "" if not base_bytes else f"{r['opt_state_bytes'] / base_bytes:.2f}x"
        lines.append(
            f"| {r['name']} | {pm(r['final_test_accuracy'], 3)} | {delta} | "
            f"{pm(r['final_test_loss'], 3)} | {pm(r['final_train_loss'], 3)} | "
            f"{r['ms_per_step']:.2f} | {state} |"
        )
    if base_bytes:
        lines.append("")
        lines.append(f"state: optimizer-state bytes / AdamW's ({base_bytes:,} bytes).")
    lines += ["", "| optimizer | hyperparameters (recorded sweep) |", "|---|---|"]
    lines += [f"| {r['name']} | {r['hyperparameters']} |" for r in results]
    lines += ["", "| optimizer | state holds (N parameters) |", "|---|---|"]
    lines += [f"| {r['name']} | {r['state_holds']} |" for r in results]
    notes = notes_for(results)
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"* {n}" for n in notes]
    return "\n".join(_wrap(line) for line in lines)


def _wrap(line: str, width: int = 99) -> str:
    """Wraps a prose line (not a table row) at ``width`` columns."""
    if len(line) <= width or line.startswith("|"):
        return line
    import textwrap

    indent = "  " if line.startswith("* ") else ""
    return textwrap.fill(line, width=width, subsequent_indent=indent)


def plot(results: list[dict[str, Any]], path: pathlib.Path, n_seeds: int) -> None:
    """Per family, test accuracy and train loss against the AdamW baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    base = next((r for r in results if r["baseline"]), None)
    families = [f for f in FAMILIES if any(r["family"] == f for r in results)]
    if not families:
        families = ["baseline"]
    cols = 2
    rows = -(-len(families) // cols)
    fig, axes = plt.subplots(
        rows, 2 * cols, figsize=(15, 3.1 * rows), squeeze=False, layout="constrained"
    )
    same = {b: a for a, b in identical_pairs(results)}
    means = [np.mean([r["test_accuracy"] for r in x["runs"]], 0) for x in results]
    acc_top = max(float(m.max()) for m in means)
    acc_bottom = max(0.0, np.floor(min(float(m.min()) for m in means) * 20 - 1) / 20)
    for i, family in enumerate(families):
        ax_acc, ax_loss = axes[i // cols, 2 * (i % cols)], axes[i // cols, 2 * (i % cols) + 1]
        members = [r for r in results if r["family"] == family and not r["baseline"]]
        lines = [("AdamW (baseline)", base, dict(color="0.35", lw=2.2, ls="-", zorder=1))]
        lines = lines if base is not None else []
        for k, r in enumerate(members):
            label = r["name"] + (f" (= {same[r['name']]})" if r["name"] in same else "")
            style = dict(color=f"C{k}", lw=1.6, ls=LINESTYLES[k % len(LINESTYLES)], zorder=2)
            lines.append((label, r, style))
        for label, r, style in lines:
            for ax, key in ((ax_acc, "test_accuracy"), (ax_loss, "train_loss")):
                curves = np.asarray([run[key] for run in r["runs"]])
                epochs = np.arange(1, curves.shape[1] + 1)
                ax.plot(epochs, curves.mean(0), label=label, **style)
                if n_seeds > 1:
                    lo, hi = curves.min(0), curves.max(0)
                    ax.fill_between(epochs, lo, hi, color=style["color"], alpha=0.12, lw=0)
        ax_acc.set_title(f"{family}: test accuracy", fontsize=10)
        ax_loss.set_title(f"{family}: train loss", fontsize=10)
        ax_acc.set_ylabel("test accuracy")
        ax_loss.set_ylabel("train loss (log scale)")
        ax_loss.set_yscale("log")
        ax_loss.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax_loss.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax_loss.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax_acc.set_ylim(acc_bottom, min(1.0, acc_top + 0.03))
        for ax in (ax_acc, ax_loss):
            ax.set_xlabel("epoch")
            ax.grid(True, alpha=0.35)
        ax_acc.legend(fontsize=8, loc="lower right", framealpha=0.9)
    for k in range(len(families), rows * cols):
        axes[k // cols, 2 * (k % cols)].set_axis_off()
        axes[k // cols, 2 * (k % cols) + 1].set_axis_off()
    spread = "band: min-max over seeds, " if n_seeds > 1 else ""
    fig.suptitle(
        f"mnist1d MLP, every lowrank_optax optimizer against AdamW "
        f"({spread}line: mean over {n_seeds} seed(s))"
    )
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    names = [e.name for e in REGISTRY]
    p = argparse.ArgumentParser(
        description="Train the mnist1d MLP with every lowrank_optax optimizer and AdamW."
    )
    p.add_argument(
        "--optimizers",
        default="all",
        help=f"comma-separated subset of: {', '.join(names)} (default: all available)",
    )
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seeds", type=int, default=2, help="number of seeds (0, 1, ...)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--samples", type=int, default=common.DEFAULT_NUM_SAMPLES)
    p.add_argument("--hparams", type=pathlib.Path, default=HPARAMS_FILE)
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("outputs"))
    p.add_argument("--list", action="store_true", help="list the registry and exit")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    args = p.parse_args(argv)
    if args.optimizers != "all":
        chosen = [s.strip() for s in args.optimizers.split(",") if s.strip()]
        unknown = sorted(set(chosen) - set(names))
        if unknown:
            p.error(f"unknown optimizer(s) {unknown}; choose from {names}")
        args.optimizers = chosen
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from tqdm.auto import tqdm

    args = parse_args(argv)
    present, missing = available()
    recorded = recorded_hparams(args.hparams)
    if args.list:
        for e in REGISTRY:
            status = "available" if e in present else "not in this library version"
            hp, swept = hparams_of(e, recorded)
            print(f"{e.name:16s} {status:28s} {describe(e, hp)}" + ("" if swept else " (unswept)"))
        return {}
    if args.optimizers != "all":
        chosen = set(args.optimizers)
        missing = [e for e in missing if e.name in chosen]
        present = [e for e in present if e.name in chosen]
    for e in missing:
        print(f"skip {e.name}: lowrank_optax has no {', '.join(e.requires)} yet")
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = common.load_mnist1d(num_samples=args.samples)
    seeds = list(range(args.seeds))
    eval_sets = {
        "train": (data.x, data.y, len(data.y)),  # one batch: exact dataset means
        "test": (data.x_test, data.y_test, len(data.y_test)),
    }
    print(
        f"mnist1d {len(data.y)} train / {len(data.y_test)} test; {len(present)} optimizers x "
        f"{len(seeds)} seed(s) x {args.epochs} epochs, batch {args.batch_size}"
    )

    failures: dict[str, str] = {}

    def failed(entry: Entry, exc: Exception) -> None:
        failures[entry.name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        traceback.print_exc(limit=3, file=sys.stderr)

    # Compile every step first, so the training bar's ETA measures training only.
    compiled = {}
    for entry in tqdm(present, desc="compiling", unit="opt", disable=args.no_progress):
        try:
            hp, swept = hparams_of(entry, recorded)
            compiled[entry.name] = (hp, swept, warm_up(entry, hp, data, eval_sets, args.batch_size))
        except Exception as exc:  # an optimizer that does not work is reported, not fatal
            failed(entry, exc)
    ready = [e for e in present if e.name in compiled]
    bar = tqdm(total=len(ready) * len(seeds) * args.epochs, unit="epoch", disable=args.no_progress)
    results = []
    done = {"epochs": 0}

    def on_epoch(seed: int, epoch: int, cur: dict[str, dict[str, float]]) -> None:
        bar.set_postfix_str(f"seed={seed} test_acc={cur['test']['accuracy']:.3f}")
        done["epochs"] += 1
        bar.update(1)

    for entry in ready:
        hp, swept, step = compiled[entry.name]
        bar.set_description(entry.name)
        done["epochs"] = 0

        try:
            runs = train_runs(
                entry,
                hp,
                data.x,
                data.y,
                eval_sets,
                seeds=seeds,
                epochs=args.epochs,
                batch_size=args.batch_size,
                time_steps=True,
                step=step,
                on_epoch=on_epoch,
            )
            results.append(summarize(entry, hp, swept, runs))
        except Exception as exc:  # an optimizer that does not work is reported, not fatal
            failed(entry, exc)
            bar.update(len(seeds) * args.epochs - done["epochs"])
    bar.close()
    for name, why in failures.items():
        print(f"FAILED {name}: {why}")
    table = format_tables(results, len(seeds))
    print(table)
    png = args.out / "compare_optimizers.png"
    if results:
        plot(results, png, len(seeds))
    summary = {
        "data": data.args,
        "epochs": args.epochs,
        "seeds": seeds,
        "batch_size": args.batch_size,
        "hparams_file": str(args.hparams),
        "results": results,
        "failed": failures,
        "not_available": [e.name for e in missing],
        "table_markdown": table,
        "environment": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "optax": optax.__version__,
            "backend": jax.default_backend(),
        },
        "total_wall_time_s": time.perf_counter() - start,
    }
    (args.out / "compare_optimizers.md").write_text(table + "\n")
    (args.out / "compare_optimizers.json").write_text(json.dumps(summary, indent=1))
    print(f"saved {png}, compare_optimizers.md/.json in {args.out}/ ")
    print(f"total {summary['total_wall_time_s']:.1f}s")
    return summary


if __name__ == "__main__":
    main()
