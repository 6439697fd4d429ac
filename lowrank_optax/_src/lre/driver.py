"""``eigenbasis_update``: the LRE driver, and the ``lre`` alias."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec
from optax._src import base as optax_base
from optax.tree_utils import _state_utils

from lowrank_optax._src import validation as v
from lowrank_optax._src.adam_in_basis import scale_by_adam_in_basis
from lowrank_optax._src.basis_rotation import BasisRotation
from lowrank_optax._src.linalg import full_precision
from lowrank_optax._src.lre import bases as bases_lib
from lowrank_optax._src.lre import curvatures as curvatures_lib
from lowrank_optax._src.lre import flatten
from lowrank_optax._src.lre.bases import Basis, BasisSpec
from lowrank_optax._src.lre.curvatures import CollectContext, Correction, Curvature
from lowrank_optax._src.lre.inner import (
    CurvatureProbes,
    cautious_in_basis,
    clip_norm_by_ema_in_basis,
)
from lowrank_optax._src.lre.linalg import tiny

RESERVED_EXTRA_ARGS = (
    "projected_grad",
    "basis_rotation",
    "eigenvalues",
    "basis_valid",
    "curvature_probes",
)
SYMMETRIZE = (True, False, "average")


class EigenbasisState(NamedTuple):
    """State of :func:`eigenbasis_update`.

    With ``per_leaf=False`` (default) every per-basis field holds one array; with
    ``per_leaf=True`` a tuple with one entry per leaf (in ``jax.tree.leaves``
    order). The basis vectors ``Q`` live in ``basis_state`` (explicit ``(n, r)``
    columns, or the GGT history and coefficients with ``Q = history @ w``).

    Attributes:
      count: number of completed steps (int32 scalar).
      eigenvalues: ``(r,)`` regularised eigenvalues ``L_reg`` (0 where invalid).
      valid: ``(r,)`` mask of the regularised basis used for the step.
      acc_eigenvalues: ``(r,)`` accumulator eigenvalues ``L_acc`` (for BFGS/SR1).
      acc_valid: ``(r,)`` mask of the accumulator basis.
      has_basis: boolean scalar; a basis update has succeeded.
      curvature_state: state of the curvature (global).
      basis_state: state of the basis.
      inner_state: state of the inner transformation (at the ``r``-dimensional
        coordinate shapes).
      key: PRNG key (``uint32[2]``), split every step.
    """

    count: jax.Array
    eigenvalues: Any
    valid: Any
    acc_eigenvalues: Any
    acc_valid: Any
    has_basis: Any
    curvature_state: Any
    basis_state: Any
    inner_state: optax.OptState
    key: jax.Array


def _compute_dtype(dtype: Any, compute_dtype: Any) -> Any:
    if compute_dtype is None:
        return jnp.promote_types(dtype, jnp.float32)
    return jnp.promote_types(jnp.dtype(compute_dtype), jnp.float32)


def _blocks(tree: Any, per_leaf: bool) -> list[tuple[int, int]]:
    sizes = [int(x.size) for x in jax.tree.leaves(tree)]
    if not per_leaf:
        return [(0, sum(sizes))]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return list(zip(starts, sizes, strict=True))


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


def _select(ok: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda n_leaf, o_leaf: jnp.where(ok, n_leaf, o_leaf), new, old)


def eigenbasis_update(
    inner: optax.GradientTransformation | Sequence[optax.GradientTransformation] | None,
    *,
    curvature: Curvature,
    basis: Basis,
    update_freq: int = 1,
    init_steps: int = 0,
    symmetrize: bool | str = True,
    per_leaf: bool = False,
    compute_dtype: Any | None = None,
    seed: int = 0,
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
    parameters' dtype promoted to at least float32); bases and inner state are
    stored in it; updates are returned in the gradients' dtypes.

    ``symmetrize`` (for curvatures with a second factor :math:`Z`, i.e.
    :func:`lowrank.curvatures.full_hutchinson_hessian`): ``True`` passes the exact
    symmetric part :math:`(YZ^\top + ZY^\top)/2` as
    :math:`Y' = [(Y+Z)/2, (Y-Z)/2]`, :math:`\alpha' = [\alpha, -\alpha]`;
    ``'average'`` passes :math:`(Y+Z)/2` (the reference's behaviour); ``False``
    passes :math:`Z` to the basis.

    Sharding: arrays with ``n`` rows (the flattened gradient, and those in
    ``curvature_state`` and ``basis_state``) are sharded along ``n`` over the mesh
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

    Args:
      inner: basis-aware transformation (or list, chained in order) run on the
        coordinates, e.g. ``[lowrank.scale_by_adam_in_basis(b2=0.99),
        lowrank.cautious_in_basis()]``; ``None`` is the identity (the update is
        then :math:`QQ^\top g`).
      curvature: a :mod:`lowrank.curvatures` instance.
      basis: a :mod:`lowrank.bases` instance.
      update_freq: steps between basis updates (``>= 1``).
      init_steps: leading steps that only build the basis (``>= 0``).
      symmetrize: ``True``, ``False`` or ``'average'`` (see above).
      per_leaf: one basis per leaf instead of one for the flattened model.
      compute_dtype: dtype of decompositions and stored bases (at least float32).
      seed: seed of the PRNG key kept in the state.

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs`.

    Raises:
      ValueError: invalid arguments; a basis requiring symmetric (or unsigned)
        corrections combined with a curvature that produces asymmetric (signed)
        ones; at ``update``, missing extra arguments a curvature needs, or
        ``params=None`` for a curvature that reads parameters.

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
    if not isinstance(curvature, Curvature):
        raise ValueError(
            "`curvature` must be a lowrank.curvatures instance (e.g. "
            f"lowrank.curvatures.covariance()), got {curvature!r}."
        )
    if not isinstance(basis, Basis):
        raise ValueError(
            f"`basis` must be a lowrank.bases instance (e.g. lowrank.bases.ggt()), got {basis!r}."
        )
    update_freq = v.check_int("update_freq", update_freq, minimum=1)
    init_steps = v.check_int("init_steps", init_steps, minimum=0)
    if not any(symmetrize is s for s in SYMMETRIZE) and symmetrize != "average":
        raise ValueError(f"`symmetrize` must be one of True, False, 'average'; got {symmetrize!r}.")
    per_leaf = bool(per_leaf)
    seed = v.check_int("seed", seed, minimum=0)
    has_z = curvature.has_z and symmetrize is False
    signed = curvature.signed or (curvature.has_z and symmetrize is True)
    k = curvature.columns(update_freq) * (2 if curvature.has_z and symmetrize is True else 1)
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
    if inner is None:
        inner_tx: optax.GradientTransformationExtraArgs = optax.with_extra_args_support(
            optax.identity()
        )
    elif isinstance(inner, (list, tuple)):
        inner_tx = optax.chain(*inner)
    else:
        inner_tx = optax.with_extra_args_support(inner)

    def block_rows(tree: Any) -> tuple[Any, list[Any]]:
        # Layout of the flat vector and of each basis block on an Explicit mesh
        # (None elsewhere): the whole model, or one block per leaf following it.
        leaves = jax.tree.leaves(tree)
        rows = flatten.rows_sharding(leaves)
        if rows is None or not per_leaf:
            return rows, [rows] * len(_blocks(tree, per_leaf))
        return rows, [flatten.rows_sharding([leaf]) for leaf in leaves]

    def specs_of(tree: Any, dtype: Any, rows: list[Any]) -> list[BasisSpec]:
        return [
            BasisSpec(size, k, dtype, has_z, signed, r)
            for (_, size), r in zip(_blocks(tree, per_leaf), rows, strict=True)
        ]

    def pack(items: list[Any], like: Any) -> Any:
        if not per_leaf:
            return items[0]
        return jax.tree.unflatten(jax.tree.structure(like), items)

    def as_list(x: Any) -> list[Any]:
        return list(x) if per_leaf else [x]

    def store(items: list[Any]) -> Any:
        return tuple(items) if per_leaf else items[0]

    def init_fn(params: optax.Params) -> EigenbasisState:
        if isinstance(params, _state_utils._ParamsPlaceholder):
            # optax.tree_map_params: nothing here has a parameter's shape.
            return EigenbasisState(*([0] * len(EigenbasisState._fields)))  # type: ignore[arg-type]
        # Size and dtype of the flattened vector without concatenating (init must
        # also trace on abstract, possibly Explicit-sharded, parameters).
        leaves = jax.tree.leaves(params)
        n = sum(int(np.prod(jnp.shape(x))) for x in leaves)
        dtype = _compute_dtype(jnp.result_type(*leaves), compute_dtype)
        rows, rows_per_block = block_rows(params)
        specs = specs_of(params, dtype, rows_per_block)
        key = jax.random.PRNGKey(seed)
        key, *bkeys = jax.random.split(key, len(specs) + 1)
        ranks = [basis.rank(s) for s in specs]

        # Fresh arrays for every field: states must not share buffers (donation).
        def zeros(shape: Any, dt: Any) -> Any:
            return store([jnp.zeros(shape(r), dt) for r in ranks])

        proxies = pack([jnp.zeros((r,), dtype) for r in ranks], params)
        return EigenbasisState(
            count=jnp.zeros([], jnp.int32),
            eigenvalues=zeros(lambda r: (r,), dtype),
            valid=zeros(lambda r: (r,), jnp.bool_),
            acc_eigenvalues=zeros(lambda r: (r,), dtype),
            acc_valid=zeros(lambda r: (r,), jnp.bool_),
            has_basis=zeros(lambda r: (), jnp.bool_),
            curvature_state=jax.tree.map(
                lambda a: flatten.put_rows(a, rows) if jnp.ndim(a) and a.shape[0] == n else a,
                curvature.init(n, dtype, update_freq),
            ),
            basis_state=store([basis.init(s, bk) for s, bk in zip(specs, bkeys, strict=True)]),
            inner_state=inner_tx.init(proxies),
            key=key,
        )

    def update_fn(
        updates: optax.Updates,
        state: EigenbasisState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, EigenbasisState]:
        for name in RESERVED_EXTRA_ARGS:
            if name in extra_args:
                raise TypeError(
                    f"`{name}` is reserved by lowrank.eigenbasis_update and cannot be passed "
                    "as an extra argument."
                )
        if curvature.needs_params and params is None:
            raise ValueError(
                f"lowrank.curvatures.{curvature.name} reads the parameters: "
                + optax_base.NO_PARAMS_MSG
            )
        rows_all, rows_per_block = block_rows(updates)
        flat_g, unravel = flatten.ravel(updates, rows_all)
        dtype = _compute_dtype(flat_g.dtype, compute_dtype)
        g = flat_g.astype(dtype)
        x = None if params is None else flatten.ravel(params, rows_all)[0].astype(dtype)
        _, unravel_params = flatten.ravel(updates if params is None else params, rows_all)
        blocks = _blocks(updates, per_leaf)
        specs = specs_of(updates, dtype, rows_per_block)
        count = state.count
        always_update = update_freq == 1 and init_steps == 0
        should_update = (count % update_freq == 0) | (count < init_steps)
        key, k_curv, k_basis = jax.random.split(state.key, 3)

        bstates = as_list(state.basis_state)
        lam_old = as_list(state.eigenvalues)
        valid_old = as_list(state.valid)
        acc_old = as_list(state.acc_eigenvalues)
        acc_valid_old = as_list(state.acc_valid)
        has_old = as_list(state.has_basis)

        def rows(a: jax.Array, i: int) -> jax.Array:
            start, size = blocks[i]
            return flatten.block(a, start, size, rows_per_block[i])

        def join(parts: list[jax.Array]) -> jax.Array:
            return flatten.join(parts, rows_all)

        def project_out(zv: jax.Array) -> jax.Array:
            parts = []
            for i, bs in enumerate(bstates):
                zb = rows(zv, i)
                coords = jnp.where(acc_valid_old[i], basis.project(bs, zb), 0)
                parts.append(jnp.where(has_old[i], zb - basis.unproject(bs, coords), zb))
            return join(parts)

        def normalize(zv: jax.Array) -> jax.Array:
            parts = []
            for i in range(len(blocks)):
                zb = rows(zv, i)
                parts.append(zb / jnp.maximum(jnp.linalg.norm(zb), tiny(zb.dtype)))
            return join(parts)

        ctx = CollectContext(
            grad=g,
            params=x,
            unravel=unravel_params,
            extra=extra_args,
            should_update=should_update,
            count=count,
            key=k_curv,
            project_out=project_out,
            normalize=normalize,
            always_update=always_update,
            rows=rows_all,
        )
        cstate, buffers, probes = curvature.collect(state.curvature_state, ctx)
        bkeys = jax.random.split(k_basis, len(blocks))

        def do_update() -> tuple[Any, ...]:
            out: list[list[Any]] = [[] for _ in range(9)]
            for i, (spec, bs) in enumerate(zip(specs, bstates, strict=True)):
                block_rows = tuple(rows(a, i) for a in buffers.rows)
                lam_acc = jnp.where(acc_valid_old[i], acc_old[i], 0)

                def apply_b(s: jax.Array, bs: Any = bs, lam_acc: jax.Array = lam_acc) -> jax.Array:
                    return basis.unproject(bs, lam_acc[:, None] * basis.project(bs, s))

                corr = curvature.correction(block_rows, buffers.col_valid, apply_b, has_old[i])
                corr = _symmetrized(corr, symmetrize)
                x_fused = rows(g, i) if basis.fused_projection else None
                res = basis.update(spec, bs, corr, bkeys[i], x=x_fused)
                ok = res.ok

                def pick(new: Any, old: Any, ok: jax.Array = ok) -> Any:
                    return _select(ok, new, old)

                new_valid = pick(res.valid, valid_old[i])
                rotation = jnp.where(
                    new_valid[:, None] & valid_old[i][None, :], res.rotation, 0
                ).astype(dtype)
                out[0].append(res.state)  # bases revert their own state when not ok
                out[1].append(pick(res.eigenvalues, lam_old[i]))
                out[2].append(new_valid)
                out[3].append(pick(res.acc_eigenvalues, acc_old[i]))
                out[4].append(pick(res.acc_valid, acc_valid_old[i]))
                out[5].append(has_old[i] | ok)
                out[6].append(rotation)
                out[7].append(ok & has_old[i])
                out[8].append(res.projection)
            return tuple(out)

        def keep() -> tuple[Any, ...]:
            rot = [jnp.zeros((lv.shape[0],) * 2, dtype) for lv in lam_old]
            no = [jnp.zeros([], jnp.bool_) for _ in lam_old]
            proj = [
                basis.project(bs, rows(g, i)) if basis.fused_projection else None
                for i, bs in enumerate(bstates)
            ]
            return (bstates, lam_old, valid_old, acc_old, acc_valid_old, has_old, rot, no, proj)

        # Basis maintenance at full precision whatever jax_default_matmul_precision
        # says (TF32/bf16 passes would erode the basis's orthonormality).
        do_update = full_precision(do_update)
        if always_update:  # static: no cond (also keeps eager-mode updates cheap)
            updated = do_update()
        else:
            updated = jax.lax.cond(should_update, do_update, keep)
        (bstates_new, lam, valid, acc, acc_valid, has_basis, rots, applies, fused) = updated
        bstates_new = list(bstates_new)

        def coords_of(vec: jax.Array) -> Any:
            return pack(
                [
                    jnp.where(valid[i], basis.project(bstates_new[i], rows(vec, i)), 0)
                    for i in range(len(blocks))
                ],
                updates,
            )

        if basis.fused_projection:  # Qᵀg came out of the basis update's pass over Q
            g_p = pack([jnp.where(valid[i], fused[i], 0) for i in range(len(blocks))], updates)
        else:
            g_p = coords_of(g)
        inner_kwargs = dict(extra_args)
        inner_kwargs["projected_grad"] = g_p
        inner_kwargs["basis_rotation"] = pack(
            [BasisRotation(c, None, a) for c, a in zip(rots, applies, strict=True)], updates
        )
        inner_kwargs["eigenvalues"] = pack(list(lam), updates)
        inner_kwargs["basis_valid"] = pack(list(valid), updates)
        if probes is not None:
            inner_kwargs["curvature_probes"] = CurvatureProbes(
                coords_of(probes[0]), coords_of(probes[1]), should_update
            )

        def step() -> tuple[jax.Array, Any]:
            u_p, inner_state = inner_tx.update(g_p, state.inner_state, None, **inner_kwargs)
            u_leaves = jax.tree.leaves(u_p) if per_leaf else [u_p]
            parts = [
                basis.unproject(bstates_new[i], jnp.where(valid[i], u.astype(dtype), 0))
                for i, u in enumerate(u_leaves)
            ]
            return join(parts), inner_state

        if init_steps > 0:
            u, inner_state = jax.lax.cond(
                count < init_steps, lambda: (jnp.zeros_like(g), state.inner_state), step
            )
        else:
            u, inner_state = step()
        new_updates = unravel(u.astype(flat_g.dtype))
        new_state = EigenbasisState(
            count=optax.safe_increment(count),
            eigenvalues=store(list(lam)),
            valid=store(list(valid)),
            acc_eigenvalues=store(list(acc)),
            acc_valid=store(list(acc_valid)),
            has_basis=store(list(has_basis)),
            curvature_state=cstate,
            basis_state=store(bstates_new),
            inner_state=inner_state,
            key=key,
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def eigenbasis_partition_specs(state: EigenbasisState, n: int, axis: Any) -> Any:
    """Partition specs for an :class:`EigenbasisState`: ``n``-row arrays sharded on ``axis``.

    Arrays in ``curvature_state`` and ``basis_state`` whose first dimension is the
    flattened size ``n`` get ``PartitionSpec(axis)`` (sharded along ``n``);
    everything else (``r``-sized vectors, ``r × r`` matrices, counters, keys) is
    replicated. Use with ``per_leaf=False``.

    A shape-based helper for Auto meshes when you choose the axis yourself;
    :func:`lowrank.state_sharding` / :func:`lowrank.state_partition_specs` apply
    the library's rule (see :func:`eigenbasis_update`) to whole optimizer states,
    per-leaf ones included, and give the same specs for a flattened state whose
    ``n`` the axes divide. Shape-based means that an ``r``-sized array is also
    sharded when ``r`` happens to equal ``n`` (tiny problems).

    Args:
      state: the state (or its ``jax.eval_shape``).
      n: the flattened parameter count.
      axis: mesh axis name (or tuple of names) to shard ``n`` over.

    Returns:
      A tree of :class:`jax.sharding.PartitionSpec` with the structure of ``state``.
    """

    def spec(x: Any) -> PartitionSpec:
        shape = getattr(x, "shape", ())
        if len(shape) >= 1 and shape[0] == n:
            return PartitionSpec(axis)
        return PartitionSpec()

    replicated = jax.tree.map(lambda _: PartitionSpec(), state)
    return replicated._replace(
        curvature_state=jax.tree.map(spec, state.curvature_state),
        basis_state=jax.tree.map(spec, state.basis_state),
    )


def lre(
    learning_rate: optax.ScalarOrSchedule,
    curvature: Curvature | None = None,
    basis: Basis | None = None,
    inner: optax.GradientTransformation | Sequence[optax.GradientTransformation] | None = None,
    *,
    update_freq: int = 1,
    init_steps: int = 0,
    symmetrize: bool | str = True,
    per_leaf: bool = False,
    compute_dtype: Any | None = None,
    seed: int = 0,
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

    Static arguments for :func:`optax.inject_hyperparams`: ``curvature``, ``basis``,
    ``inner`` and every keyword of :func:`eigenbasis_update`; ``learning_rate`` is
    injectable.

    Args:
      learning_rate: learning rate :math:`\eta` or schedule.
      curvature: a :mod:`lowrank.curvatures` instance (default covariance).
      basis: a :mod:`lowrank.bases` instance (default GGT).
      inner: inner transformation(s) (default as above).
      update_freq: steps between basis updates (see :func:`eigenbasis_update`).
      init_steps: leading steps that only build the basis.
      symmetrize: ``True``, ``False`` or ``'average'``.
      per_leaf: one basis per leaf instead of one for the flattened model.
      compute_dtype: dtype of decompositions and stored bases.
      seed: seed of the PRNG key kept in the state.

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
