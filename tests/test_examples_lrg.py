"""End-to-end smoke runs of the mnist1d example scripts on a tiny budget.

``examples/lrg_mnist1d.py`` (LRG-Adam vs Adam, Optuna) and
``examples/compare_optimizers.py`` (the main job) are imported and their
``main(argv)`` run in-process with a few samples, 1 epoch and 2 trials; the tests
check the printed table, the JSON and the PNG they write.
"""

import dataclasses
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import compare_optimizers  # noqa: E402
import lrg_mnist1d  # noqa: E402
import mnist1d_common as common  # noqa: E402

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
    for name in ("adam", "lrg_adam"):
        tuning = saved["tuning"][name]
        assert len(tuning["trials"]) == 2
        assert 1e-5 <= tuning["best_params"]["lr"] <= 1e-1
        final = saved["final"][name]
        assert [r["seed"] for r in final["runs"]] == [42, 43]
        assert len(final["val_loss_mean"]) == 1 and np.isfinite(final["val_loss_mean"][0])
    assert 2 <= saved["tuning"]["lrg_adam"]["best_params"]["rank"] <= 20
    assert "rank" not in saved["tuning"]["adam"]["best_params"]
    assert result["final"]["adam"]["hyperparameters"] == saved["tuning"]["adam"]["best_params"]


def test_main_job_end_to_end_tolerates_missing_and_failing(tmp_path, capsys, monkeypatch):
    def broken():
        raise RuntimeError("deliberately broken optimizer")

    registry = tuple(e for e in compare_optimizers.REGISTRY if e.name in ("adamw", "lrg_adam")) + (
        compare_optimizers.Entry(
            "future_opt", broken, "-", requires=("no_such_optimizer_in_lowrank",)
        ),
        compare_optimizers.Entry("broken_opt", broken, "-"),
    )
    assert [e.name for e in registry[:2]] == ["adamw", "lrg_adam"]
    monkeypatch.setattr(compare_optimizers, "REGISTRY", registry)
    out = tmp_path / "cmp"
    summary = compare_optimizers.main(
        ["--epochs", "1", "--seeds", "1", "--samples", "200", "--out", str(out), "--no-progress"]
    )
    printed = capsys.readouterr().out
    assert "| adamw (baseline) |" in printed and "| lrg_adam |" in printed
    assert "skip future_opt" in printed and "FAILED broken_opt" in printed
    assert _is_png(out / "compare_optimizers.png")
    table = [
        ln for ln in (out / "compare_optimizers.md").read_text().splitlines() if ln.startswith("| ")
    ]
    assert len(table) == 3  # header + 2 rows
    saved = json.loads((out / "compare_optimizers.json").read_text())
    assert saved["not_available"] == ["future_opt"]
    assert "deliberately broken" in saved["failed"]["broken_opt"]
    rows = {r["name"]: r for r in saved["results"]}
    assert set(rows) == {"adamw", "lrg_adam"}
    for r in rows.values():
        assert r["ms_per_step"] > 0 and np.isfinite(r["final_test_loss"][0])
        assert 0.0 <= r["final_test_accuracy"][0] <= 1.0
    # adamw keeps mu and nu (2 x 14,154 float32) plus a count: the state size is real.
    assert rows["adamw"]["opt_state_bytes"] == 2 * 14154 * 4 + 4
    assert rows["lrg_adam"]["opt_state_bytes"] == rows["adamw"]["opt_state_bytes"]
    assert summary["epochs"] == 1


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
    present, missing = compare_optimizers.available()
    assert {e.name for e in present} | {e.name for e in missing} == names
    assert "adamw" in {e.name for e in present} and "lrg_adam" in {e.name for e in present}
