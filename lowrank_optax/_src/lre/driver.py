"""``eigenbasis_update``: the LRE driver, and the ``lre`` alias.

One step, block by block (the flattened model is one block, or each leaf is one
with ``per_leaf=True``): the curvature collects its inputs (:func:`_update`), the
basis of every block is updated from the correction (:func:`_update_bases`,
inside a ``lax.cond`` unless every step updates), and the inner transformation
runs on the coordinates (:func:`_run_inner`). The per-block state is one type,
:class:`EigenbasisBlockState`; a block's step returns a :class:`_BlockStep`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

# optax.tree_map_params calls init on this placeholder; optax has no public name for
# it, and init must recognise it to return a state with no parameter-shaped array.
from optax.tree_utils._state_utils import _ParamsPlaceholder

from lowrank_optax._src import validation as v
from lowrank_optax._src.adam_in_basis import scale_by_adam_in_basis
from lowrank_optax._src.basis_rotation import BasisRotation
from lowrank_optax._src.linalg import full_precision
from lowrank_optax._src.lre import bases as bases_lib
from lowrank_optax._src.lre import curvatures as curvatures_lib
from lowrank_optax._src.lre import flatten
from lowrank_optax._src.lre.bases import Basis, BasisSpec
from lowrank_optax._src.lre.curvatures import Buffers, CollectContext, Correction, Curvature
from lowrank_optax._src.lre.inner import (
    CurvatureProbes,
    cautious_in_basis,
    clip_norm_by_ema_in_basis,
)
from lowrank_optax._src.lre.linalg import keep_if, tiny
from lowrank_optax._src.numerics import working_dtype

RESERVED_EXTRA_ARGS = (
    "projected_grad",
    "basis_rotation",
    "eigenvalues",
    "basis_valid",
    "curvature_probes",
)


class EigenbasisBlockState(NamedTuple):
    """State of one basis block of :func:`eigenbasis_update`.

    A block is the whole flattened model (``per_leaf=False``) or one leaf.

    Attributes:
      basis: state of the basis; it holds ``Q`` (explicit ``(n, r)`` columns, or
        the GGT history and coefficients with ``Q = history @ w``).
      eigenvalues: ``(r,)`` regularised eigenvalues ``L_reg`` (0 where invalid).
      valid: ``(r,)`` mask of the regularised basis used for the step.
      acc_eigenvalues: ``(r,)`` accumulator eigenvalues ``L_acc`` (for BFGS/SR1).
      acc_valid: ``(r,)`` mask of the accumulator basis.
      has_basis: boolean scalar; a basis update has succeeded.
    """

    basis: Any
    eigenvalues: jax.Array
    valid: jax.Array
    acc_eigenvalues: jax.Array
    acc_valid: jax.Array
    has_basis: jax.Array


class EigenbasisState(NamedTuple):
    """State of :func:`eigenbasis_update`.

    Attributes:
      count: number of completed steps (int32 scalar).
      blocks: one :class:`EigenbasisBlockState` per basis: a 1-tuple, or one per
        leaf (in ``jax.tree.leaves`` order) with ``per_leaf=True``.
      curvature_state: state of the curvature (global).
      inner_state: state of the inner transformation (at the ``r``-dimensional
        coordinate shapes).
      key: PRNG key (``uint32[2]``), split every step.
    """

    count: jax.Array
    blocks: tuple[EigenbasisBlockState, ...]
    curvature_state: Any
    inner_state: optax.OptState
    key: jax.Array


class _Config(NamedTuple):
    """The validated, static arguments of one :func:`eigenbasis_update`."""

    inner: optax.GradientTransformationExtraArgs
    curvature: Curvature
    basis: Basis
    update_freq: int
    init_steps: int
    symmetrize: bool | str
    per_leaf: bool
    compute_dtype: Any
    seed: int
    k: int  # correction columns per basis update (after symmetrisation)
    has_z: bool  # the basis receives a Z factor
    signed: bool  # the basis receives signed columns


class _Layout(NamedTuple):
    """Where each block lives in the flat ``(n,)`` vector, and how it is sharded."""

    blocks: list[tuple[int, int]]  # (start, size)
    rows: Any  # layout of the flat vector on an Explicit mesh, else None
    block_rows: list[Any]  # layout of each block
    specs: list[BasisSpec]

    def take(self, a: jax.Array, i: int) -> jax.Array:
        start, size = self.blocks[i]
        return flatten.block(a, start, size, self.block_rows[i])

    def join(self, parts: list[jax.Array]) -> jax.Array:
        return flatten.join(parts, self.rows)


class _BlockStep(NamedTuple):
    """What one block's basis update hands to the inner step."""

    block: EigenbasisBlockState
    rotation: BasisRotation  # left = C = Q_newᵀQ_old (masked), apply
    projection: jax.Array | None  # Qᵀg from the update itself (fused bases)


def _inner_transformation(inner: Any) -> optax.GradientTransformationExtraArgs:
    example = "lowrank.scale_by_adam_in_basis() (or a list of them, or None)"
    if inner is None or (isinstance(inner, (list, tuple)) and not inner):
        return optax.with_extra_args_support(optax.identity())
    if isinstance(inner, (list, tuple)):
        for i, tx in enumerate(inner):
            v.check_transformation(f"inner[{i}]", tx, example=example)
        return optax.chain(*inner)
    v.check_transformation("inner", inner, example=example)
    return optax.with_extra_args_support(inner)


def _floating_leaves(tree: Any, what: str) -> list[Any]:
    v.check_floating(tree, what, "lowrank.eigenbasis_update")
    return jax.tree.leaves(tree)


def _config(
    inner: Any,
    curvature: Any,
    basis: Any,
    update_freq: Any,
    init_steps: Any,
    symmetrize: Any,
    per_leaf: Any,
    compute_dtype: Any,
    seed: Any,
) -> _Config:
    """Validates :func:`eigenbasis_update`'s arguments (``None`` means the default)."""
    inner_tx = _inner_transformation(inner)
    if not isinstance(curvature, Curvature):
        raise ValueError(
            "`curvature` must be a lowrank.curvatures instance (e.g. "
            f"lowrank.curvatures.covariance()), got {curvature!r}."
        )
    if not isinstance(basis, Basis):
        raise ValueError(
            f"`basis` must be a lowrank.bases instance (e.g. lowrank.bases.ggt()), got {basis!r}."
        )
    update_freq = v.check_int("update_freq", 1 if update_freq is None else update_freq, minimum=1)
    init_steps = v.check_int("init_steps", 0 if init_steps is None else init_steps, minimum=0)
    seed = v.check_int("seed", 0 if seed is None else seed, minimum=0)
    if not (symmetrize is True or symmetrize is False or symmetrize == "average"):
        raise ValueError(f"`symmetrize` must be one of True, False, 'average'; got {symmetrize!r}.")
    if not isinstance(per_leaf, (bool, np.bool_)):
        raise ValueError(f"`per_leaf` must be True or False, got {per_leaf!r}.")
    has_z = curvature.has_z and symmetrize is False
    exact_sym = curvature.has_z and symmetrize is True
    signed = curvature.signed or exact_sym
    if basis.symmetric_only and has_z:
        raise ValueError(
            f"lowrank.bases.{basis.name} needs symmetric corrections, but "
            f"lowrank.curvatures.{curvature.name} with symmetrize=False gives asymmetric "
            "ones; use symmetrize=True or 'average'."
        )
    if basis.unsigned_only and signed:
        raise ValueError(
            f"lowrank.bases.{basis.name} needs positive semi-definite corrections, but "
            f"lowrank.curvatures.{curvature.name} (symmetrize={symmetrize!r}) gives signed "
            "ones."
        )
    k = curvature.columns(update_freq) * (2 if exact_sym else 1)
    return _Config(
        inner_tx,
        curvature,
        basis,
        update_freq,
        init_steps,
        symmetrize,
        bool(per_leaf),
        v.check_float_dtype("compute_dtype", compute_dtype),
        seed,
        k,
        has_z,
        signed,
    )


def _layout(cfg: _Config, tree: Any, dtype: Any) -> _Layout:
    """Blocks of the flattened ``tree`` and their layouts (Explicit meshes)."""
    leaves = jax.tree.leaves(tree)
    sizes = [int(np.prod(jnp.shape(x))) for x in leaves]
    rows = flatten.rows_sharding(leaves)
    if cfg.per_leaf:
        blocks = [(sum(sizes[:i]), size) for i, size in enumerate(sizes)]
        block_rows = [rows if rows is None else flatten.rows_sharding([x]) for x in leaves]
    else:
        blocks, block_rows = [(0, sum(sizes))], [rows]
    specs = [
        BasisSpec(size, cfg.k, dtype, cfg.has_z, cfg.signed, r)
        for (_, size), r in zip(blocks, block_rows, strict=True)
    ]
    return _Layout(blocks, rows, block_rows, specs)


def _compute_dtype(cfg: _Config, dtype: Any) -> Any:
    return working_dtype(dtype if cfg.compute_dtype is None else cfg.compute_dtype)


def _coordinates(cfg: _Config, items: list[Any], like: Any) -> Any:
    """The inner transformation's view of per-block items: one, or a tree like ``like``."""
    if not cfg.per_leaf:
        return items[0]
    return jax.tree.unflatten(jax.tree.structure(like), items)


def _init(cfg: _Config, params: optax.Params) -> EigenbasisState:
    if isinstance(params, _ParamsPlaceholder):
        # optax.tree_map_params: nothing here has a parameter's shape.
        return EigenbasisState(*([0] * len(EigenbasisState._fields)))  # type: ignore[arg-type]
    # Size and dtype of the flattened vector without concatenating (init must
    # also trace on abstract, possibly Explicit-sharded, parameters).
    leaves = _floating_leaves(params, "parameters")
    dtype = _compute_dtype(cfg, jnp.result_type(*leaves))
    layout = _layout(cfg, params, dtype)
    n = sum(size for _, size in layout.blocks)
    key, *block_keys = jax.random.split(jax.random.PRNGKey(cfg.seed), len(layout.specs) + 1)
    blocks, coords = [], []
    for spec, block_key in zip(layout.specs, block_keys, strict=True):
        r = cfg.basis.rank(spec)
        # Fresh arrays for every field: states must not share buffers (donation).
        blocks.append(
            EigenbasisBlockState(
                basis=cfg.basis.init(spec, block_key),
                eigenvalues=jnp.zeros((r,), dtype),
                valid=jnp.zeros((r,), jnp.bool_),
                acc_eigenvalues=jnp.zeros((r,), dtype),
                acc_valid=jnp.zeros((r,), jnp.bool_),
                has_basis=jnp.zeros([], jnp.bool_),
            )
        )
        coords.append(jnp.zeros((r,), dtype))
    curvature_state = jax.tree.map(
        lambda a: flatten.put_rows(a, layout.rows) if jnp.ndim(a) and a.shape[0] == n else a,
        cfg.curvature.init(n, dtype, cfg.update_freq),
    )
    return EigenbasisState(
        count=jnp.zeros([], jnp.int32),
        blocks=tuple(blocks),
        curvature_state=curvature_state,
        inner_state=cfg.inner.init(_coordinates(cfg, coords, params)),
        key=key,
    )


def _symmetrized(corr: Correction, mode: Any) -> Correction:
    if corr.z is None or mode is False:
        return corr
    y, z = corr.y, corr.z
    if mode == "average":
        return Correction((y + z) / 2, None, corr.alpha, corr.valid)
    # (YZᵀ + ZYᵀ)/2 = ¼[(Y+Z)(Y+Z)ᵀ − (Y−Z)(Y−Z)ᵀ]
    return Correction(
        jnp.concatenate([(y + z) / 2, (y - z) / 2], axis=1),
        None,
        jnp.concatenate([corr.alpha, -corr.alpha]),
        jnp.concatenate([corr.valid, corr.valid]),
    )


def _project_out(
    cfg: _Config, layout: _Layout, blocks: Sequence[EigenbasisBlockState], z: jax.Array
) -> jax.Array:
    """``z − Q(Qᵀz)`` block by block in the accumulator basis (``z`` where none yet)."""
    parts = []
    for i, block in enumerate(blocks):
        zb = layout.take(z, i)
        coords = jnp.where(block.acc_valid, cfg.basis.project(block.basis, zb), 0)
        parts.append(jnp.where(block.has_basis, zb - cfg.basis.unproject(block.basis, coords), zb))
    return layout.join(parts)


def _normalize(layout: _Layout, z: jax.Array) -> jax.Array:
    """``z / max(‖z‖, tiny)`` block by block."""
    parts = []
    for i in range(len(layout.blocks)):
        zb = layout.take(z, i)
        parts.append(zb / jnp.maximum(jnp.linalg.norm(zb), tiny(zb.dtype)))
    return layout.join(parts)


def _update_block(
    cfg: _Config,
    layout: _Layout,
    i: int,
    old: EigenbasisBlockState,
    buffers: Buffers,
    g: jax.Array,
    key: jax.Array,
) -> _BlockStep:
    """Updates block ``i``'s basis from the curvature's buffers (old basis if it fails)."""
    basis = cfg.basis
    lam_acc = jnp.where(old.acc_valid, old.acc_eigenvalues, 0)

    def apply_b(s: jax.Array) -> jax.Array:  # B s = Q_acc diag(L_acc) Q_accᵀ s
        return basis.unproject(old.basis, lam_acc[:, None] * basis.project(old.basis, s))

    rows = tuple(layout.take(a, i) for a in buffers.rows)
    corr = cfg.curvature.correction(rows, buffers.col_valid, apply_b, old.has_basis)
    corr = _symmetrized(corr, cfg.symmetrize)
    x = layout.take(g, i) if basis.fused_projection else None
    res = basis.update(layout.specs[i], old.basis, corr, key, x=x)
    lam, valid, lam_acc, acc_valid = keep_if(
        res.ok,
        (res.eigenvalues, res.valid, res.acc_eigenvalues, res.acc_valid),
        (old.eigenvalues, old.valid, old.acc_eigenvalues, old.acc_valid),
    )
    # Bases revert their own state when not ok (no select over the large arrays).
    new = EigenbasisBlockState(res.state, lam, valid, lam_acc, acc_valid, old.has_basis | res.ok)
    c = jnp.where(new.valid[:, None] & old.valid[None, :], res.rotation, 0)
    rotation = BasisRotation(c.astype(layout.specs[i].dtype), None, res.ok & old.has_basis)
    return _BlockStep(new, rotation, res.projection)


def _keep_block(
    cfg: _Config, layout: _Layout, i: int, old: EigenbasisBlockState, g: jax.Array
) -> _BlockStep:
    """Block ``i`` on a step without a basis update."""
    r = old.eigenvalues.shape[0]
    rotation = BasisRotation(
        jnp.zeros((r, r), layout.specs[i].dtype), None, jnp.zeros([], jnp.bool_)
    )
    fused = cfg.basis.fused_projection
    projection = cfg.basis.project(old.basis, layout.take(g, i)) if fused else None
    return _BlockStep(old, rotation, projection)


def _update_bases(
    cfg: _Config,
    layout: _Layout,
    blocks: tuple[EigenbasisBlockState, ...],
    buffers: Buffers,
    g: jax.Array,
    key: jax.Array,
    should_update: jax.Array,
) -> tuple[_BlockStep, ...]:
    keys = jax.random.split(key, len(blocks))

    # Basis maintenance at full precision whatever jax_default_matmul_precision
    # says (TF32/bf16 passes would erode the basis's orthonormality).
    @full_precision
    def update() -> tuple[_BlockStep, ...]:
        return tuple(
            _update_block(cfg, layout, i, b, buffers, g, keys[i]) for i, b in enumerate(blocks)
        )

    def keep() -> tuple[_BlockStep, ...]:
        return tuple(_keep_block(cfg, layout, i, b, g) for i, b in enumerate(blocks))

    if cfg.update_freq == 1 and cfg.init_steps == 0:
        return update()  # static: no cond (also keeps eager-mode updates cheap)
    return jax.lax.cond(should_update, update, keep)


def _inner_arguments(
    cfg: _Config,
    layout: _Layout,
    steps: tuple[_BlockStep, ...],
    g: jax.Array,
    probes: tuple[jax.Array, jax.Array] | None,
    should_update: jax.Array,
    like: Any,
) -> dict[str, Any]:
    """The driver's extra arguments of the inner transformation (see the docstring)."""
    blocks = [s.block for s in steps]

    def coordinates(vec: jax.Array) -> Any:
        return _coordinates(
            cfg,
            [
                jnp.where(b.valid, cfg.basis.project(b.basis, layout.take(vec, i)), 0)
                for i, b in enumerate(blocks)
            ],
            like,
        )

    if cfg.basis.fused_projection:  # Qᵀg came out of the basis update's pass over Q
        g_p = _coordinates(cfg, [jnp.where(s.block.valid, s.projection, 0) for s in steps], like)
    else:
        g_p = coordinates(g)
    kwargs = {
        "projected_grad": g_p,
        "basis_rotation": _coordinates(cfg, [s.rotation for s in steps], like),
        "eigenvalues": _coordinates(cfg, [b.eigenvalues for b in blocks], like),
        "basis_valid": _coordinates(cfg, [b.valid for b in blocks], like),
    }
    if probes is not None:
        kwargs["curvature_probes"] = CurvatureProbes(
            coordinates(probes[0]), coordinates(probes[1]), should_update
        )
    return kwargs


def _run_inner(
    cfg: _Config,
    layout: _Layout,
    blocks: tuple[EigenbasisBlockState, ...],
    inner_state: optax.OptState,
    kwargs: dict[str, Any],
) -> tuple[jax.Array, optax.OptState]:
    """Steps the inner transformation and maps its output back: the flat ``Q u_p``."""
    u_p, inner_state = cfg.inner.update(kwargs["projected_grad"], inner_state, None, **kwargs)
    u_leaves = jax.tree.leaves(u_p) if cfg.per_leaf else [u_p]
    parts = [
        cfg.basis.unproject(b.basis, jnp.where(b.valid, u.astype(spec.dtype), 0))
        for b, u, spec in zip(blocks, u_leaves, layout.specs, strict=True)
    ]
    return layout.join(parts), inner_state


def _update(
    cfg: _Config,
    updates: optax.Updates,
    state: EigenbasisState,
    params: optax.Params | None,
    extra_args: dict[str, Any],
) -> tuple[optax.Updates, EigenbasisState]:
    v.check_reserved_extra_args(extra_args, RESERVED_EXTRA_ARGS, "lowrank.eigenbasis_update")
    if cfg.curvature.needs_params:
        v.require_params(params, f"lowrank.curvatures.{cfg.curvature.name}")
    dtype = _compute_dtype(cfg, jnp.result_type(*_floating_leaves(updates, "gradients")))
    layout = _layout(cfg, updates, dtype)
    flat_g, unravel = flatten.ravel(updates, layout.rows)
    g = flat_g.astype(dtype)
    x, unravel_params = None, unravel
    if params is not None:
        x, unravel_params = flatten.ravel(params, layout.rows)
        x = x.astype(dtype)
    count = state.count
    should_update = (count % cfg.update_freq == 0) | (count < cfg.init_steps)
    key, k_curv, k_basis = jax.random.split(state.key, 3)
    ctx = CollectContext(
        grad=g,
        params=x,
        unravel=unravel_params,
        extra=extra_args,
        should_update=should_update,
        count=count,
        key=k_curv,
        project_out=functools.partial(_project_out, cfg, layout, state.blocks),
        normalize=functools.partial(_normalize, layout),
        always_update=cfg.update_freq == 1 and cfg.init_steps == 0,
        rows=layout.rows,
    )
    curvature_state, buffers, probes = cfg.curvature.collect(state.curvature_state, ctx)
    steps = _update_bases(cfg, layout, state.blocks, buffers, g, k_basis, should_update)
    blocks = tuple(s.block for s in steps)
    kwargs = dict(extra_args)
    kwargs.update(_inner_arguments(cfg, layout, steps, g, probes, should_update, updates))

    step = functools.partial(_run_inner, cfg, layout, blocks, state.inner_state, kwargs)
    if cfg.init_steps > 0:
        u, inner_state = jax.lax.cond(
            count < cfg.init_steps, lambda: (jnp.zeros_like(g), state.inner_state), step
        )
    else:
        u, inner_state = step()
    # A non-finite gradient gives a NaN update whatever the inner chain makes of it
    # (a cautious mask or a fresh basis would otherwise turn it into a silent 0).
    u = jnp.where(jnp.all(jnp.isfinite(g)), u, jnp.nan)
    new_state = EigenbasisState(
        optax.safe_increment(count), blocks, curvature_state, inner_state, key
    )
    return unravel(u.astype(flat_g.dtype)), new_state


def eigenbasis_update(
    inner: optax.GradientTransformation | Sequence[optax.GradientTransformation] | None,
    *,
    curvature: Curvature,
    basis: Basis,
    update_freq: int | None = None,
    init_steps: int | None = None,
    symmetrize: bool | str = True,
    per_leaf: bool = False,
    compute_dtype: Any | None = None,
    seed: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Runs ``inner`` in a low-rank eigenbasis of a curvature matrix (LRE).

    A curvature matrix (gradient covariance, Hessian estimates, BFGS/SR1, Fisher,
    ...) is kept as a truncated eigendecomposition :math:`Q L Q^\top`,
    :math:`Q \in \mathbb{R}^{n\times r}`, updated from low-rank corrections by a
    ``basis`` algorithm. The gradient is projected, the inner optimizer runs on the
    :math:`r` coordinates, and its output is mapped back (the part of :math:`g`
    outside :math:`\mathrm{span}(Q)` is discarded):

    .. math::

      \begin{align*}
        (Y, Z, \alpha) &= \mathrm{curvature}(\dots) \text{ on update steps},
          \quad (Q, L) \leftarrow \mathrm{basis}(Q, L; Y, Z, \alpha) \\
        C &= Q_{new}^\top Q_{old}, \qquad g_p = Q^\top g \\
        u &= Q\, \mathrm{inner}(g_p;\, \text{state rotated by } C)
      \end{align*}

    Update steps are those with ``count % update_freq == 0`` or
    ``count < init_steps``; during the first ``init_steps`` steps the basis is
    built but the update is 0 and ``inner`` is not stepped. The first basis does
    not rotate ``inner``'s state (there is no previous one); a failed basis update
    (non-finite, or no valid correction column) keeps the previous basis.

    ``inner`` receives ``params=None``, the user's extra arguments and
    ``projected_grad`` (:math:`g_p`), ``basis_rotation``
    (:class:`lowrank.BasisRotation` with ``left = C``), ``eigenvalues``
    (:math:`L_{reg}`), ``basis_valid`` (column mask) and, for Hessian-vector-product
    curvatures, ``curvature_probes`` (:class:`CurvatureProbes`). A list is chained
    in order.

    Flattening: by default the whole model is one vector
    (``jax.flatten_util.ravel_pytree``, one basis, as the reference);
    ``per_leaf=True`` keeps one basis per leaf (the inner coordinates are then a
    tree with the params' structure, one ``(r_leaf,)`` vector per leaf), which
    equals one global instance per leaf for curvatures that do not couple leaves
    (quasi-Newton scalars are computed per leaf; one Hessian-vector product of
    the whole model serves all leaves).

    Shapes are static: ``r`` columns with validity masks (see
    :mod:`lowrank.bases`). Decompositions run in ``compute_dtype`` (default: the
    parameters' dtype promoted to at least float32, so float16 and bfloat16
    parameters are computed in float32); bases and inner state are stored in it;
    updates are returned in the gradients' dtypes. Integer, boolean and complex
    parameters or gradients raise ``ValueError``.

    Non-finite gradients: a gradient with any NaN or infinite entry gives an
    all-NaN update (as :func:`optax.adam`), whatever the inner transformation
    does with it (a cautious mask, for example, would turn it into a silent 0);
    a basis update fed that gradient fails and keeps the previous basis. The
    inner state takes whatever the inner transformation computes from the
    non-finite coordinates (Adam's moments become NaN, as in :func:`optax.adam`).
    To skip such steps instead, wrap the optimizer in
    :func:`optax.apply_if_finite`, which also keeps the previous state.

    ``symmetrize`` (for curvatures with a second factor :math:`Z`, i.e.
    :func:`lowrank.curvatures.full_hutchinson_hessian`): ``True`` passes the exact
    symmetric part :math:`(YZ^\top + ZY^\top)/2` as
    :math:`Y' = [(Y+Z)/2, (Y-Z)/2]`, :math:`\alpha' = [\alpha, -\alpha]`;
    ``'average'`` passes :math:`(Y+Z)/2` (the reference's behaviour); ``False``
    passes :math:`Z` to the basis.

    Sharding: arrays with ``n`` rows (the flattened gradient, and those in
    ``curvature_state`` and the blocks' ``basis`` states) are sharded along ``n`` over the mesh
    axes that shard the parameters (in order of first appearance in their specs;
    the last axis is dropped while ``n`` is not divisible by the axes' sizes, and
    with none left they are replicated; with ``per_leaf`` each block follows its
    leaf); the ``r``-sized state, counters and keys are replicated and the
    ``r × r`` work runs replicated. When the parameters carry Explicit sharding
    types, ``init`` creates the arrays with those shardings (so
    :func:`lowrank.state_sharding` and :func:`lowrank.state_partition_specs`
    return them for any composition) and ``update`` keeps them: products
    contracting ``n`` give replicated results, and QR factorisations of
    ``n``-row matrices run on replicated copies. On Auto meshes pass
    :func:`lowrank.state_sharding` to ``jax.jit``. Under ``pmap``, ``pmean``
    gradients before this transformation so that the replicated bases agree.

    .. warning::
       Deviations from the reference (``inikishev/lre``): inputs arrive as extra
       arguments of ``update`` and every curvature works (the reference's
       ``step(loss=...)`` fails for Hessian-vector-product and per-sample
       curvatures; deviation 1); ``symmetrize=True`` is the true symmetric part
       (the reference's ``(Y+Z)/2``, estimating :math:`((H+I)/2)^2` rather than
       :math:`H`, is ``symmetrize='average'``; deviation 7); decompositions run in
       at least float32 (deviation 13). See each curvature, basis and inner
       transformation for theirs.

    Every argument is structural: under :func:`optax.inject_hyperparams` list the
    ones you pass among ``update_freq``, ``init_steps``, ``seed`` and
    ``compute_dtype`` in ``static_args`` (arguments left at their defaults, the
    curvature, the basis, ``inner``, booleans and strings need no listing).

    Args:
      inner: basis-aware transformation (or list, chained in order) run on the
        coordinates, e.g. ``[lowrank.scale_by_adam_in_basis(b2=0.99),
        lowrank.cautious_in_basis()]``; ``None`` or ``[]`` is the identity (the
        update is then :math:`QQ^\top g`).
      curvature: a :mod:`lowrank.curvatures` instance.
      basis: a :mod:`lowrank.bases` instance.
      update_freq: steps between basis updates (an integer ``>= 1``; ``None``
        means 1).
      init_steps: leading steps that only build the basis (an integer ``>= 0``;
        ``None`` means 0).
      symmetrize: ``True``, ``False`` or ``'average'`` (see above).
      per_leaf: one basis per leaf instead of one for the flattened model.
      compute_dtype: real floating dtype of decompositions and stored bases
        (promoted to at least float32); ``None``: the parameters' dtype.
      seed: seed of the PRNG key kept in the state (an integer ``>= 0``; ``None``
        means 0).

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs`.

    Raises:
      TypeError: ``inner`` (or an entry of the list) is not a gradient
        transformation.
      ValueError: invalid arguments; a basis requiring symmetric (or unsigned)
        corrections combined with a curvature that produces asymmetric (signed)
        ones; at ``update``, missing extra arguments a curvature needs, or
        ``params=None`` for a curvature that reads parameters; non-floating parameters
        or gradients.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import lowrank_optax as lowrank
      >>> tx = optax.chain(
      ...     lowrank.eigenbasis_update(
      ...         [lowrank.scale_by_adam_in_basis(b2=0.99), lowrank.cautious_in_basis()],
      ...         curvature=lowrank.curvatures.covariance(),
      ...         basis=lowrank.bases.ggt(history_size=4)),
      ...     optax.scale_by_learning_rate(0.1))
      >>> params = jnp.array([1.0, -2.0, 3.0])
      >>> loss = lambda p: jnp.sum(jnp.array([1.0, 10.0, 100.0]) * p**2)
      >>> state = tx.init(params)
      >>> for _ in range(5):
      ...   grads = jax.grad(loss)(params)
      ...   updates, state = tx.update(grads, state, params)
      ...   params = optax.apply_updates(params, updates)
      >>> print('Objective function: {:.2f}'.format(loss(params)))
      Objective function: 666.05

    References:
      Nikishev, `LRE: Low-rank eigenbasis <https://github.com/inikishev/lre>`_, 2025

      Agarwal et al, `Efficient Full-Matrix Adaptive Regularization
      <https://arxiv.org/abs/1806.02958>`_, 2019
    """
    cfg = _config(
        inner, curvature, basis, update_freq, init_steps, symmetrize, per_leaf, compute_dtype, seed
    )

    def init_fn(params: optax.Params) -> EigenbasisState:
        return _init(cfg, params)

    def update_fn(
        updates: optax.Updates,
        state: EigenbasisState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, EigenbasisState]:
        return _update(cfg, updates, state, params, extra_args)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def lre(
    learning_rate: optax.ScalarOrSchedule,
    curvature: Curvature | None = None,
    basis: Basis | None = None,
    inner: optax.GradientTransformation | Sequence[optax.GradientTransformation] | None = None,
    *,
    update_freq: int | None = None,
    init_steps: int | None = None,
    symmetrize: bool | str = True,
    per_leaf: bool = False,
    compute_dtype: Any | None = None,
    seed: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""LRE with the reference README's recommended configuration.

    ``optax.chain(eigenbasis_update(inner, curvature=..., basis=...),
    optax.scale_by_learning_rate(learning_rate))`` with defaults
    :func:`lowrank.curvatures.covariance`, :func:`lowrank.bases.ggt` (history 100)
    and the inner chain ``[scale_by_adam_in_basis(b2=0.99), cautious_in_basis(),
    clip_norm_by_ema_in_basis(normalize=True)]``. The first update of the default is
    :math:`-\eta \cdot 0.109\, g/\|g\|` (Adam gives :math:`g/\|g\|` in the
    one-dimensional first basis; the EMA norm clip starts at :math:`0.1u` and
    :math:`\mathrm{lerp}(0.1u, u, 0.01) = 0.109u`).

    .. math::

      u = -\eta\, Q\, \mathrm{clip}_{ema}(\mathrm{cautious}(\mathrm{adam}(Q^\top g)))

    ``learning_rate`` is injectable under :func:`optax.inject_hyperparams`; every
    other argument is structural: list the ones you pass among ``update_freq``,
    ``init_steps``, ``seed`` and ``compute_dtype`` in ``static_args`` (defaults,
    the curvature, the basis, ``inner``, booleans and strings need no listing).

    A gradient with a NaN or infinite entry gives an all-NaN update (as
    :func:`optax.adam`) for every inner transformation; wrap the optimizer in
    :func:`optax.apply_if_finite` to skip such steps.

    Args:
      learning_rate: learning rate :math:`\eta \ge 0` or schedule.
      curvature: a :mod:`lowrank.curvatures` instance (default covariance).
      basis: a :mod:`lowrank.bases` instance (default GGT).
      inner: inner transformation(s) (default as above).
      update_freq: steps between basis updates (see :func:`eigenbasis_update`;
        ``None`` means 1).
      init_steps: leading steps that only build the basis (``None`` means 0).
      symmetrize: ``True``, ``False`` or ``'average'``.
      per_leaf: one basis per leaf instead of one for the flattened model.
      compute_dtype: dtype of decompositions and stored bases.
      seed: seed of the PRNG key kept in the state (``None`` means 0).

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs`.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.lre(0.1, basis=lowrank.bases.ggt(history_size=10))
      >>> params = jnp.array([1.0, -2.0, 3.0])
      >>> loss = lambda p: jnp.sum(jnp.array([1.0, 10.0, 100.0]) * p**2)
      >>> state = tx.init(params)
      >>> for _ in range(5):
      ...   grads = jax.grad(loss)(params)
      ...   updates, state = tx.update(grads, state, params)
      ...   params = optax.apply_updates(params, updates)
      >>> print('Objective function: {:.2f}'.format(loss(params)))
      Objective function: 903.32

    References:
      Nikishev, `LRE: Low-rank eigenbasis <https://github.com/inikishev/lre>`_, 2025
    """
    v.check_nonnegative("learning_rate", learning_rate)
    if curvature is None:
        curvature = curvatures_lib.covariance()
    if basis is None:
        basis = bases_lib.ggt()
    if inner is None:
        inner = [
            scale_by_adam_in_basis(b2=0.99),
            cautious_in_basis(),
            clip_norm_by_ema_in_basis(normalize=True),
        ]
    return optax.chain(
        eigenbasis_update(
            inner,
            curvature=curvature,
            basis=basis,
            update_freq=update_freq,
            init_steps=init_steps,
            symmetrize=symmetrize,
            per_leaf=per_leaf,
            compute_dtype=compute_dtype,
            seed=seed,
        ),
        optax.scale_by_learning_rate(learning_rate),
    )
