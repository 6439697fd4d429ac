"""Sharded optimizer state: partition specs for shape-changing states.

Rules (``galore.md`` §3) for a projected leaf whose 2-D view has the spec
``(s_row, s_col)`` (batch-axis specs kept in front):

==========================  ==================
array                       spec
==========================  ==================
left basis ``P`` (m×r)      ``(s_row, None)``
right basis ``P`` (r×n)     ``(None, s_col)``
left coordinates (r×n)      ``(None, s_col)``
right coordinates (m×r)     ``(s_row, None)``
``full`` coordinates (r×r)  ``(None, None)``
other leaves' inner state   the param spec
count, key, scalars         ``P()``
==========================  ==================

The basis takes the parameter's spec on the projected axis and none on the rank
axis; low-rank moments take the parameter's spec with the projected axis
unsharded. A merged N-D axis group keeps the spec of its major axis only if the
other axes of the group are unsharded.

LRE (``eigenbasis_update``, ``lre``) flattens the model into one vector of length
``n`` (or one per leaf with ``per_leaf=True``):

================================================  ================
array                                             spec
================================================  ================
``Q`` (n×r), GGT history, other ``n``-row arrays  ``(axes, None)``
``r``-vectors, ``r×r`` matrices, inner state      ``P()``
================================================  ================

where ``axes`` are the mesh axes named in the parameters' specs (in order of first
appearance), the last dropped while ``n`` is not divisible by their sizes'
product (:func:`state_partition_specs` knows no sizes and assumes they divide
``n``); with ``per_leaf`` each leaf's arrays follow that leaf.

Mechanism: the library's transformations build their state with explicit
sharding *types* whenever the parameters carry them (``jax.make_mesh``'s default
Explicit axes). :func:`state_partition_specs` therefore traces ``tx.init`` on
abstract parameters typed with the given specs on an Explicit abstract mesh and
reads the specs off the abstract state. Optax transformations inside or around
the library's wrappers inherit their specs from ``zeros_like`` as usual, so any
composition works (``chain``, ``masked``, ``partition``, ``MultiSteps``,
``inject_hyperparams``, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh, AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

Spec = tuple[Any, ...]


def explicit_spec(x: Any) -> Spec | None:
    """The per-axis spec of ``x`` if its type carries Explicit sharding, else ``None``."""
    try:
        aval = jax.typeof(x)
    except TypeError:
        return None
    sharding = getattr(aval, "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.empty or AxisType.Explicit not in tuple(mesh.axis_types):
        return None
    spec = tuple(sharding.spec)
    return spec + (None,) * (aval.ndim - len(spec))


def _named(like: Any, spec: Spec) -> NamedSharding:
    return NamedSharding(jax.typeof(like).sharding.mesh, P(*spec))


def reshard(x: jax.Array, spec: Spec | None, like: Any) -> jax.Array:
    """Reshards ``x`` to ``spec`` on the mesh of ``like`` (no-op when ``spec`` is None)."""
    if spec is None:
        return x
    return jax.sharding.reshard(x, _named(like, spec))


def replicated(x: jax.Array) -> jax.Array:
    """``x`` fully replicated when its type carries an Explicit sharding (else ``x``).

    The one "gather before a decomposition" helper: a no-op off Explicit meshes
    and for arrays that are already replicated.
    """
    spec = explicit_spec(x)
    if spec is None or all(s is None for s in spec):
        return x
    return reshard(x, (None,) * len(spec), x)


def matmul(a: jax.Array, b: jax.Array, out_spec: Spec | None, like: Any) -> jax.Array:
    """``a @ b`` with an explicit output spec (needed when the contraction is sharded)."""
    if out_spec is None:
        return a @ b
    return jnp.matmul(a, b, out_sharding=_named(like, out_spec))


def axis_names(entry: Any) -> tuple[str, ...]:
    """Mesh axis names of one spec entry (``None``, a name, or a tuple of names)."""
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, tuple) else (entry,)


def axis_size(entry: Any, like: Any) -> int:
    """Number of blocks one spec entry cuts an axis into, on the mesh of ``like``."""
    shape = jax.typeof(like).sharding.mesh.shape
    size = 1
    for name in axis_names(entry):
        size *= shape[name]
    return size


def shard_local(
    fn: Callable[..., Any], args: Sequence[jax.Array], in_specs: Sequence[Spec], out_specs: Any
) -> Any:
    """``fn`` on every device's blocks of ``args`` (``jax.shard_map`` on their Explicit mesh).

    ``in_specs`` holds one per-axis spec per argument; ``out_specs`` is the
    output's spec, or a list of specs when ``fn`` returns a tuple. ``fn`` sees
    local blocks and may use collectives over the mesh's axes. The library uses
    it only where a computation has no sharded (Explicit) form: block-local
    LAPACK calls of the sharded range finder.
    """
    mesh = jax.typeof(args[0]).sharding.mesh
    if isinstance(out_specs, list):
        outs: Any = tuple(P(*o) for o in out_specs)
    else:
        outs = P(*out_specs)
    ins = tuple(P(*s) for s in in_specs)
    return jax.shard_map(fn, mesh=mesh, in_specs=ins, out_specs=outs)(*args)


def zeros(shape: tuple[int, ...], dtype: Any, spec: Spec | None, like: Any) -> jax.Array:
    """Zeros of ``shape`` with the explicit ``spec`` (plain zeros when ``spec`` is None)."""
    if spec is None:
        return jnp.zeros(shape, dtype)
    return jnp.zeros(shape, dtype, out_sharding=_named(like, spec))


def merge_group_spec(specs: Spec) -> Any:
    """Spec of a merged axis group: its major axis's spec if the others are unsharded."""
    if not specs:
        return None
    if all(s is None for s in specs[1:]):
        return specs[0]
    return None


def _leaf_and_spec_lists(params: Any, param_specs: Any) -> tuple[list[Any], list[Any]]:
    leaves = jax.tree.leaves(params)
    specs = jax.tree.leaves(param_specs, is_leaf=lambda s: isinstance(s, P) or s is None)
    specs = [P() if s is None else s for s in specs]
    if len(leaves) != len(specs):
        raise ValueError(
            "`param_specs`/`param_sharding` must have one spec per parameter leaf; got "
            f"{len(specs)} specs for {len(leaves)} leaves."
        )
    return leaves, specs


def _abstract_specs(tx: Any, params: Any, specs: list[Any], mesh: AbstractMesh) -> Any:
    leaves = jax.tree.leaves(params)
    typed = [
        jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x), sharding=NamedSharding(mesh, s))
        for x, s in zip(leaves, specs, strict=True)
    ]
    abstract_params = jax.tree.unflatten(jax.tree.structure(params), typed)
    with jax.sharding.use_abstract_mesh(mesh):
        abstract_state = jax.eval_shape(tx.init, abstract_params)

    def spec_of(x: Any) -> P:
        sharding = getattr(x, "sharding", None)
        return sharding.spec if isinstance(sharding, NamedSharding) else P()

    return jax.tree.map(spec_of, abstract_state)


def _axis_names(specs: list[Any]) -> list[str]:
    names: list[str] = []
    for spec in specs:
        for entry in spec:
            group = entry if isinstance(entry, tuple) else (entry,)
            names += [n for n in group if n is not None and n not in names]
    return names


def state_partition_specs(tx: Any, params: Any, param_specs: Any) -> Any:
    """Partition specs of ``tx.init(params)`` given the parameters' specs.

    Works for any composition of library wrappers and optax transforms; the
    low-rank arrays follow the rules in this module's docstring (LRE's
    flattened ``n``-row arrays: sharded along ``n``, assuming the axes divide it),
    counters and keys are replicated (``P()``).

    Args:
      tx: an optax transformation (or anything with ``init``).
      params: parameters or abstract parameters (``jax.ShapeDtypeStruct``); Flax
        boxes are fine.
      param_specs: a ``PartitionSpec`` per parameter leaf (a tree with the
        parameters' leaves in the same order, e.g. ``nn.get_partition_spec``).

    Returns:
      A pytree of ``PartitionSpec`` matching ``tx.init(params)``.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> from jax.sharding import PartitionSpec as P
      >>> import lowrank_optax as lowrank
      >>> params = {'w': jnp.zeros((64, 32))}
      >>> tx = lowrank.galore(optax.adam(1e-3), rank=4)
      >>> specs = lowrank.state_partition_specs(tx, params, {'w': P('data', None)})
      >>> specs.bases["['w']"].right, specs.inner_state[0].mu['w']
      (PartitionSpec(None, None), PartitionSpec('data', None))
    """
    _, specs = _leaf_and_spec_lists(params, param_specs)
    names = _axis_names(specs)
    mesh = AbstractMesh(
        (1,) * len(names), tuple(names), axis_types=(AxisType.Explicit,) * len(names)
    )
    return _abstract_specs(tx, params, specs, mesh)


def state_sharding(tx: Any, params: Any, param_sharding: Any) -> Any:
    """``NamedSharding`` of every array of ``tx.init(params)``, for ``jax.jit(out_shardings=)``.

    Args:
      tx: an optax transformation.
      params: parameters or abstract parameters (``jax.ShapeDtypeStruct``).
      param_sharding: a ``NamedSharding`` per parameter leaf (same leaf order), all
        on one mesh (Explicit or Auto axes).

    Returns:
      A pytree of ``NamedSharding`` matching ``tx.init(params)``: projectors take the
      parameter's spec on the projected axis and none on the rank axis, low-rank
      moments the parameter's spec with the projected axis unsharded; LRE's
      flattened ``n``-row arrays (bases ``Q``, histories, curvature vectors) are
      sharded along ``n`` over the parameters' mesh axes and its ``r``-sized work is
      replicated; counters and keys are replicated.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import lowrank_optax as lowrank
      >>> mesh = jax.make_mesh((1,), ('data',))
      >>> params = {'w': jnp.zeros((64, 32))}
      >>> sharding = {'w': jax.sharding.NamedSharding(mesh, jax.P('data', None))}
      >>> tx = lowrank.galore(optax.adam(1e-3), rank=4)
      >>> out = lowrank.state_sharding(tx, params, sharding)
      >>> state = jax.jit(tx.init, out_shardings=out)(params)
    """
    leaves = jax.tree.leaves(param_sharding, is_leaf=lambda s: isinstance(s, NamedSharding))
    meshes = {s.mesh for s in leaves if isinstance(s, NamedSharding)}
    if len(meshes) != 1:
        raise ValueError(
            "`param_sharding` must be NamedShardings on exactly one mesh; got "
            f"{len(meshes)} meshes."
        )
    mesh = meshes.pop()
    specs = [s.spec for s in leaves]
    _leaf_and_spec_lists(params, specs)
    names = tuple(mesh.axis_names)
    abstract = AbstractMesh(
        tuple(mesh.axis_sizes), names, axis_types=(AxisType.Explicit,) * len(names)
    )
    spec_tree = _abstract_specs(tx, params, specs, abstract)
    return jax.tree.map(
        lambda s: NamedSharding(mesh, s), spec_tree, is_leaf=lambda s: isinstance(s, P)
    )
