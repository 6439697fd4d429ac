"""The LLaMA-style LM example: pure model functions, corpus, and ``train_lm.py``'s short path."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import lowrank_optax as lowrank

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


lm = _load("llama_lm")
CONFIG = lm.CONFIGS["tiny"]


def test_scan_equals_layer_by_layer_and_nnx() -> None:
    params = lm.init_params(CONFIG, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 9), 0, CONFIG.vocab_size)

    @jax.jit
    def layer_by_layer(params, tokens):
        x = jnp.take(params["embed"], tokens, axis=0)
        for i in range(CONFIG.n_layers):
            x = lm.layer_apply(jax.tree.map(lambda a, i=i: a[i], params["blocks"]), x)
        return lm.rms_norm(x, params["final_norm"]) @ params["head"]

    expected = layer_by_layer(params, tokens)
    np.testing.assert_allclose(jax.jit(lm.apply)(params, tokens), expected, rtol=1e-5, atol=1e-5)

    # A replacement block function (here a Python loop) plugs into loss_fn.
    def loop(blocks, h, *, rope):
        for i in range(CONFIG.n_layers):
            h = lm.layer_apply(jax.tree.map(lambda a, i=i: a[i], blocks), h, rope=rope)
        return h

    batch = jnp.concatenate([tokens, tokens[:, :1]], axis=1)
    looped = jax.jit(lambda p, b: lm.loss_fn(p, b, blocks_fn=loop))(params, batch)
    np.testing.assert_allclose(looped, jax.jit(lm.loss_fn)(params, batch), rtol=1e-5)
    model = lm.LlamaLM(CONFIG, rngs=nnx.Rngs(0))
    plain = lm.params_of(model)
    assert jax.tree.structure(plain) == jax.tree.structure(params)
    np.testing.assert_allclose(model(tokens), lm.apply(plain, tokens), rtol=1e-6)


def test_causal_and_param_count() -> None:
    params = lm.init_params(CONFIG, jax.random.key(0))
    assert lm.num_params(params) == CONFIG.num_params()
    tokens = jax.random.randint(jax.random.key(1), (1, 8), 0, 256)
    changed = tokens.at[0, 5].set((tokens[0, 5] + 1) % 256)
    a, b = lm.apply(params, tokens), lm.apply(params, changed)
    np.testing.assert_array_equal(a[:, :5], b[:, :5])  # no position sees the future
    assert not np.allclose(a[:, 5:], b[:, 5:])
    for name, rank in lm.PAPER_RANKS.items():  # paper shapes stay abstract
        abstract = lm.abstract_params(lm.CONFIGS[name])
        assert lm.num_params(abstract) == lm.CONFIGS[name].num_params()
        assert rank < lm.CONFIGS[name].d_model
    assert lm.CONFIGS["llama_60m"].num_params() == 58_073_600


def test_dimension_numbers_project_each_layer() -> None:
    params = lm.init_params(CONFIG, jax.random.key(0))
    rank = 4
    tx = lowrank.galore_adamw(1e-3, rank=rank, dimension_numbers=lm.dimension_numbers(params))
    state = tx.init(params)
    bases = state[0].bases
    assert set(bases) == {f"['blocks']['{k}']" for k in lm.BLOCK_MATRICES}
    L, d = CONFIG.n_layers, CONFIG.d_model
    for basis in bases.values():  # one (rank-sized) basis per layer
        shape = (basis.left if basis.left is not None else basis.right).shape
        assert shape[0] == L and rank in shape[1:] and d in shape[1:]
    adam = lowrank.memory_report(optax.adamw(1e-3), params)["state_bytes"]
    galore = lowrank.memory_report(tx, params)["state_bytes"]
    assert galore < adam


def test_corpus_is_deterministic_with_a_validation_split(tmp_path: pathlib.Path) -> None:
    corpus = lm.load_corpus()
    again = lm.load_corpus()
    assert corpus.sha256 == again.sha256 and len(corpus.sha256) == 64
    np.testing.assert_array_equal(corpus.train, again.train)
    total = len(corpus.train) + len(corpus.val)
    assert total > 1_000_000 and 0.05 < len(corpus.val) / total < 0.15
    path = tmp_path / "corpus.npz"
    lm.save_corpus(corpus, str(path))
    loaded = lm.load_corpus(str(path))
    assert loaded.sha256 == corpus.sha256
    np.testing.assert_array_equal(loaded.val, corpus.val)
    windows = lm.eval_batches(corpus.val, 4, 16, 3)
    assert windows.shape == (3, 4, 17) and windows.dtype == np.uint8


def test_train_lm_short_path(tmp_path: pathlib.Path) -> None:
    train_lm = _load("train_lm")
    argv = ["--config", "tiny", "--steps", "6", "--eval-every", "3", "--eval-batches", "1"]
    argv += ["--optimizers", "adamw,galore_adamw", "--no-progress", "--out-dir", str(tmp_path)]
    results = train_lm.main(argv)
    assert [r["optimizer"] for r in results] == ["adamw", "galore_adamw"]
    for r in results:
        first, last = r["val_curve"][0][1], r["final_val_loss"]
        assert np.isfinite(last) and last < first
        assert r["compiled_peak_bytes"] > 0
    assert results[1]["state_bytes"] < results[0]["state_bytes"]
    saved = json.loads((tmp_path / "train_lm.json").read_text())
    assert saved["results"][0]["final_val_loss"] == results[0]["final_val_loss"]
    assert saved["meta"]["corpus"].endswith(lm.load_corpus().sha256)
    assert (tmp_path / "train_lm.png").stat().st_size > 1000
