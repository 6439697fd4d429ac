"""A LLaMA-style decoder with stacked, scanned layers, its configs and a byte-level corpus.

Everything the LM example (``train_lm.py``), the memory table
(``memory_table.py``) and the LM benchmark (``benchmarks/lm.py``) share:

* **Pure functions** over a plain dict of arrays::

    params = {'embed': (V, d), 'blocks': {stacked leaves, each (L, ...)},
              'final_norm': (d,), 'head': (d, V)}

  :func:`layer_apply` runs one decoder layer on one layer's slice of
  ``params['blocks']``; :func:`scan_blocks` runs the stacked layers with
  ``jax.lax.scan``; :func:`apply` is embedding → blocks → norm → head and
  :func:`loss_fn` the mean next-byte cross-entropy. Both take ``blocks_fn=`` to
  replace the block scan (e.g. by one that fuses the optimizer update into the
  backward pass) without touching the rest of the model.
* **Flax NNX** module :class:`LlamaLM` holding the same arrays as ``nnx.Param``
  (``nnx.to_pure_dict(nnx.state(model, nnx.Param))`` is the plain dict above).
* **Configs**: ``tiny`` (tests), ``small`` (``train_lm.py --quick``), ``bench``
  (the ~1.7 M-parameter benchmark model) and the GaLore paper's LLaMA
  ``llama_60m`` / ``llama_130m`` / ``llama_350m`` / ``llama_1b`` shapes
  (``jiaweizzhao/GaLore`` ``configs/llama_*.json``).
* :func:`dimension_numbers`: the ``lowrank.DimensionNumbers`` tree that makes
  GaLore project every block matrix per layer (the layer axis is a batch axis).
* :func:`load_corpus`: the documentation shipped with the interpreter
  (``pydoc_data.topics`` and the standard library's docstrings) as bytes, with
  a held-out validation split.

The architecture: token embedding, ``L`` pre-norm decoder layers (RMSNorm,
causal multi-head attention with rotary position embeddings, RMSNorm, SwiGLU
MLP), a final RMSNorm and an untied output head; no biases anywhere, as LLaMA.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import math
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import lowrank_optax as lowrank

Params = dict[str, Any]

# --- configs -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Shape of a LLaMA-style decoder (no biases, untied head).

    Attributes:
      vocab_size: number of tokens (256 for bytes).
      d_model: width ``d``.
      n_layers: number of decoder layers ``L`` (stacked on the leading axis).
      n_heads: attention heads ``H``; the head width is ``d_model // n_heads``.
      d_ff: SwiGLU hidden width.
      seq_len: training sequence length (``train_lm.py``'s default).
      init_std: standard deviation of the normal initialiser of every matrix
        (0.02, the ``initializer_range`` of the GaLore configs).
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    seq_len: int = 128
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def num_params(self) -> int:
        """Number of parameters (embedding, layers, final norm, head)."""
        d, f, v, n = self.d_model, self.d_ff, self.vocab_size, self.n_layers
        return 2 * v * d + n * (4 * d * d + 3 * d * f + 2 * d) + d


CONFIGS: dict[str, LlamaConfig] = {
    "tiny": LlamaConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=2, d_ff=64, seq_len=32),
    "small": LlamaConfig(vocab_size=256, d_model=96, n_layers=2, n_heads=3, d_ff=256, seq_len=64),
    "bench": LlamaConfig(vocab_size=256, d_model=192, n_layers=4, n_heads=6, d_ff=448),
    # GaLore paper (arXiv 2403.03507, Table 2) / jiaweizzhao/GaLore configs/llama_*.json.
    "llama_60m": LlamaConfig(32000, 512, 8, 8, 1376, seq_len=256),
    "llama_130m": LlamaConfig(32000, 768, 12, 12, 2048, seq_len=256),
    "llama_350m": LlamaConfig(32000, 1024, 24, 16, 2736, seq_len=256),
    "llama_1b": LlamaConfig(32000, 2048, 24, 32, 5461, seq_len=256),
}
# GaLore's ranks for those shapes (paper Table 2, "r / d_model").
PAPER_RANKS = {"llama_60m": 128, "llama_130m": 256, "llama_350m": 256, "llama_1b": 512}

NORM_EPS = 1e-6  # rms_norm_eps of the GaLore LLaMA configs
ROPE_THETA = 10000.0

# --- parameters ----------------------------------------------------------------

BLOCK_MATRICES = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


def init_params(config: LlamaConfig, key: jax.Array, dtype: Any = jnp.float32) -> Params:
    """Initial parameters as a plain dict; block leaves carry a leading ``L`` axis.

    Shapes (``L`` layers, ``d`` width, ``H`` heads of width ``D``, ``F`` MLP
    width, ``V`` vocabulary)::

      embed (V, d)            final_norm (d,)          head (d, V)
      blocks: attn_norm (L, d)   wq, wk, wv (L, d, H, D)   wo (L, H, D, d)
              mlp_norm (L, d)    w_gate, w_up (L, d, F)    w_down (L, F, d)

    Use ``jax.eval_shape(lambda: init_params(config, key))`` for abstract
    parameters (nothing allocated).
    """
    c = config
    L, d, h, hd, f = c.n_layers, c.d_model, c.n_heads, c.head_dim, c.d_ff
    shapes = {
        "wq": (L, d, h, hd),
        "wk": (L, d, h, hd),
        "wv": (L, d, h, hd),
        "wo": (L, h, hd, d),
        "w_gate": (L, d, f),
        "w_up": (L, d, f),
        "w_down": (L, f, d),
    }
    keys = jax.random.split(key, len(shapes) + 2)

    def normal(k: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        return (c.init_std * jax.random.normal(k, shape, jnp.float32)).astype(dtype)

    blocks = {name: normal(k, s) for (name, s), k in zip(shapes.items(), keys[2:], strict=True)}
    blocks["attn_norm"] = jnp.ones((L, d), dtype)
    blocks["mlp_norm"] = jnp.ones((L, d), dtype)
    return {
        "embed": normal(keys[0], (c.vocab_size, d)),
        "blocks": blocks,
        "final_norm": jnp.ones((d,), dtype),
        "head": normal(keys[1], (d, c.vocab_size)),
    }


def abstract_params(config: LlamaConfig, dtype: Any = jnp.float32) -> Params:
    """``jax.ShapeDtypeStruct`` parameters of ``config`` (nothing allocated)."""
    return jax.eval_shape(lambda: init_params(config, jax.random.key(0), dtype))


def layer_dimension_numbers() -> dict[str, lowrank.DimensionNumbers | None]:
    """GaLore's view of one layer's leaves (one slice of ``params['blocks']``).

    Attention kernels ``(d, H, D)`` are ``d × (H·D)`` matrices, ``wo`` is
    ``(H·D) × d``; MLP kernels are plain matrices; norms are not projected.
    """
    dn = lowrank.DimensionNumbers
    return {
        "attn_norm": None,
        "mlp_norm": None,
        "wq": dn(0, (1, 2)),
        "wk": dn(0, (1, 2)),
        "wv": dn(0, (1, 2)),
        "wo": dn((0, 1), 2),
        "w_gate": dn(0, 1),
        "w_up": dn(0, 1),
        "w_down": dn(0, 1),
    }


def dimension_numbers(params: Params) -> dict[str, Any]:
    """The ``dimension_numbers`` tree for ``lowrank.galore_adamw`` / ``lorenza`` on ``params``.

    Every block matrix is projected per layer: its axes are shifted by one and
    the leading ``L`` axis, named by neither ``reduction_axes`` nor
    ``output_axes``, becomes a batch axis with an independent basis per layer.
    The embedding, head and norms are not projected (full-size Adam), as in the
    GaLore paper, which projects only attention and MLP weights.
    """
    del params  # the tree is fixed by the layout; kept for the callable form

    def shift(x: lowrank.DimensionNumbers | None) -> lowrank.DimensionNumbers | None:
        if x is None:
            return None
        axes = lambda a: tuple(i + 1 for i in (a if isinstance(a, tuple) else (a,)))  # noqa: E731
        return lowrank.DimensionNumbers(axes(x.reduction_axes), axes(x.output_axes))

    blocks = {k: shift(v) for k, v in layer_dimension_numbers().items()}
    return {"embed": None, "blocks": blocks, "final_norm": None, "head": None}


def projected_mask(params: Params) -> dict[str, Any]:
    """Boolean tree: ``True`` on the leaves GaLore projects (the block matrices)."""
    del params
    blocks = {k: k in BLOCK_MATRICES for k in layer_dimension_numbers()}
    return {"embed": False, "blocks": blocks, "final_norm": False, "head": False}


# --- model ---------------------------------------------------------------------


def rms_norm(x: jax.Array, weight: jax.Array, eps: float = NORM_EPS) -> jax.Array:
    """RMSNorm: ``x / sqrt(mean(x²) + eps) * weight``, computed in float32."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (y * weight.astype(jnp.float32)).astype(x.dtype)


def rope_tables(seq_len: int, head_dim: int, theta: float = ROPE_THETA) -> tuple[jax.Array, ...]:
    """Cosine and sine tables ``(T, D/2)`` of rotary position embeddings."""
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)
    angles = np.arange(seq_len, dtype=np.float32)[:, None] * inv[None, :]
    return jnp.asarray(np.cos(angles)), jnp.asarray(np.sin(angles))


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates ``x`` ``(B, T, H, D)`` pairwise (first half with second half)."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    c, s = cos[None, :, None, :].astype(x.dtype), sin[None, :, None, :].astype(x.dtype)
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def layer_apply(
    layer_params: dict[str, jax.Array],
    x: jax.Array,
    *,
    rope: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """One pre-norm decoder layer on ``x`` ``(B, T, d)``; a pure function of its arrays.

    Args:
      layer_params: one layer's slice of ``params['blocks']`` (no ``L`` axis).
      x: hidden states ``(B, T, d)``.
      rope: ``(cos, sin)`` tables from :func:`rope_tables` (computed if ``None``).

    Returns:
      ``x + attn(norm(x))`` followed by ``+ mlp(norm(·))``, shape ``(B, T, d)``.
    """
    p = layer_params
    if rope is None:
        rope = rope_tables(x.shape[1], p["wq"].shape[-1])
    h = rms_norm(x, p["attn_norm"])
    q = apply_rope(jnp.einsum("btd,dhk->bthk", h, p["wq"]), *rope)
    k = apply_rope(jnp.einsum("btd,dhk->bthk", h, p["wk"]), *rope)
    v = jnp.einsum("btd,dhk->bthk", h, p["wv"])
    attn = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    x = x + jnp.einsum("bthk,hkd->btd", attn, p["wo"])
    h = rms_norm(x, p["mlp_norm"])
    gated = jax.nn.silu(h @ p["w_gate"]) * (h @ p["w_up"])
    return x + gated @ p["w_down"]


def scan_blocks(
    blocks: dict[str, jax.Array],
    x: jax.Array,
    *,
    rope: tuple[jax.Array, jax.Array],
    remat: bool = False,
) -> jax.Array:
    """Runs the stacked layers over ``x`` with ``jax.lax.scan`` (the default ``blocks_fn``).

    Args:
      blocks: ``params['blocks']`` (leading ``L`` axis on every leaf).
      x: hidden states ``(B, T, d)``.
      rope: ``(cos, sin)`` tables (:func:`rope_tables`).
      remat: recompute each layer's activations in the backward pass
        (``jax.checkpoint`` around the scanned layer) to save activation memory.
    """

    def body(h: jax.Array, layer: dict[str, jax.Array]) -> tuple[jax.Array, None]:
        return layer_apply(layer, h, rope=rope), None

    if remat:
        body = jax.checkpoint(body)
    x, _ = jax.lax.scan(body, x, blocks)
    return x


BlocksFn = Callable[..., jax.Array]


def apply(
    params: Params, tokens: jax.Array, *, remat: bool = False, blocks_fn: BlocksFn | None = None
) -> jax.Array:
    """Logits ``(B, T, V)`` for integer ``tokens`` ``(B, T)``; layers run in a ``lax.scan``.

    Args:
      params: the plain parameter dict (see :func:`init_params`).
      tokens: integer token ids.
      remat: recompute each layer's activations in the backward pass.
      blocks_fn: replaces :func:`scan_blocks`: ``blocks_fn(blocks, x, rope=...)``
        returns the hidden states after all layers (e.g. a scan whose backward
        pass also applies the optimizer update, layer by layer).
    """
    x = jnp.take(params["embed"], tokens, axis=0)
    rope = rope_tables(tokens.shape[1], params["blocks"]["wq"].shape[-1])
    if blocks_fn is None:
        x = scan_blocks(params["blocks"], x, rope=rope, remat=remat)
    else:
        x = blocks_fn(params["blocks"], x, rope=rope)
    x = rms_norm(x, params["final_norm"])
    return (x @ params["head"]).astype(jnp.float32)


def loss_fn(
    params: Params, batch: jax.Array, *, remat: bool = False, blocks_fn: BlocksFn | None = None
) -> jax.Array:
    """Mean next-token cross-entropy (nats) of ``batch`` ``(B, T+1)`` integer tokens.

    ``remat`` and ``blocks_fn`` are passed to :func:`apply`.
    """
    tokens = batch.astype(jnp.int32)
    logits = apply(params, tokens[:, :-1], remat=remat, blocks_fn=blocks_fn)
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    return -jnp.mean(picked)


class _Blocks(nnx.Module):
    """The stacked decoder layers: one ``nnx.Param`` per block leaf, leading axis ``L``."""

    def __init__(self, blocks: dict[str, jax.Array]):
        for name, value in blocks.items():
            setattr(self, name, nnx.Param(value))


class LlamaLM(nnx.Module):
    """Flax NNX form of the model; its ``nnx.Param`` state is the plain dict of :func:`apply`.

    Example::

      model = LlamaLM(CONFIGS['tiny'], rngs=nnx.Rngs(0))
      params = params_of(model)                 # plain dict of arrays
      logits = model(tokens)                    # == apply(params, tokens)
    """

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        p = init_params(config, rngs.params())
        self.embed = nnx.Param(p["embed"])
        self.blocks = _Blocks(p["blocks"])
        self.final_norm = nnx.Param(p["final_norm"])
        self.head = nnx.Param(p["head"])

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return apply(params_of(self), tokens)


def params_of(model: LlamaLM) -> Params:
    """The plain parameter dict of an NNX :class:`LlamaLM`."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


# --- corpus --------------------------------------------------------------------


class Corpus(NamedTuple):
    """Byte-level text with a held-out split.

    Attributes:
      train: ``uint8`` training bytes.
      val: ``uint8`` validation bytes.
      sha256: SHA-256 of the whole text (train and validation topics in order).
      source: where the text came from.
    """

    train: np.ndarray
    val: np.ndarray
    sha256: str
    source: str

    def describe(self) -> str:
        n = len(self.train) + len(self.val)
        return (
            f"corpus {self.source}: {n} bytes (train {len(self.train)}, val {len(self.val)}), "
            f"sha256 {self.sha256}"
        )


VAL_EVERY = 10  # every 10th document (sorted by name) is held out
# Directories of the standard library that some distributions split off or leave
# out (or that are test data rather than library text).
_SKIPPED_DIRS = frozenset(
    {"__pycache__", "distutils", "ensurepip", "idlelib", "lib2to3", "pydoc_data"}
    | {"site-packages", "test", "tkinter", "turtledemo", "venv"}
)


def _docstrings(source: str) -> str:
    """The docstrings of a module, its classes and functions, in source order."""
    tree = ast.parse(source)
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    found = [
        (getattr(node, "lineno", 0), doc)
        for node in ast.walk(tree)
        if isinstance(node, kinds) and (doc := ast.get_docstring(node))
    ]
    return "\n\n".join(doc for _, doc in sorted(found, key=lambda t: t[0]))


@functools.cache
def corpus_documents() -> tuple[tuple[str, bytes], ...]:
    """The corpus documents, sorted by name: ``(name, utf-8 bytes)``.

    * ``topics/<name>``: every topic of ``pydoc_data.topics`` (the language
      reference and library documentation pages ``help()`` shows);
    * ``<path>.py``: the docstrings (module, classes, functions, in source order)
      of every ``.py`` file of the standard library directory, walked in sorted
      order, skipping ``test``, ``site-packages`` and the directories some
      distributions split off (``idlelib``, ``tkinter``, ``lib2to3``,
      ``distutils``, ``ensurepip``, ``turtledemo``, ``venv``).
    """
    import sysconfig
    from pydoc_data.topics import topics

    docs = [(f"topics/{k}", v.encode("utf-8")) for k, v in topics.items()]
    root = sysconfig.get_paths()["stdlib"]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            with open(path, encoding="utf-8") as f:
                text = _docstrings(f.read())
            if text:
                rel = os.path.relpath(path, root).replace(os.sep, "/")
                docs.append((rel, text.encode("utf-8")))
    return tuple(sorted(docs))


def load_corpus(path: str | None = None) -> Corpus:
    """The corpus: the documentation shipped with the running Python, as bytes.

    Two sources, both part of every CPython installation, read from the
    running interpreter (no download, no randomness): the topics of
    ``pydoc_data.topics`` (about 0.47 MB of English prose: the language
    reference and library pages ``help()`` shows) and the docstrings of the
    standard library's modules (about 1.4 MB; see :func:`corpus_documents`).
    Documents are sorted by name and joined with blank lines; document ``i``
    goes to the validation split when ``i % 10 == 9``, so both splits hold whole
    documents of the same kinds.

    The bytes depend on the interpreter (the documentation changes between
    releases, and a different Python patch version or a distribution that
    leaves out other directories gives different bytes): :meth:`Corpus.describe`
    prints the SHA-256 and size. ``path`` loads a copy saved with
    :func:`save_corpus` instead, to train on identical bytes under another
    Python.
    """
    if path is not None:
        with np.load(path) as z:
            return Corpus(z["train"], z["val"], str(z["sha256"]), f"{path} ({z['source']})")
    texts = [text for _, text in corpus_documents()]
    sha = hashlib.sha256(b"\n\n".join(texts)).hexdigest()
    train = b"\n\n".join(t for i, t in enumerate(texts) if i % VAL_EVERY != VAL_EVERY - 1)
    val = b"\n\n".join(t for i, t in enumerate(texts) if i % VAL_EVERY == VAL_EVERY - 1)
    source = "Python {}.{}.{} documentation (pydoc topics + stdlib docstrings)".format(
        *sys.version_info[:3]
    )
    as_array = lambda b: np.frombuffer(b, dtype=np.uint8).copy()  # noqa: E731
    return Corpus(as_array(train), as_array(val), sha, source)


def save_corpus(corpus: Corpus, path: str) -> None:
    """Saves ``corpus`` as ``.npz`` for :func:`load_corpus` (``path=``)."""
    np.savez(path, train=corpus.train, val=corpus.val, sha256=corpus.sha256, source=corpus.source)


def train_batches(
    data: np.ndarray, batch_size: int, seq_len: int, seed: int
) -> Iterator[np.ndarray]:
    """Endless random windows ``(batch_size, seq_len + 1)`` of ``data`` (seeded numpy)."""
    rng = np.random.default_rng(seed)
    width = seq_len + 1
    while True:
        starts = rng.integers(0, len(data) - width, size=batch_size)
        yield np.stack([data[s : s + width] for s in starts])


def eval_batches(data: np.ndarray, batch_size: int, seq_len: int, max_batches: int) -> np.ndarray:
    """Fixed, non-overlapping windows of ``data``: ``(n, batch_size, seq_len + 1)``.

    ``n = min(max_batches, available)``; windows are evenly spread over ``data``
    so the estimate covers the whole split, and are the same for every run.
    """
    width = seq_len + 1
    available = len(data) // width
    count = min(max_batches * batch_size, available)
    count -= count % batch_size
    if count == 0:
        raise ValueError(f"split of {len(data)} bytes is too small for one batch")
    stride = available // count
    starts = np.arange(count) * stride * width
    windows = np.stack([data[s : s + width] for s in starts])
    return windows.reshape(count // batch_size, batch_size, width)


def num_params(params: Params) -> int:
    """Number of scalars in ``params``."""
    return sum(math.prod(jnp.shape(x)) for x in jax.tree.leaves(params))
