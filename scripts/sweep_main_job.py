"""Hyperparameter sweep of the main job (writes ``examples/main_job_hparams.json``).

For every optimizer of ``examples/compare_optimizers.py``'s ``REGISTRY``, every
combination of its ``grid`` is trained as in the main job (the mnist1d MLP, 20
epochs, batch 64) on the first 1500 training samples and evaluated on the other
500 (a validation split: the test set is never seen), for seeds 0 and 1. The chosen
combination has the highest mean final validation accuracy (ties: the lower mean
final validation loss). The script writes the choices and every result to the JSON
file that the main job reads, and prints the sweep table in Markdown (one row per
optimizer and non-learning-rate setting, one column per learning rate, the mean
final validation accuracy in each cell, ``*`` on the choice); ``docs/guides/main_job.rst``
records it. A choice on the edge of its learning-rate grid is flagged.

``--update-norms`` instead prints, for the chosen hyperparameters, the median norm
of one step's update divided by the learning rate (steps 50-200 of a training run):
how far an optimizer moves per unit of learning rate, which explains why LRE needs
a learning rate ~30-100 times Adam's.

Usage::

    python3 scripts/sweep_main_job.py                          # every optimizer (~5 min)
    python3 scripts/sweep_main_job.py --optimizers lre,lars    # update some entries
    python3 scripts/sweep_main_job.py --update-norms --optimizers adamw,lre
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import sys
import time
from typing import Any

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import compare_optimizers as main_job  # noqa: E402
import mnist1d_common as common  # noqa: E402

TRAIN, VALID = 1500, 500  # split of the 2000 training samples


def combinations(entry: main_job.Entry) -> list[dict[str, Any]]:
    """Every combination of the grid, static settings outermost (one compile each)."""
    static = [k for k in entry.grid if k not in entry.traced]
    traced = [k for k in entry.grid if k in entry.traced]
    keys = static + traced
    return [
        dict(zip(keys, values, strict=True))
        for values in itertools.product(*(entry.grid[k] for k in keys))
    ]


def sweep_entry(
    entry: main_job.Entry, data: common.Mnist1d, seeds: list[int], epochs: int, batch_size: int
) -> list[dict[str, Any]]:
    x, y = data.x[:TRAIN], data.y[:TRAIN]
    eval_sets = {"valid": (data.x[TRAIN:], data.y[TRAIN:], VALID)}
    rows, steps = [], {}
    for hp in combinations(entry):
        static_key = tuple((k, v) for k, v in hp.items() if k not in entry.traced)
        if static_key not in steps:
            steps[static_key] = main_job.make_step(entry, hp)
        t0 = time.perf_counter()
        runs = main_job.train_runs(
            entry,
            hp,
            x,
            y,
            eval_sets,
            seeds=seeds,
            epochs=epochs,
            batch_size=batch_size,
            step=steps[static_key],
        )
        acc = [r.evals["valid"]["accuracy"][-1] for r in runs]
        loss = [r.evals["valid"]["loss"][-1] for r in runs]
        rows.append(
            {
                "hparams": hp,
                "valid_accuracy": float(np.mean(acc)),
                "valid_accuracy_per_seed": acc,
                "valid_loss": float(np.nan_to_num(np.mean(loss), nan=np.inf)),
                "wall_time_s": time.perf_counter() - t0,
            }
        )
        print(
            f"  {main_job.describe(entry, hp):70s} valid acc {rows[-1]['valid_accuracy']:.3f} "
            f"loss {rows[-1]['valid_loss']:.3f}",
            flush=True,
        )
    return rows


def choose(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return max(rows, key=lambda r: (round(r["valid_accuracy"], 6), -r["valid_loss"]))


def on_lr_edge(entry: main_job.Entry, hp: dict[str, Any]) -> bool:
    grid = sorted(entry.grid["lr"])
    return len(grid) > 1 and hp["lr"] in (grid[0], grid[-1])


def update_norms(entry: main_job.Entry, data: common.Mnist1d, steps: int = 200) -> float:
    """Median ``||update|| / lr`` over steps 50..``steps`` at the recorded hyperparameters."""
    import jax
    import jax.numpy as jnp
    import optax

    hp, _ = main_job.hparams_of(entry, main_job.recorded_hparams())
    tx = entry.build(**hp)
    x, y = jnp.asarray(data.x[:TRAIN]), jnp.asarray(data.y[:TRAIN])

    @jax.jit
    def step(params: Any, state: Any, idx: jax.Array) -> tuple[Any, Any, jax.Array]:
        def loss(p: Any) -> jax.Array:
            return common.batch_loss(p, x[idx], y[idx], jnp.ones(idx.shape))

        kwargs = {"value_fn": loss, "grad_fn": jax.grad(loss)} if entry.extra_args else {}
        updates, state = tx.update(jax.grad(loss)(params), state, params, **kwargs)
        return optax.apply_updates(params, updates), state, optax.tree.norm(updates)

    params = common.init_params(0)
    state = tx.init(params)
    rng = np.random.default_rng(0)
    norms = []
    for _ in range(steps):
        params, state, norm = step(params, state, jnp.asarray(rng.integers(0, TRAIN, 64)))
        norms.append(float(norm) / hp["lr"])
    return float(np.median(norms[50:]))


def markdown(results: dict[str, Any]) -> str:
    """One row per optimizer and non-lr setting, one column per learning rate."""
    lrs = sorted({r["hparams"]["lr"] for res in results.values() for r in res["rows"]})
    lines = [
        "| optimizer | setting | " + " | ".join(f"{lr:g}" for lr in lrs) + " |",
        "|---|---|" + "---|" * len(lrs),
    ]
    for name, res in results.items():
        chosen = res["chosen"]["hparams"]
        settings: dict[tuple, dict[float, str]] = {}
        for r in res["rows"]:
            other = tuple((k, v) for k, v in r["hparams"].items() if k != "lr")
            mark = "*" if r["hparams"] == chosen else ""
            settings.setdefault(other, {})[r["hparams"]["lr"]] = f"{r['valid_accuracy']:.3f}{mark}"
        for other, cells in settings.items():
            label = ", ".join(
                f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in other
            )
            row = " | ".join(cells.get(lr, "") for lr in lrs)
            lines.append(f"| {name} | {label or '-'} | {row} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--optimizers", default="all")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", type=pathlib.Path, default=main_job.HPARAMS_FILE)
    ap.add_argument("--update-norms", action="store_true", help="print ||update|| / lr only")
    args = ap.parse_args(argv)
    present, _ = main_job.available()
    if args.optimizers != "all":
        wanted = set(args.optimizers.split(","))
        present = [e for e in present if e.name in wanted]
    data = common.load_mnist1d()
    if args.update_norms:
        norms = {e.name: update_norms(e, data) for e in present}
        for name, value in norms.items():
            print(f"{name:16s} median ||update|| / lr = {value:.3f}")
        return norms
    seeds = list(range(args.seeds))
    saved = json.loads(args.out.read_text()) if args.out.exists() else {}
    results = saved.get("results", {})
    start = time.perf_counter()
    for entry in present:
        print(f"{entry.name}:", flush=True)
        rows = sweep_entry(entry, data, seeds, args.epochs, args.batch_size)
        best = choose(rows)
        results[entry.name] = {
            "rows": rows,
            "chosen": best,
            "lr_on_grid_edge": on_lr_edge(entry, best["hparams"]),
        }
    order = [e.name for e in main_job.REGISTRY if e.name in results]
    results = {k: results[k] for k in order}
    chosen = {
        k: {
            "hparams": v["chosen"]["hparams"],
            "valid_accuracy": v["chosen"]["valid_accuracy"],
            "lr_on_grid_edge": v["lr_on_grid_edge"],
        }
        for k, v in results.items()
    }
    table = markdown(results)
    protocol = {
        "data": f"mnist1d, first {TRAIN} training samples; validation: the other {VALID}",
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "seeds": seeds,
        "criterion": "max mean final validation accuracy; ties: min mean final validation loss",
        "script": "scripts/sweep_main_job.py",
    }
    args.out.write_text(
        json.dumps(
            {"protocol": protocol, "chosen": chosen, "table_markdown": table, "results": results},
            indent=1,
        )
        + "\n"
    )
    print(table)
    for k, v in chosen.items():
        if v["lr_on_grid_edge"]:
            print(f"note: {k}'s chosen learning rate {v['hparams']['lr']:g} is on its grid's edge")
    print(f"wrote {args.out} ({time.perf_counter() - start:.0f}s)")
    return results


if __name__ == "__main__":
    main()
