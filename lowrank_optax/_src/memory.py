"""Exact memory accounting of a training step: parameters, gradients, optimizer state, XLA.

Nothing is run or allocated: shapes come from :func:`jax.eval_shape`, shardings
from the parameters (or the library's state rules, :func:`state_sharding`), and
the compiled figures from XLA's own memory analysis of the lowered step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lowrank_optax._src.fused import FusedTrainStep
from lowrank_optax._src.sharding import state_sharding

# XLA's CompiledMemoryStats fields and the report's names for them.
_COMPILED_FIELDS = (
    ("argument_bytes", "argument_size_in_bytes"),
    ("output_bytes", "output_size_in_bytes"),
    ("alias_bytes", "alias_size_in_bytes"),
    ("temp_bytes", "temp_size_in_bytes"),
    ("generated_code_bytes", "generated_code_size_in_bytes"),
    ("peak_bytes", "peak_memory_in_bytes"),
)


class MemoryReport(dict):
    """The result of :func:`memory_report`: a plain ``dict`` that prints as a table.

    Keys (all byte counts are Python ``int``):

    * ``params_bytes``, ``grads_bytes``, ``state_bytes``, ``total_bytes`` (their
      sum), ``num_params`` (scalars in the parameters);
    * ``fused_blocks``: ``None``, or the key of the stacked block whose
      gradient exists one layer at a time (:func:`memory_report`'s argument);
    * ``leaves``: ``{'params': [...], 'grads': [...], 'state': [...]}``, one row
      per array leaf ``{'path', 'shape', 'dtype', 'bytes'}`` (plus
      ``'max_device_bytes'`` when sharded), in ``jax.tree.leaves`` order. A
      ``grads`` row is the gradient that exists at once for one floating-point
      parameter and has a ``'fused'`` flag: for a leaf of the fused block it is
      one layer's slice (the parameter's shape without the layer axis);
    * ``per_device``: ``None``, or one row per device
      ``{'device', 'params_bytes', 'grads_bytes', 'state_bytes'}``;
    * ``compiled``: ``None``, or XLA's memory analysis of the step:
      ``argument_bytes``, ``output_bytes``, ``alias_bytes``, ``temp_bytes``,
      ``generated_code_bytes`` and ``peak_bytes`` (XLA's figures as they are;
      per device for a sharded step).

    ``str(report)`` (or :meth:`table`) formats it for printing.
    """

    def table(self, *, leaves: bool = False) -> str:
        """The report as a text table; ``leaves=True`` adds the per-leaf rows."""
        lines = [f"{'memory':<44}{'bytes':>16}{'MiB':>11}"]

        def row(name: str, value: int | None) -> None:
            if value is None:
                lines.append(f"{name:<44}{'n/a':>16}")
            else:
                lines.append(f"{name:<44}{value:>16,}{value / 2**20:>11.2f}")

        n_params, n_state = len(self["leaves"]["params"]), len(self["leaves"]["state"])
        row(f"params ({self['num_params']:,} scalars, {n_params} leaves)", self["params_bytes"])
        fused = self.get("fused_blocks")
        grads = "gradients" if fused is None else f"gradients ({fused!r}: one layer at once)"
        row(grads, self["grads_bytes"])
        row(f"optimizer state ({n_state} leaves)", self["state_bytes"])
        row("params + gradients + state", self["total_bytes"])
        if self["per_device"]:
            devices = self["per_device"]
            lines.append(f"per device, largest of {len(devices)} devices:")
            for key in ("params_bytes", "grads_bytes", "state_bytes"):
                row(f"  {key[:-6]}", max(d[key] for d in devices))
        if self["compiled"] is not None:
            lines.append("compiled step (XLA memory analysis):")
            for key, _ in _COMPILED_FIELDS:
                row(f"  {key[:-6].replace('_', ' ')}", self["compiled"][key])
        if leaves:
            for group in ("params", "grads", "state"):
                lines.append(f"{group} leaves:")
                for leaf in self["leaves"][group]:
                    shape = "x".join(map(str, leaf["shape"])) or "scalar"
                    path = leaf["path"] if len(leaf["path"]) <= 50 else "…" + leaf["path"][-49:]
                    lines.append(f"  {path:<50}{shape:>16}{leaf['dtype']:>9}{leaf['bytes']:>16,}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _nbytes(shape: Sequence[int], dtype: Any) -> int:
    # ``itemsize`` of a typed PRNG key dtype is its key data (8 bytes for threefry).
    return math.prod(shape) * dtype.itemsize


def _sharding_of(x: Any) -> Any:
    sharding = getattr(x, "sharding", None)
    return sharding if isinstance(sharding, NamedSharding) else None


def _device_bytes(shape: Sequence[int], dtype: Any, sharding: NamedSharding) -> dict[int, int]:
    """Bytes each device holds of an array of ``shape`` laid out by ``sharding``."""
    itemsize = dtype.itemsize
    out: dict[int, int] = {}
    for device, index in sharding.devices_indices_map(tuple(shape)).items():
        count = math.prod(len(range(*s.indices(n))) for s, n in zip(index, shape, strict=True))
        out[device.id] = count * itemsize
    return out


def _rows(tree: Any, shardings: list[Any] | None) -> list[dict[str, Any]]:
    paths_leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    rows = []
    for i, (path, leaf) in enumerate(paths_leaves):
        shape = tuple(int(d) for d in jnp.shape(leaf))
        row: dict[str, Any] = {
            "path": jax.tree_util.keystr(path),
            "shape": list(shape),
            "dtype": str(leaf.dtype),
            "bytes": _nbytes(shape, leaf.dtype),
        }
        if shardings is not None:
            row["device_bytes"] = _device_bytes(shape, leaf.dtype, shardings[i])
            row["max_device_bytes"] = max(row["device_bytes"].values())
        rows.append(row)
    return rows


def _abstract(x: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(jnp.shape(x), x.dtype, sharding=_sharding_of(x))


def _param_shardings(
    leaves: list[Any], mesh: jax.sharding.Mesh | None, param_specs: Any
) -> list[NamedSharding] | None:
    if param_specs is not None:
        if mesh is None:
            raise ValueError("`param_specs` needs `mesh`.")
        specs = jax.tree.leaves(param_specs, is_leaf=lambda s: isinstance(s, P) or s is None)
        if len(specs) != len(leaves):
            raise ValueError(
                f"`param_specs` must give one PartitionSpec per parameter leaf; got "
                f"{len(specs)} for {len(leaves)} leaves."
            )
        return [NamedSharding(mesh, P() if s is None else s) for s in specs]
    found = [_sharding_of(x) for x in leaves]
    if mesh is None and all(s is None for s in found):
        return None
    if mesh is None:
        meshes = {s.mesh for s in found if s is not None}
        if len(meshes) != 1:
            raise ValueError(f"parameters must be sharded on one mesh; found {len(meshes)} meshes.")
        mesh = meshes.pop()
    return [NamedSharding(mesh, P()) if s is None else s for s in found]


def _is_differentiable(dtype: Any) -> bool:
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return False
    return bool(jnp.issubdtype(dtype, jnp.inexact))


def _grad_rows(
    param_rows: list[dict[str, Any]],
    param_leaves: list[Any],
    shardings: list[Any] | None,
    fused: list[bool],
) -> list[dict[str, Any]]:
    """One row per gradient that exists at once: the parameter's, or one layer's slice."""
    rows = []
    for i, (prow, x) in enumerate(zip(param_rows, param_leaves, strict=True)):
        if not _is_differentiable(x.dtype):
            continue
        shape = tuple(prow["shape"][1:] if fused[i] else prow["shape"])
        row: dict[str, Any] = {
            "path": prow["path"],
            "shape": list(shape),
            "dtype": prow["dtype"],
            "bytes": _nbytes(shape, x.dtype),
            "fused": fused[i],
        }
        if shardings is not None:
            sharding = shardings[i]
            if fused[i]:
                # One layer's slice, laid out like the parameter without its layer axis.
                spec = tuple(sharding.spec) + (None,) * (len(prow["shape"]) - len(sharding.spec))
                sharding = NamedSharding(sharding.mesh, P(*spec[1:]))
            row["device_bytes"] = _device_bytes(shape, x.dtype, sharding)
            row["max_device_bytes"] = max(row["device_bytes"].values())
        rows.append(row)
    return rows


def _fused_mask(params: Any, fused_blocks: str | None) -> list[bool]:
    """Per parameter leaf (``jax.tree.leaves`` order): is it in ``params[fused_blocks]``?"""
    paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    if fused_blocks is None:
        return [False] * len(paths)
    if not isinstance(params, Mapping) or fused_blocks not in params:
        keys = sorted(map(str, params)) if isinstance(params, Mapping) else type(params).__name__
        raise ValueError(
            f"`fused_blocks` must be a key of the top-level parameter dict (the stacked "
            f"block of lowrank.fused_layers); got {fused_blocks!r}, parameters: {keys}."
        )
    first = jax.tree_util.DictKey(fused_blocks)
    mask = [bool(path) and path[0] == first for path in paths]
    sizes = {
        tuple(jnp.shape(x))[:1] for x, m in zip(jax.tree.leaves(params), mask, strict=True) if m
    }
    if len(sizes) != 1 or () in sizes:
        raise ValueError(
            f"`fused_blocks`: every leaf of params[{fused_blocks!r}] must have the same "
            f"leading layer axis L; got leading sizes {sorted(sizes)}."
        )
    return mask


def memory_report(
    tx: Any,
    params: Any,
    *,
    step_fn: Callable[..., Any] | None = None,
    step_args: Sequence[Any] = (),
    mesh: jax.sharding.Mesh | None = None,
    param_specs: Any = None,
    fused_blocks: str | None = None,
) -> MemoryReport:
    r"""Bytes of a training step's parameters, gradients and optimizer state, per leaf.

    Nothing runs and nothing is allocated: the state's shapes come from
    ``jax.eval_shape(tx.init, params)`` and the byte count of every array is
    :math:`\prod(\text{shape}) \times \text{itemsize}` (a typed PRNG key counts
    its key data, e.g. 8 bytes for ``threefry``), which is exactly what
    ``tx.init(params)`` allocates. ``None`` entries, :class:`optax.MaskedNode`,
    :class:`optax.EmptyState` and other empty subtrees hold no bytes;
    integer counters and keys are counted. The gradient is one array per
    floating-point parameter, of the parameter's shape and dtype (integer
    parameters have no gradient bytes).

    **Fused block** (``fused_blocks``). When the stacked layers
    ``params[fused_blocks]`` (leading layer axis :math:`L` on every leaf) are
    trained with :func:`fused_layers`, their optimizer update runs inside the
    backward scan and at most one layer's gradient exists at a time. The report
    then counts, for each leaf of the block, one layer's gradient (the leaf's
    shape without the layer axis, :math:`1/L` of its bytes; per device, laid
    out like the parameter without its layer axis), and every other parameter's
    full gradient: ``grads_bytes`` equals :func:`fused_gradient_bytes`. Pass
    the fused step's own :class:`FusedTrainStep` (from
    :func:`fused_train_step`) as ``tx`` to count its exact state,
    ``train.init(rest, params[fused_blocks])`` where ``rest`` holds the other
    parameters (per-layer step counters and ``vmap``-ed states included); an
    ordinary transformation counts the unfused state ``tx.init(params)``.

    **Per device.** When the parameters carry :class:`jax.sharding.NamedSharding`
    (sharded arrays, or ``jax.ShapeDtypeStruct(..., sharding=...)``), or when
    ``mesh`` (and ``param_specs``) are given, every array's bytes are also
    split by device: gradients follow their parameters, and the state follows
    :func:`state_sharding` (the library's rules, which ``tx.init`` builds on
    Explicit meshes and ``jax.jit(tx.init, out_shardings=state_sharding(...))``
    builds on Auto ones). A replicated array counts in full on every device.

    **Compiled step.** With ``step_fn`` the report adds XLA's memory analysis of
    ``jax.jit(step_fn).lower(*step_args).compile()`` (a ``step_fn`` that is
    already jitted, e.g. with ``donate_argnums``, is lowered as it is):
    argument, output, alias (donated inputs reused as outputs), temporary
    and generated-code bytes and XLA's peak estimate, unchanged. For a sharded
    step these are per device (each device runs the same SPMD program). XLA
    counts a tuple output's pointer table in ``output_bytes`` (8 bytes per
    output array on CPU). The fused step's analysis is XLA's too: compile it
    with ``step_fn`` to see the gradient buffer it no longer holds.

    Args:
      tx: an optax transformation (anything with ``init``), or with
        ``fused_blocks`` a :class:`FusedTrainStep`.
      params: parameters: arrays, ``jax.ShapeDtypeStruct`` (abstract, nothing
        allocated) or Flax boxes; sharded or not.
      step_fn: optional training step to compile (jitted or not).
      step_args: the arguments to lower ``step_fn`` with (arrays or
        ``jax.ShapeDtypeStruct``).
      mesh: optional mesh; the parameters' leaves without a ``NamedSharding``
        are replicated on it.
      param_specs: optional ``PartitionSpec`` per parameter leaf (same order),
        with ``mesh``; overrides the parameters' own shardings.
      fused_blocks: optional key of the top-level parameter dict holding the
        stacked block trained with :func:`fused_layers` (e.g. ``'blocks'``).

    Returns:
      A :class:`MemoryReport` (a ``dict``; ``print`` it for a table).

    Raises:
      ValueError: ``tx`` has no ``init``; ``step_args`` without ``step_fn``;
        ``param_specs`` without ``mesh`` or of the wrong length;
        ``fused_blocks`` is not a key of the parameter dict or its leaves do
        not share a leading axis; a :class:`FusedTrainStep` without
        ``fused_blocks`` or with a mesh.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import lowrank_optax as lowrank
      >>> params = {'w': jax.ShapeDtypeStruct((1024, 512), jnp.float32),
      ...           'b': jax.ShapeDtypeStruct((512,), jnp.float32)}
      >>> adam = lowrank.memory_report(optax.adamw(1e-3), params)
      >>> galore = lowrank.memory_report(lowrank.galore_adamw(1e-3, rank=64), params)
      >>> adam['params_bytes'], adam['state_bytes'], galore['state_bytes']
      (2099200, 4198404, 659472)

      A stacked block of 4 layers whose update is fused into the backward
      pass holds one layer's gradient:

      >>> stacked = {'embed': jax.ShapeDtypeStruct((100, 8), jnp.float32),
      ...            'blocks': {'w': jax.ShapeDtypeStruct((4, 8, 8), jnp.float32)}}
      >>> report = lowrank.memory_report(optax.adam(1e-3), stacked,
      ...                                fused_blocks='blocks')
      >>> report['grads_bytes'], [r['shape'] for r in report['leaves']['grads']]
      (3456, [[8, 8], [100, 8]])
    """
    fused_step = isinstance(tx, FusedTrainStep)
    if not hasattr(tx, "init"):
        raise ValueError(f"`tx` must be an optax transformation with `init`; got {tx!r}.")
    if step_fn is None and tuple(step_args):
        raise ValueError("`step_args` given without `step_fn`.")
    if fused_step and fused_blocks is None:
        raise ValueError(
            "`tx` is a lowrank.fused_train_step: pass `fused_blocks`, the key of the stacked "
            "block in the parameter dict (its init takes the other parameters and the block)."
        )
    abstract_params = jax.tree.map(_abstract, params)
    param_leaves = jax.tree.leaves(abstract_params)
    fused = _fused_mask(abstract_params, fused_blocks)
    shardings = _param_shardings(param_leaves, mesh, param_specs)
    if shardings is not None:
        if fused_step:
            raise ValueError(
                "Per-device figures of a lowrank.fused_train_step's state are not "
                "available (state_sharding knows optax transformations): pass the "
                "unfused transformation with `fused_blocks` for per-device gradient bytes."
            )
        abstract_params = jax.tree.unflatten(
            jax.tree.structure(abstract_params),
            [
                jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
                for x, s in zip(param_leaves, shardings, strict=True)
            ],
        )
    if fused_step:
        rest = {k: v for k, v in abstract_params.items() if k != fused_blocks}
        abstract_state = jax.eval_shape(tx.init, rest, abstract_params[fused_blocks])
    else:
        abstract_state = jax.eval_shape(tx.init, abstract_params)
    state_shardings = None
    if shardings is not None:
        state_shardings = jax.tree.leaves(
            state_sharding(
                tx,
                abstract_params,
                jax.tree.unflatten(jax.tree.structure(abstract_params), shardings),
            ),
            is_leaf=lambda s: isinstance(s, NamedSharding),
        )

    param_rows = _rows(abstract_params, shardings)
    state_rows = _rows(abstract_state, state_shardings)
    grad_rows = _grad_rows(param_rows, param_leaves, shardings, fused)
    params_bytes = sum(r["bytes"] for r in param_rows)
    grads_bytes = sum(r["bytes"] for r in grad_rows)
    state_bytes = sum(r["bytes"] for r in state_rows)

    per_device = None
    if shardings is not None:
        device_ids = sorted({d.id for s in shardings for d in s.device_set})

        def total(rows: list[dict[str, Any]], device: int) -> int:
            return sum(r["device_bytes"].get(device, 0) for r in rows)

        per_device = [
            {
                "device": d,
                "params_bytes": total(param_rows, d),
                "grads_bytes": total(grad_rows, d),
                "state_bytes": total(state_rows, d),
            }
            for d in device_ids
        ]
        for r in param_rows + grad_rows + state_rows:
            del r["device_bytes"]

    compiled = None
    if step_fn is not None:
        jitted = step_fn if hasattr(step_fn, "lower") else jax.jit(step_fn)
        stats = jitted.lower(*step_args).compile().memory_analysis()
        if stats is not None:
            compiled = {key: _int_or_none(stats, field) for key, field in _COMPILED_FIELDS}

    return MemoryReport(
        params_bytes=params_bytes,
        grads_bytes=grads_bytes,
        state_bytes=state_bytes,
        total_bytes=params_bytes + grads_bytes + state_bytes,
        num_params=sum(math.prod(r["shape"]) for r in param_rows),
        fused_blocks=fused_blocks,
        leaves={"params": param_rows, "grads": grad_rows, "state": state_rows},
        per_device=per_device,
        compiled=compiled,
    )


def _int_or_none(stats: Any, field: str) -> int | None:
    value = getattr(stats, field, None)
    return None if value is None else int(value)
