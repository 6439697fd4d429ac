"""The main job: train the mnist1d MLP with every optimizer in lowrank_optax.

Trains the MLP 40 -> 128 -> 64 -> 10 on mnist1d (generated offline: 2000 train /
1000 test) with ``optax.adamw`` as the baseline and every optimizer of the library
that this installed version provides, each with fixed, sensible hyperparameters
(no tuning). Shows a progress bar, prints a table (final train loss, test loss and
accuracy, milliseconds per jitted step with params and state donated, measured
after warm-up, and optimizer-state bytes) and saves the curves as a PNG, plus the
table (Markdown) and all numbers (JSON), in ``--out`` (default ``outputs/``).

Optimizers are discovered from ``REGISTRY``: an entry runs only if the library has
the names it needs (``hasattr(lowrank, name)``), so the comparison grows with the
library; an optimizer that fails to build or train is reported and skipped.

Usage::

    python3 examples/compare_optimizers.py                         # everything
    python3 examples/compare_optimizers.py --optimizers adamw,lrg_adam --epochs 5 --seeds 2
    python3 examples/compare_optimizers.py --list                   # what is available
"""

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

LR = 3e-3  # one learning rate for the Adam-like methods (mnist1d MLP, batch 64)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One optimizer of the comparison."""

    name: str
    build: Callable[[], optax.GradientTransformation]
    hyperparameters: str
    requires: tuple[str, ...] = ()  # attributes of ``lowrank_optax`` it needs
    extra_args: bool = False  # update() needs value_fn / grad_fn closures
    baseline: bool = False


REGISTRY: tuple[Entry, ...] = (
    Entry(
        "adamw",
        lambda: optax.adamw(LR, weight_decay=1e-4),
        f"optax.adamw(lr={LR}, weight_decay=1e-4)",
        baseline=True,
    ),
    Entry(
        "lrg_adam",
        lambda: lowrank.lrg_adam(LR, rank=20),
        f"lrg_adam(lr={LR}, rank=20)",
        requires=("lrg_adam",),
    ),
    Entry(
        "galore_adamw",
        lambda: lowrank.galore_adamw(LR, rank=16, update_proj_gap=50),
        f"galore_adamw(lr={LR}, rank=16, update_proj_gap=50), 2-D kernels projected",
        requires=("galore_adamw",),
    ),
    Entry(
        "lorenza",
        lambda: lowrank.lorenza(LR, rank=16, update_proj_gap=50),
        f"lorenza(lr={LR}, rank=16, update_proj_gap=50, rho=0.05, mu=1e-3)",
        requires=("lorenza",),
        extra_args=True,
    ),
    Entry("lre", lambda: lowrank.lre(LR), f"lre(lr={LR}) with its defaults", requires=("lre",)),
    Entry(
        "lars",
        lambda: lowrank.lars(0.003, momentum=0.9),
        "lars(lr=0.003, momentum=0.9, trust_coefficient=1.0)",
        requires=("lars",),
    ),
    Entry("lamb", lambda: lowrank.lamb(LR), f"lamb(lr={LR})", requires=("lamb",)),
    Entry("ralars", lambda: lowrank.ralars(LR), f"ralars(lr={LR})", requires=("ralars",)),
    Entry("tadam", lambda: lowrank.tadam(LR), f"tadam(lr={LR})", requires=("tadam",)),
    Entry(
        "adabelief", lambda: lowrank.adabelief(LR), f"adabelief(lr={LR})", requires=("adabelief",)
    ),
    Entry("adamp", lambda: lowrank.adamp(LR), f"adamp(lr={LR})", requires=("adamp",)),
    Entry("adan", lambda: lowrank.adan(LR), f"adan(lr={LR})", requires=("adan",)),
    Entry("ademamix", lambda: lowrank.ademamix(LR), f"ademamix(lr={LR})", requires=("ademamix",)),
    Entry(
        "lookahead_adam",
        lambda: lowrank.lookahead(optax.adam(LR)),
        f"lookahead(optax.adam({LR}), sync_rate=0.5, sync_period=6)",
        requires=("lookahead",),
    ),
    Entry(
        "scout_adam",
        lambda: lowrank.scout(optax.adam(LR)),
        f"scout(optax.adam({LR}), sync_rate=0.5, sync_period=6)",
        requires=("scout",),
    ),
)


def available(registry: tuple[Entry, ...] | None = None) -> tuple[list[Entry], list[Entry]]:
    """Splits the registry into entries this library version provides and the rest."""
    present, missing = [], []
    for entry in REGISTRY if registry is None else registry:
        (present if all(hasattr(lowrank, a) for a in entry.requires) else missing).append(entry)
    return present, missing


def run_entry(
    entry: Entry,
    data: common.Mnist1d,
    *,
    seeds: list[int],
    epochs: int,
    batch_size: int,
    on_epoch: Callable[[str, int, int, dict[str, dict[str, float]]], None],
) -> dict[str, Any]:
    tx = entry.build()
    make_tx = lambda hparams: tx  # noqa: E731 - fixed hyperparameters, nothing traced
    step = common.make_train_step(make_tx, extra_args=entry.extra_args)
    n_train, n_test = len(data.y), len(data.y_test)
    runs = []
    for seed in seeds:
        history = common.train(
            make_tx,
            common.init_params(seed),
            data.x,
            data.y,
            epochs=epochs,
            batch_size=batch_size,
            shuffle_seed=seed,
            eval_sets={
                "train": (data.x, data.y, n_train),  # one batch: exact dataset means
                "test": (data.x_test, data.y_test, n_test),
            },
            step_fn=step,
            time_steps=True,
            on_epoch=lambda epoch, cur, seed=seed: on_epoch(entry.name, seed, epoch, cur),
        )
        runs.append(
            {
                "seed": seed,
                "train_loss": history.evals["train"]["loss"],
                "test_loss": history.evals["test"]["loss"],
                "test_accuracy": history.evals["test"]["accuracy"],
                "ms_per_step": float(np.median(history.step_times_ms)),
                "opt_state_bytes": history.opt_state_bytes,
                "wall_time_s": history.wall_time_s,
            }
        )

    def stat(key: str) -> tuple[float, float]:
        finals = np.asarray([r[key][-1] for r in runs])
        return float(finals.mean()), float(finals.std())

    return {
        "name": entry.name,
        "hyperparameters": entry.hyperparameters,
        "baseline": entry.baseline,
        "runs": runs,
        "final_train_loss": stat("train_loss"),
        "final_test_loss": stat("test_loss"),
        "final_test_accuracy": stat("test_accuracy"),
        "ms_per_step": float(np.median([r["ms_per_step"] for r in runs])),
        "opt_state_bytes": runs[0]["opt_state_bytes"],
    }


def format_table(results: list[dict[str, Any]], n_seeds: int) -> str:
    def pm(v: tuple[float, float], digits: int = 4) -> str:
        return f"{v[0]:.{digits}f}" + (f" ± {v[1]:.{digits}f}" if n_seeds > 1 else "")

    header = "| optimizer | train loss | test loss | test acc | ms/step | state bytes | hparams |"
    lines = [header, "|" + "---|" * 7]
    for r in results:
        name = r["name"] + (" (baseline)" if r["baseline"] else "")
        lines.append(
            f"| {name} | {pm(r['final_train_loss'])} | {pm(r['final_test_loss'])} | "
            f"{pm(r['final_test_accuracy'], 3)} | {r['ms_per_step']:.2f} | "
            f"{r['opt_state_bytes']:,} | {r['hyperparameters']} |"
        )
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: pathlib.Path, n_seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("train_loss", "train loss"), ("test_loss", "test loss"), ("test_accuracy", "acc"))
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(results), 2)))
    for color, r in zip(colors, results, strict=False):
        for ax, (key, _) in zip(axes, panels, strict=True):
            curves = np.asarray([run[key] for run in r["runs"]])
            epochs = np.arange(1, curves.shape[1] + 1)
            style = dict(color="black", lw=2.5) if r["baseline"] else dict(color=color, lw=1.4)
            ax.plot(epochs, curves.mean(0), label=r["name"], **style)
            if n_seeds > 1:
                lo, hi = curves.mean(0) - curves.std(0), curves.mean(0) + curves.std(0)
                ax.fill_between(epochs, lo, hi, color=style["color"], alpha=0.12)
    titles = ("train loss (full training set)", "test loss", "test accuracy")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.4)
    axes[0].set_yscale("log")
    axes[2].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"mnist1d MLP, every lowrank_optax optimizer (mean over {n_seeds} seed(s))")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
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
    if args.list:
        for e in REGISTRY:
            status = "available" if e in present else "not in this library version"
            print(f"{e.name:16s} {status:28s} {e.hyperparameters}")
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
    print(
        f"mnist1d {len(data.y)} train / {len(data.y_test)} test; {len(present)} optimizers x "
        f"{len(seeds)} seed(s) x {args.epochs} epochs, batch {args.batch_size}"
    )
    bar = tqdm(
        total=len(present) * len(seeds) * args.epochs, unit="epoch", disable=args.no_progress
    )

    done: dict[str, int] = {}

    def on_epoch(name: str, seed: int, epoch: int, cur: dict[str, dict[str, float]]) -> None:
        bar.set_postfix_str(f"{name} seed={seed} test_loss={cur['test']['loss']:.3f}")
        done[name] = done.get(name, 0) + 1
        bar.update(1)

    results, failures = [], {}
    for entry in present:
        bar.set_description(entry.name)
        try:
            results.append(
                run_entry(
                    entry,
                    data,
                    seeds=seeds,
                    epochs=args.epochs,
                    batch_size=args.batch_size,
                    on_epoch=on_epoch,
                )
            )
        except Exception as exc:  # an optimizer that does not work is reported, not fatal
            failures[entry.name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            traceback.print_exc(limit=3, file=sys.stderr)
            bar.update(len(seeds) * args.epochs - done.get(entry.name, 0))
    bar.close()
    for name, why in failures.items():
        print(f"FAILED {name}: {why}")
    table = format_table(results, len(seeds))
    print(table)
    png = args.out / "compare_optimizers.png"
    if results:
        plot(results, png, len(seeds))
    summary = {
        "data": data.args,
        "epochs": args.epochs,
        "seeds": seeds,
        "batch_size": args.batch_size,
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
