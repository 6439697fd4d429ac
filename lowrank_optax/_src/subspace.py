"""Projection geometry shared by every subspace method: leaf plans and projections.

A *leaf plan* is the static description of how one parameter leaf is viewed as a
(batch of) matrices and which side(s) of that matrix carry a basis:

* the leaf's axes are permuted to ``(batch..., rows..., cols...)`` and reshaped to
  ``(batch..., m, n)``, rows being the product of the ``reduction_axes`` and
  columns the product of the ``output_axes`` of its :class:`DimensionNumbers`;
* ``side`` is ``'left'`` (basis ``P`` of shape ``m×r``, coordinates ``Pᵀ G`` of
  shape ``r×n``), ``'right'`` (basis ``r×n``, coordinates ``G Pᵀ`` of shape
  ``m×r``) or ``'full'`` (both, coordinates ``r×r``).

Plans are Python objects computed at trace time from shapes only, so they cost
nothing at run time and never enter optimizer state.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lowrank_optax._src.sharding import Spec, explicit_spec, matmul, merge_group_spec, reshard
from lowrank_optax._src.validation import check_choice

PROJ_TYPES = ("std", "reverse_std", "right", "left", "full")
PROJ_TYPE_ALIASES = {"symmetric": "full", "asymmetric": "std"}


def canonical_proj_type(proj_type: str) -> str:
    """Validates ``proj_type`` and resolves the documented aliases."""
    check_choice("proj_type", proj_type, PROJ_TYPES + tuple(PROJ_TYPE_ALIASES))
    return PROJ_TYPE_ALIASES.get(proj_type, proj_type)


class DimensionNumbers(NamedTuple):
    """How an N-D leaf is viewed as a (batch of) matrices.

    Attributes:
      reduction_axes: axis or axes whose product forms the matrix rows.
      output_axes: axis or axes whose product forms the matrix columns.

    Axes in neither group are batch axes: each batch index gets its own basis
    (stacked or scanned layers). Example: a ``(embed, heads, head_dim)`` kernel
    with ``DimensionNumbers(reduction_axes=0, output_axes=(1, 2))``.
    """

    reduction_axes: int | Sequence[int] = 0
    output_axes: int | Sequence[int] = 1


class LeafBasis(NamedTuple):
    """Bases of one projected leaf (``None`` on a side without a basis).

    Attributes:
      left: ``(batch..., m, r)`` orthonormal columns, or ``None``.
      right: ``(batch..., r, n)`` orthonormal rows, or ``None``.
    """

    left: jax.Array | None
    right: jax.Array | None


@dataclasses.dataclass(frozen=True)
class LeafPlan:
    """Static projection plan of one leaf (see the module docstring).

    ``spec`` is the leaf's per-axis partition spec when its type carries Explicit
    sharding (``None`` otherwise); the ``*_spec`` properties then give the specs of
    the matrix view, bases and coordinates (rules in :mod:`sharding`), and the
    projections request them explicitly so that sharded matmuls stay sharded.
    """

    shape: tuple[int, ...]
    batch_axes: tuple[int, ...]
    row_axes: tuple[int, ...]
    col_axes: tuple[int, ...]
    side: str
    rank: int
    spec: Spec | None = None

    @property
    def perm(self) -> tuple[int, ...]:
        return self.batch_axes + self.row_axes + self.col_axes

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[a] for a in self.batch_axes)

    @property
    def m(self) -> int:
        return math.prod(self.shape[a] for a in self.row_axes)

    @property
    def n(self) -> int:
        return math.prod(self.shape[a] for a in self.col_axes)

    @property
    def is_plain_matrix(self) -> bool:
        return self.perm == tuple(range(len(self.shape))) and len(self.shape) == 2

    @property
    def coord_shape(self) -> tuple[int, ...]:
        """Shape of the low-rank coordinates the inner transformation sees."""
        r, m, n = self.rank, self.m, self.n
        tail = {"left": (r, n), "right": (m, r), "full": (r, r)}[self.side]
        return self.batch_shape + tail

    @property
    def left_shape(self) -> tuple[int, ...] | None:
        if self.side == "right":
            return None
        return self.batch_shape + (self.m, self.rank)

    @property
    def right_shape(self) -> tuple[int, ...] | None:
        if self.side == "left":
            return None
        return self.batch_shape + (self.rank, self.n)

    # -- explicit-sharding specs (all None without Explicit sharding) ------------
    def _group(self, axes: tuple[int, ...]) -> Any:
        assert self.spec is not None
        return merge_group_spec(tuple(self.spec[a] for a in axes))

    def _batch_spec(self) -> Spec:
        assert self.spec is not None
        return tuple(self.spec[a] for a in self.batch_axes)

    def _tail_spec(self, row: Any, col: Any) -> Spec | None:
        if self.spec is None:
            return None
        return self._batch_spec() + (row, col)

    @property
    def row_spec(self) -> Any:
        return None if self.spec is None else self._group(self.row_axes)

    @property
    def col_spec(self) -> Any:
        return None if self.spec is None else self._group(self.col_axes)

    @property
    def left_spec(self) -> Spec | None:
        return self._tail_spec(self.row_spec, None)

    @property
    def right_spec(self) -> Spec | None:
        return self._tail_spec(None, self.col_spec)

    @property
    def coord_spec(self) -> Spec | None:
        row = self.row_spec if self.side == "right" else None
        col = self.col_spec if self.side == "left" else None
        return self._tail_spec(row, col)

    @property
    def decomposition_spec(self) -> Spec | None:
        """Spec the gradient is resharded to before a decomposition (batch axes only)."""
        return self._tail_spec(None, None)

    # -- matrix view ---------------------------------------------------------
    def to_matrix(self, x: jax.Array) -> jax.Array:
        """``(shape)`` → ``(batch..., m, n)``."""
        if self.is_plain_matrix:
            return x
        x = jnp.transpose(x, self.perm)
        if self.spec is not None:
            # Only the major axis of a merged group may stay sharded.
            grouped = [self._batch_spec()]
            for axes in (self.row_axes, self.col_axes):
                grouped.append((self._group(axes),) + (None,) * (len(axes) - 1))
            x = reshard(x, sum(grouped, ()), x)
        return x.reshape(self.batch_shape + (self.m, self.n))

    def from_matrix(self, x: jax.Array) -> jax.Array:
        """``(batch..., m, n)`` → ``(shape)`` (inverse of :meth:`to_matrix`)."""
        if self.is_plain_matrix:
            return x
        permuted = tuple(self.shape[a] for a in self.perm)
        inverse = tuple(sorted(range(len(self.perm)), key=self.perm.__getitem__))
        return jnp.transpose(x.reshape(permuted), inverse)

    # -- projections ---------------------------------------------------------
    def project(self, g: jax.Array, basis: LeafBasis) -> jax.Array:
        """Full-shape gradient → low-rank coordinates (``coord_shape``)."""
        g2 = self.to_matrix(g)
        row, col = self.row_spec, self.col_spec
        if basis.left is not None:
            g2 = matmul(jnp.swapaxes(basis.left, -1, -2), g2, self._tail_spec(None, col), g2)
            row = None
        if basis.right is not None:
            g2 = matmul(g2, jnp.swapaxes(basis.right, -1, -2), self._tail_spec(row, None), g2)
        return g2

    def back(self, coords: jax.Array, basis: LeafBasis) -> jax.Array:
        """Low-rank coordinates → full-shape update (no scale)."""
        x = coords
        row = self.row_spec if self.side == "right" else None
        if basis.left is not None:
            col = self.col_spec if self.side == "left" else None
            x = matmul(basis.left, x, self._tail_spec(self.row_spec, col), x)
            row = self.row_spec
        if basis.right is not None:
            x = matmul(x, basis.right, self._tail_spec(row, self.col_spec), x)
        return self.from_matrix(x)


def _side(proj_type: str, m: int, n: int) -> str:
    if proj_type == "std":
        return "right" if m >= n else "left"
    if proj_type == "reverse_std":
        return "left" if m >= n else "right"
    return proj_type


def _as_axes(axes: int | Sequence[int], ndim: int, what: str) -> tuple[int, ...]:
    if isinstance(axes, (int, np.integer)):
        seq: tuple = (axes,)
    elif isinstance(axes, (tuple, list)):
        seq = tuple(axes)
    else:
        raise ValueError(
            f"`dimension_numbers.{what}` must be an int or a tuple of ints, got {axes!r}."
        )
    out = []
    for a in seq:
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)) or not -ndim <= a < ndim:
            raise ValueError(
                f"`dimension_numbers.{what}` has axis {a!r} out of range for a leaf with "
                f"{ndim} dimensions (allowed: integers in [{-ndim}, {ndim - 1}])."
            )
        out.append(int(a) % ndim)
    if not out:
        raise ValueError(f"`dimension_numbers.{what}` must name at least one axis.")
    return tuple(out)


def make_plan(
    shape: tuple[int, ...],
    dims: DimensionNumbers,
    *,
    rank: int,
    proj_type: str,
    spec: Spec | None = None,
) -> LeafPlan:
    """Builds the static plan of a leaf of ``shape`` (``proj_type`` canonical)."""
    ndim = len(shape)
    rows = _as_axes(dims.reduction_axes, ndim, "reduction_axes")
    cols = _as_axes(dims.output_axes, ndim, "output_axes")
    if len(set(rows + cols)) != len(rows) + len(cols):
        raise ValueError(
            "`dimension_numbers`: reduction_axes and output_axes must be distinct axes, "
            f"got {dims} for a leaf of shape {shape}."
        )
    batch = tuple(a for a in range(ndim) if a not in rows + cols)
    m = math.prod(shape[a] for a in rows)
    n = math.prod(shape[a] for a in cols)
    r = min(rank, m, n)
    return LeafPlan(tuple(shape), batch, rows, cols, _side(proj_type, m, n), r, spec)


# -- Flax boxes ------------------------------------------------------------------


def is_box(x: Any) -> bool:
    """True for Flax metadata boxes (``nnx.Variable``, ``nn.Partitioned``, ...)."""
    if "flax" not in sys.modules:
        return False
    from flax import nnx
    from flax.core import meta

    return isinstance(x, (nnx.Variable, meta.AxisMetadata))


def _unbox_one(x: Any) -> Any:
    if not is_box(x):
        return x
    value = x.get_value() if hasattr(x, "get_value") else x.value
    return value


def unbox(tree: Any) -> Any:
    """Replaces every Flax box in ``tree`` by its raw array (containers are kept)."""
    return jax.tree.map(_unbox_one, tree, is_leaf=is_box)


# -- leaf selection --------------------------------------------------------------

DimsSpec = DimensionNumbers | None
DimsArg = DimensionNumbers | Any | Callable[[Any], Any] | None
MaskArg = Any | Callable[[Any], Any] | None


def _broadcast_prefix(prefix: Any, tree: Any, is_leaf: Callable[[Any], bool]) -> list[Any]:
    """Per-leaf values of a prefix pytree, aligned with ``jax.tree.leaves(tree)``."""
    treedef = jax.tree.structure(tree)
    try:
        expanded = jax.tree.map(
            lambda spec, sub: jax.tree.map(lambda _: spec, sub), prefix, tree, is_leaf=is_leaf
        )
        return treedef.flatten_up_to(expanded)
    except (ValueError, TypeError) as e:
        raise ValueError(
            "`dimension_numbers`/`mask` must be a pytree prefix of the parameters "
            f"(structure {treedef}); got {prefix!r}."
        ) from e


def _is_selected(label: Any) -> bool:
    if isinstance(label, str):
        return label == "lowrank"
    if isinstance(label, (bool, np.bool_)):
        return bool(label)
    raise ValueError(
        "`mask` leaves must be booleans or labels (strings; 'lowrank' selects a leaf), "
        f"got {label!r}."
    )


def resolve_plans(
    tree: Any,
    *,
    rank: int,
    proj_type: str,
    dimension_numbers: DimsArg,
    mask: MaskArg,
) -> list[LeafPlan | None]:
    """Static plan (or ``None`` = not projected) of every leaf of unboxed ``tree``."""
    leaves = jax.tree.leaves(tree)
    dn_leaf = lambda x: x is None or isinstance(x, DimensionNumbers)
    if callable(dimension_numbers) and not isinstance(dimension_numbers, DimensionNumbers):
        dimension_numbers = dimension_numbers(tree)
    if dimension_numbers is None:
        dims: list[DimsSpec] = [
            DimensionNumbers(0, 1) if jnp.ndim(x) == 2 else None for x in leaves
        ]
    elif isinstance(dimension_numbers, DimensionNumbers):
        dims = [dimension_numbers if jnp.ndim(x) >= 2 else None for x in leaves]
    else:
        dims = _broadcast_prefix(dimension_numbers, tree, dn_leaf)
    if mask is not None:
        if callable(mask):
            mask = mask(tree)
        selected = _broadcast_prefix(mask, tree, lambda x: x is None or isinstance(x, bool))
        dims = [d if _is_selected(s) else None for d, s in zip(dims, selected, strict=True)]
    plans: list[LeafPlan | None] = []
    for x, d in zip(leaves, dims, strict=True):
        if d is not None and not isinstance(d, DimensionNumbers):
            raise ValueError(
                f"`dimension_numbers` leaves must be DimensionNumbers or None, got {d!r}."
            )
        plans.append(
            None
            if d is None
            else make_plan(jnp.shape(x), d, rank=rank, proj_type=proj_type, spec=explicit_spec(x))
        )
    return plans
