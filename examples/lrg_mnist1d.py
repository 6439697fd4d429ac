"""LRG-Adam vs Adam on mnist1d: the library's reproduction of the published experiment.

Protocol (``docs/guides/lrg_mnist1d_report.rst`` has the measured numbers):

* data: mnist1d generated offline with ``make_dataset`` (3000 samples, train_split
  2/3, seed 42 -> 2000 train / 1000 test);
* model: MLP 40 -> 128 -> ReLU -> 64 -> ReLU -> 10 (Flax Linen, torch-like uniform
  init), cross-entropy, float32;
* tuning (seed-faithful): Optuna ``TPESampler(seed=42)``, 15 trials per optimizer;
  Adam: lr ~ logU(1e-5, 1e-1); LRG-Adam: the same lr range and rank in int [2, 20];
  first 1000 training samples, batch 32, 5 epochs; objective = minimum over epochs
  of the mean batch loss on that same tuning set; every trial starts from the same
  initial weights (seed 42), as the reference deep-copies one template model;
* final runs: 20 epochs, batch 64, both optimizers with their best hyperparameters,
  per-epoch mean test-batch loss ("validation loss", batch 64) and accuracy,
  repeated over several seeds (initial weights and shuffling);
* LRG-Adam flattens the gradient in torch order and layout (``flatten_fn``) and
  truncates with LAPACK's exact SVD (``projector='svd'``), as the PyTorch reference
  does; a third final run, ``lrg_adam_randomized``, repeats LRG-Adam with the same
  hyperparameters and the library's default randomized projector, to compare the
  two (``--no-randomized`` skips it).

Outputs (in ``--out``): ``lrg_mnist1d.json`` (everything) and
``lrg_mnist1d_val_loss.png`` (validation loss, mean +- one standard deviation over
seeds).

Usage::

    python3 examples/lrg_mnist1d.py                       # full experiment
    python3 examples/lrg_mnist1d.py --trials 2 --tune-epochs 1 --epochs 1 --seeds 1 \\
        --samples 300 --out /tmp/lrg_tiny                 # smoke run
"""

import argparse
import json
import pathlib
import platform
import sys
import time
from typing import Any

import jax
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import mnist1d_common as common  # noqa: E402

import lowrank_optax as lowrank  # noqa: E402

PUBLISHED = {
    "adam": {"lr": 0.0059},
    "lrg_adam": {"lr": 0.0064, "rank": 20},
    "conclusion": "very similar; Adam slightly better (lower loss) in the final epochs",
}
LABELS = {
    "adam": "Adam",
    "lrg_adam": "LRG-Adam (exact SVD)",
    "lrg_adam_randomized": "LRG-Adam (randomized)",
}
PROJECTORS = {"lrg_adam": "svd", "lrg_adam_randomized": "randomized"}


_STEPS: dict[tuple[str, int | None], Any] = {}


def compiled_step(name: str, rank: int | None) -> Any:
    """One jitted train step per (optimizer, rank), shared by tuning and final runs."""
    if (name, rank) not in _STEPS:
        _STEPS[name, rank] = common.make_train_step(make_tx_factory(name, rank))
    return _STEPS[name, rank]


def make_tx_factory(name: str, rank: int | None = None) -> common.MakeTx:
    """``hparams -> tx``; the learning rate is a traced hyperparameter (no recompiles)."""
    if name == "adam":
        return lambda h: optax.adam(h["lr"])
    if name in PROJECTORS:
        return lambda h: lowrank.lrg_adam(
            h["lr"], rank=rank, flatten_fn=common.torch_order_flatten, projector=PROJECTORS[name]
        )
    raise ValueError(f"unknown optimizer {name!r}")


def tune(
    name: str,
    data: common.Mnist1d,
    params0: Any,
    *,
    trials: int,
    epochs: int,
    tune_samples: int,
    batch_size: int,
    sampler_seed: int,
    shuffle_seed: int,
) -> dict[str, Any]:
    """Seed-faithful Optuna tuning: minimum epoch loss on the tuning set itself."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    x, y = data.x[:tune_samples], data.y[:tune_samples]

    def objective(trial: "optuna.Trial") -> float:
        lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        rank = trial.suggest_int("rank", 2, 20) if name == "lrg_adam" else None
        history = common.train(
            make_tx_factory(name, rank),
            params0,
            x,
            y,
            epochs=epochs,
            batch_size=batch_size,
            shuffle_seed=shuffle_seed,
            eval_sets={"tune": (x, y, batch_size)},
            hparams={"lr": lr},
            step_fn=compiled_step(name, rank),
        )
        losses = history.evals["tune"]["loss"]
        trial.set_user_attr("epoch_losses", losses)
        value = float(np.nanmin(losses)) if np.any(np.isfinite(losses)) else float("inf")
        return value

    start = time.perf_counter()
    study = optuna.create_study(
        direction="minimize", sampler=optuna.samplers.TPESampler(seed=sampler_seed)
    )
    study.optimize(objective, n_trials=trials)
    return {
        "best_params": dict(study.best_trial.params),
        "best_value": float(study.best_value),
        "wall_time_s": time.perf_counter() - start,
        "trials": [
            {
                "number": t.number,
                "params": dict(t.params),
                "value": float(t.value),
                "epoch_losses": t.user_attrs.get("epoch_losses"),
            }
            for t in study.trials
        ],
    }


def final_runs(
    name: str,
    best: dict[str, Any],
    data: common.Mnist1d,
    *,
    seeds: list[int],
    epochs: int,
    batch_size: int,
) -> dict[str, Any]:
    make_tx = make_tx_factory(name, best.get("rank"))
    step = compiled_step(name, best.get("rank"))
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
            eval_sets={"test": (data.x_test, data.y_test, batch_size)},
            hparams={"lr": best["lr"]},
            step_fn=step,
        )
        runs.append(
            {
                "seed": seed,
                "val_loss": history.evals["test"]["loss"],
                "val_accuracy": history.evals["test"]["accuracy"],
                "train_batch_loss": history.train_batch_loss,
                "wall_time_s": history.wall_time_s,
            }
        )
    val = np.asarray([r["val_loss"] for r in runs])
    acc = np.asarray([r["val_accuracy"] for r in runs])
    return {
        "hyperparameters": best,
        "runs": runs,
        "val_loss_mean": val.mean(0).tolist(),
        "val_loss_std": val.std(0).tolist(),
        "val_accuracy_mean": acc.mean(0).tolist(),
        "val_accuracy_std": acc.std(0).tolist(),
        "wall_time_s": float(sum(r["wall_time_s"] for r in runs)),
    }


def plot(results: dict[str, Any], path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, res in results.items():
        mean = np.asarray(res["val_loss_mean"])
        std = np.asarray(res["val_loss_std"])
        epochs = np.arange(1, len(mean) + 1)
        hp = res["hyperparameters"]
        label = f"{LABELS[name]} (lr={hp['lr']:.2g}" + (
            f", rank={hp['rank']})" if "rank" in hp else ")"
        )
        ax.plot(epochs, mean, marker="o", ms=3, label=label)
        ax.fill_between(epochs, mean - std, mean + std, alpha=0.25)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss (mean test-batch CE)")
    ax.set_title(title)
    ax.grid(True, alpha=0.4)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="LRG-Adam vs Adam on mnist1d (Optuna + final runs).")
    p.add_argument("--trials", type=int, default=15, help="Optuna trials per optimizer")
    p.add_argument("--tune-epochs", type=int, default=5)
    p.add_argument("--tune-samples", type=int, default=1000, help="first N training samples")
    p.add_argument("--tune-batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=20, help="epochs of the final runs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seeds", type=int, default=5, help="number of final-run seeds (42, 43, ...)")
    p.add_argument("--samples", type=int, default=common.DEFAULT_NUM_SAMPLES)
    p.add_argument("--sampler-seed", type=int, default=42)
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("outputs/lrg_mnist1d"))
    p.add_argument(
        "--no-randomized",
        action="store_true",
        help="skip the final runs of LRG-Adam with the randomized projector",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    data = common.load_mnist1d(num_samples=args.samples)
    tune_samples = min(args.tune_samples, len(data.y))
    print(
        f"mnist1d: {len(data.y)} train / {len(data.y_test)} test "
        f"(make_dataset, num_samples={args.samples}, train_split=2/3, seed=42)"
    )
    tune_params0 = common.init_params(42)
    tuning, finals = {}, {}
    for name in ("adam", "lrg_adam"):
        tuning[name] = tune(
            name,
            data,
            tune_params0,
            trials=args.trials,
            epochs=args.tune_epochs,
            tune_samples=tune_samples,
            batch_size=args.tune_batch_size,
            sampler_seed=args.sampler_seed,
            shuffle_seed=42,
        )
        print(
            f"[tune] {LABELS[name]}: best {tuning[name]['best_params']} "
            f"(objective {tuning[name]['best_value']:.4f}, {tuning[name]['wall_time_s']:.1f}s)"
        )
    seeds = [42 + i for i in range(args.seeds)]
    finalists = ("adam", "lrg_adam") + (() if args.no_randomized else ("lrg_adam_randomized",))
    for name in finalists:
        finals[name] = final_runs(
            name,
            tuning["lrg_adam" if name in PROJECTORS else name]["best_params"],
            data,
            seeds=seeds,
            epochs=args.epochs,
            batch_size=args.batch_size,
        )
        m = finals[name]
        print(
            f"[final] {LABELS[name]}: val loss last {m['val_loss_mean'][-1]:.4f} "
            f"+- {m['val_loss_std'][-1]:.4f}, min {min(m['val_loss_mean']):.4f}, "
            f"acc last {m['val_accuracy_mean'][-1]:.4f} ({m['wall_time_s']:.1f}s)"
        )
    png = args.out / "lrg_mnist1d_val_loss.png"
    plot(
        finals,
        png,
        f"mnist1d MLP: validation loss, mean $\\pm$ 1 std over {len(seeds)} seed(s)",
    )
    result = {
        "published": PUBLISHED,
        "data": data.args,
        "protocol": {
            "tuning": {
                "sampler": f"optuna.samplers.TPESampler(seed={args.sampler_seed})",
                "trials": args.trials,
                "epochs": args.tune_epochs,
                "samples": tune_samples,
                "batch_size": args.tune_batch_size,
                "objective": "min over epochs of the mean batch loss on the tuning set",
                "search_space": {"lr": "logU(1e-5, 1e-1)", "rank": "int [2, 20] (LRG-Adam)"},
                "init_seed": 42,
            },
            "final": {"epochs": args.epochs, "batch_size": args.batch_size, "seeds": seeds},
            "lrg_flatten": "torch order and layout (examples/mnist1d_common.torch_order_flatten)",
            "lrg_projector": "tuning and lrg_adam: 'svd'; lrg_adam_randomized: 'randomized' "
            "with lrg_adam's tuned hyperparameters",
        },
        "tuning": tuning,
        "final": finals,
        "environment": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "optax": optax.__version__,
            "backend": jax.default_backend(),
            "cpu_count": __import__("os").cpu_count(),
        },
        "total_wall_time_s": time.perf_counter() - t_start,
        "argv": sys.argv[1:] if argv is None else list(argv),
    }
    json_path = args.out / "lrg_mnist1d.json"
    json_path.write_text(json.dumps(result, indent=1))
    print(f"wrote {json_path} and {png} ({result['total_wall_time_s']:.1f}s total)")
    return result


if __name__ == "__main__":
    main()
