"""End-to-end smoke runs of the mnist1d example scripts on a tiny budget.

``examples/lrg_mnist1d.py`` (LRG-Adam vs Adam, Optuna), ``examples/compare_optimizers.py``
(the main job) and ``scripts/sweep_main_job.py`` (its hyperparameter sweep) are
imported and their ``main(argv)`` run in-process with a few samples, 1 epoch and 2
trials; the tests check the printed tables, the JSON and the PNG they write.
"""

import dataclasses
import json
import logging
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "scripts"))

import compare_optimizers  # noqa: E402
import lrg_mnist1d  # noqa: E402
import mnist1d_common as common  # noqa: E402
import sweep_main_job  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: pathlib.Path) -> bool:
    return path.exists() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_default_split_is_2000_train_1000_test():
    data = common.load_mnist1d()
    assert data.x.shape == (2000, 40) and data.x_test.shape == (1000, 40)
    assert data.x.dtype == np.float32 and data.y.dtype == np.int32
    assert set(np.unique(data.y)) == set(range(10))
    assert data.args["num_samples"] == 3000 and data.args["seed"] == 42
    assert sum(data.args["test_class_counts"]) == 1000
    with pytest.raises(ValueError, match="multiple of 10"):
        common.load_mnist1d(num_samples=305)


def test_model_and_torch_order_flatten():
    params = common.init_params(0)
    assert sum(x.size for x in jax.tree.leaves(params)) == 14154
    # torch-like init: every entry within 1/sqrt(fan_in).
    for name, fan_in in (("Dense_0", 40), ("Dense_1", 128), ("Dense_2", 64)):
        for leaf in params[name].values():
            assert float(jnp.max(jnp.abs(leaf))) <= 1 / np.sqrt(fan_in) + 1e-7
    vec, unflatten = common.torch_order_flatten(params)
    assert vec.shape == (14154,)
    # torch order: W1 (out, in) row-major first, then b1.
    np.testing.assert_array_equal(vec[:40], params["Dense_0"]["kernel"][:, 0])
    np.testing.assert_array_equal(vec[5120 : 5120 + 128], params["Dense_0"]["bias"])
    restored = unflatten(vec)
    assert jax.tree.structure(restored) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_lrg_experiment_end_to_end(tmp_path, capsys):
    out = tmp_path / "lrg"
    result = lrg_mnist1d.main(
        [
            "--trials", "2", "--tune-epochs", "1", "--tune-samples", "100", "--epochs", "1",
            "--seeds", "2", "--samples", "200", "--out", str(out),
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "[tune] LRG-Adam" in printed and "[final] Adam" in printed
    assert _is_png(out / "lrg_mnist1d_val_loss.png")
    saved = json.loads((out / "lrg_mnist1d.json").read_text())
    assert saved["data"]["n_train"] == 133 and saved["data"]["n_test"] == 67
    assert saved["published"]["lrg_adam"] == {"lr": 0.0064, "rank": 20}
    assert set(saved["tuning"]) == {"adam", "lrg_adam"}  # the randomized run is not tuned
    for name in ("adam", "lrg_adam"):
        tuning = saved["tuning"][name]
        assert len(tuning["trials"]) == 2
        assert 1e-5 <= tuning["best_params"]["lr"] <= 1e-1
    for name in ("adam", "lrg_adam", "lrg_adam_randomized"):
        final = saved["final"][name]
        assert [r["seed"] for r in final["runs"]] == [42, 43]
        assert len(final["val_loss_mean"]) == 1 and np.isfinite(final["val_loss_mean"][0])
    # The randomized run reuses the exact run's tuned hyperparameters.
    lrg = saved["final"]["lrg_adam"]["hyperparameters"]
    assert saved["final"]["lrg_adam_randomized"]["hyperparameters"] == lrg
    assert 2 <= saved["tuning"]["lrg_adam"]["best_params"]["rank"] <= 20
    assert "rank" not in saved["tuning"]["adam"]["best_params"]
    assert result["final"]["adam"]["hyperparameters"] == saved["tuning"]["adam"]["best_params"]


def test_main_job_end_to_end_tolerates_missing_and_failing(tmp_path, capsys, monkeypatch):
    def broken(lr):
        raise RuntimeError("deliberately broken optimizer")

    def entry(name, **kwargs):
        return compare_optimizers.Entry(name, "LRE", broken, "-", "-", {"lr": (1e-3,)}, **kwargs)

    registry = tuple(e for e in compare_optimizers.REGISTRY if e.name in ("adamw", "lrg_adam")) + (
        entry("future_opt", requires=("no_such_optimizer_in_lowrank",)),
        entry("broken_opt"),
    )
    assert [e.name for e in registry[:2]] == ["adamw", "lrg_adam"]
    monkeypatch.setattr(compare_optimizers, "REGISTRY", registry)
    out = tmp_path / "cmp"
    summary = compare_optimizers.main(
        ["--epochs", "1", "--seeds", "2", "--samples", "200", "--out", str(out), "--no-progress"]
    )
    printed = capsys.readouterr().out
    assert "| adamw | " in printed and "| lrg_adam | " in printed
    assert "skip future_opt" in printed and "FAILED broken_opt" in printed
    assert _is_png(out / "compare_optimizers.png")
    markdown = (out / "compare_optimizers.md").read_text().splitlines()
    assert max(len(line) for line in markdown) <= 100  # every line fits 100 columns
    assert markdown[0].startswith("| optimizer | test acc | vs AdamW |")
    assert sum(line.startswith("| adamw |") for line in markdown) == 3  # 3 tables
    saved = json.loads((out / "compare_optimizers.json").read_text())
    assert saved["not_available"] == ["future_opt"]
    assert "deliberately broken" in saved["failed"]["broken_opt"]
    rows = {r["name"]: r for r in saved["results"]}
    assert set(rows) == {"adamw", "lrg_adam"}
    recorded = compare_optimizers.recorded_hparams()
    for r in rows.values():
        assert r["ms_per_step"] > 0 and np.isfinite(r["final_test_loss"][0])
        assert 0.0 <= r["final_test_accuracy"][0] <= 1.0
        assert r["swept"] and r["hparams"] == recorded[r["name"]]  # from the recorded sweep
    # adamw keeps mu and nu (2 x 14,154 float32) plus a count: the state size is real;
    # lrg_adam keeps the same plus its sketch's PRNG key (2 x uint32).
    assert rows["adamw"]["opt_state_bytes"] == 2 * 14154 * 4 + 4
    assert rows["lrg_adam"]["opt_state_bytes"] == rows["adamw"]["opt_state_bytes"] + 8
    assert summary["epochs"] == 1


def test_main_job_compiles_before_the_progress_bar(caplog):
    # Everything a run compiles is compiled by warm_up, so the bar's ETA measures
    # training only: the runs after it log no compilation.
    entry = next(e for e in compare_optimizers.REGISTRY if e.name == "adamw")
    hp = {"lr": 1e-3}
    data = common.load_mnist1d(num_samples=200)
    eval_sets = {"test": (data.x_test, data.y_test, len(data.y_test))}
    step = compare_optimizers.warm_up(entry, hp, data, eval_sets, 64)
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING):
            compare_optimizers.train_runs(
                entry, hp, data.x, data.y, eval_sets, seeds=[3, 4], epochs=2, batch_size=64,
                time_steps=True, step=step,
            )  # fmt: skip
    finally:
        jax.config.update("jax_log_compiles", False)
    compiles = [r.getMessage() for r in caplog.records if "ompil" in r.getMessage()]
    assert not compiles, compiles[:3]


def test_main_job_notes_and_identical_pairs():
    def result(name, acc, curve, note="", baseline=False):
        run = {"test_accuracy": curve, "train_loss": curve, "test_loss": curve}
        return {
            "name": name, "baseline": baseline, "note": note, "swept": True,
            "final_test_accuracy": (acc, 0.0), "runs": [run],
        }  # fmt: skip

    results = [
        result("adamw", 0.55, [0.3, 0.55], baseline=True),
        result("slow", 0.40, [0.2, 0.40]),
        result("explained", 0.40, [0.2, 0.41], note="a reason"),
        result("twin", 0.40, [0.2, 0.40]),
    ]
    notes = compare_optimizers.notes_for(results)
    assert any(n.startswith("slow: 0.150 below AdamW") for n in notes)
    assert "explained: a reason." in notes
    assert not any(n.startswith("explained: 0.150") for n in notes)
    assert "slow and twin train identically at these settings (same curves)." in notes


def test_recorded_sweep_covers_the_registry():
    saved = json.loads(compare_optimizers.HPARAMS_FILE.read_text())
    assert saved["protocol"]["script"] == "scripts/sweep_main_job.py"
    for entry in compare_optimizers.REGISTRY:
        hp, swept = compare_optimizers.hparams_of(entry, compare_optimizers.recorded_hparams())
        assert swept, entry.name
        for key, value in hp.items():
            assert value in entry.grid[key], (entry.name, key, value)
        chosen = saved["results"][entry.name]["chosen"]
        assert chosen["valid_accuracy"] == max(r["valid_accuracy"] for r in saved["results"][
            entry.name]["rows"])  # fmt: skip


def test_sweep_script_end_to_end(tmp_path, capsys):
    out = tmp_path / "hparams.json"
    sweep_main_job.main(
        ["--optimizers", "adamw", "--epochs", "1", "--seeds", "1", "--out", str(out)]
    )
    printed = capsys.readouterr().out
    assert "| optimizer | setting | 0.001 | 0.003 | 0.01 | 0.03 | 0.1 |" in printed
    saved = json.loads(out.read_text())
    rows = saved["results"]["adamw"]["rows"]
    assert [r["hparams"]["lr"] for r in rows] == [1e-3, 3e-3, 1e-2, 3e-2, 0.1]
    assert saved["chosen"]["adamw"]["hparams"] in [r["hparams"] for r in rows]
    assert "*" in saved["table_markdown"]
    loaded = compare_optimizers.recorded_hparams(out)
    assert loaded["adamw"] == saved["chosen"]["adamw"]["hparams"]


def test_main_job_rejects_unknown_optimizer():
    with pytest.raises(SystemExit):
        compare_optimizers.parse_args(["--optimizers", "adamw,not_an_optimizer"])


def test_registry_lists_every_family():
    names = {e.name for e in compare_optimizers.REGISTRY}
    expected = {"adamw", "lrg_adam", "galore_adamw", "lorenza", "lre", "lars", "lamb", "ralars"}
    expected |= {"tadam", "adabelief", "adamp", "adan", "ademamix"}
    expected |= {"lookahead_adam", "scout_adam"}
    assert expected <= names
    assert all(dataclasses.is_dataclass(e) for e in compare_optimizers.REGISTRY)
    assert {e.family for e in compare_optimizers.REGISTRY} == {"baseline"} | set(
        compare_optimizers.FAMILIES
    )
    present, missing = compare_optimizers.available()
    assert {e.name for e in present} | {e.name for e in missing} == names
    assert "adamw" in {e.name for e in present} and "lrg_adam" in {e.name for e in present}
