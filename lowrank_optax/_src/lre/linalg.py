"""Masked, static-shape linear algebra behind the LRE bases.

Every truncated eigendecomposition in LRE has a fixed number of columns ``r``
and a boolean validity mask: a removed column is zeroed, its eigenvalue set to
0 and its mask to False. Validity is never inferred from an eigenvalue being 0.

The central routine is the update of a truncated eigendecomposition
``Q diag(L) Qᵀ`` by a low-rank correction: the correction's columns are split
into their part in ``span(Q)`` and an orthonormal completion ``V`` (two-pass
Gram–Schmidt followed by QR), and the ``(r + k) × (r + k)`` projected matrix is
diagonalised. Invalid coordinates (masked columns of ``Q`` and dependent columns
of ``V``) are given a sentinel diagonal entry below the whole spectrum, so
``eigh`` puts them first and their eigenvectors live on invalid coordinates
only; they are recognised by position, not by value.

On an Explicit mesh (sharding *types*), arrays with ``n`` rows are sharded along
``n`` and everything ``r``-sized is replicated: :func:`contract` gives products
contracting ``n`` a replicated result, :func:`match` lays a freshly drawn
``(n, ·)`` array out like the state it combines with, and QR factorisations of
``(n, m)`` matrices run where their rows lie (Householder on each block and a
QR of the stacked ``m × m`` factors: :func:`~lowrank_optax._src.linalg.householder_qr`),
so no ``n``-row matrix is gathered. Off Explicit meshes these helpers are the
plain operations.

Basis computations run their products at ``Precision.HIGHEST``
(:func:`~lowrank_optax._src.linalg.full_precision`): on GPU/TPU the default
float32 matmul keeps ~10 mantissa bits and orthonormality would drift at 1e-3.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lowrank_optax._src import sharding
from lowrank_optax._src.linalg import full_precision, householder_qr, positive_qr

# A column whose component outside span(Q) is smaller than this (relative to the
# column's norm) is considered to lie in span(Q).
IN_SPAN_RTOL = 64.0


def tiny(dtype: jnp.dtype) -> jax.Array:
    """``2 · tiny`` of a float dtype (the reference's guard against division by 0)."""
    return jnp.asarray(2 * jnp.finfo(dtype).tiny, dtype)


def contract(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` contracting the (possibly sharded) ``n`` axis; the small result is replicated.

    Off Explicit meshes this is ``a @ b``. On one, a contraction over a sharded
    axis needs an explicit output sharding: replicated (partial products, then
    an all-reduce).
    """
    like = a if sharding.explicit_spec(a) is not None else b
    if sharding.explicit_spec(like) is None:
        return a @ b
    out_ndim = max(jnp.ndim(a) + jnp.ndim(b) - 2, 0)
    return sharding.matmul(a, b, (None,) * out_ndim, like)


def match(x: jax.Array, ref: jax.Array) -> jax.Array:
    """``x`` laid out as ``ref`` when ``ref`` carries an Explicit sharding type (else ``x``)."""
    spec = sharding.explicit_spec(ref)
    if spec is None or sharding.explicit_spec(x) == spec:
        return x
    return sharding.reshard(x, spec, ref)


def keep_if(ok: jax.Array, new: Any, old: Any) -> Any:
    """``new`` where ``ok`` else ``old``, leaf by leaf (trees of the same structure)."""
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)


def sym(a: jax.Array) -> jax.Array:
    """Symmetric part ``(A + Aᵀ)/2``."""
    return (a + jnp.swapaxes(a, -1, -2)) / 2


def masked_max(x: jax.Array, valid: jax.Array) -> jax.Array:
    """Largest valid entry of ``x`` (0 if none is valid)."""
    m = jnp.max(jnp.where(valid, x, -jnp.inf))
    return jnp.where(jnp.any(valid), m, jnp.zeros_like(m))


def top_mask(x: jax.Array, valid: jax.Array, k: int) -> jax.Array:
    """Mask of the ``k`` largest valid entries of ``x`` (ties by position)."""
    order = jnp.argsort(jnp.where(valid, -x, jnp.inf), stable=True)
    ranks = jnp.zeros(x.shape, jnp.int32).at[order].set(jnp.arange(x.shape[0], dtype=jnp.int32))
    return valid & (ranks < k)


def top_indices(x: jax.Array, valid: jax.Array, k: int) -> jax.Array:
    """Indices of the ``k`` largest valid entries (invalid ones after them)."""
    return jnp.argsort(jnp.where(valid, -x, jnp.inf), stable=True)[:k]


def regularize(
    eigenvalues: jax.Array,
    valid: jax.Array,
    *,
    truncate: int | None = None,
    tol: jax.typing.ArrayLike | None = None,
    damping: jax.typing.ArrayLike = 0.0,
    rdamping: jax.typing.ArrayLike = 0.0,
) -> tuple[jax.Array, jax.Array]:
    r"""Masked ``regularize_eigh``: drop, truncate and shift eigenvalues.

    With :math:`\lambda_{max}` the largest finite valid eigenvalue (before any
    dropping): drop non-finite values; keep :math:`\lambda > tol\cdot\lambda_{max}`
    (strict, signed); keep the largest ``truncate``; add
    :math:`d + \rho\,\lambda_{max}` to the kept ones. Dropped entries get value 0
    and mask False.

    Args:
      eigenvalues: ``(r,)`` eigenvalues (any order).
      valid: ``(r,)`` validity mask.
      truncate: number of largest eigenvalues to keep, or ``None``.
      tol: relative tolerance, or ``None``.
      damping: constant :math:`d` added to kept eigenvalues.
      rdamping: factor :math:`\rho` of :math:`\lambda_{max}` added to kept eigenvalues.

    Returns:
      ``(eigenvalues, valid)``.
    """
    valid = valid & jnp.isfinite(eigenvalues)
    lam = jnp.where(valid, eigenvalues, 0)
    lam_max = masked_max(lam, valid)
    if tol is not None:
        valid = valid & (lam > tol * lam_max)
    if truncate is not None and truncate < lam.shape[0]:
        valid = top_mask(lam, valid, truncate)
    shift = damping + rdamping * lam_max
    return jnp.where(valid, lam + shift, 0), valid


@full_precision
def orthonormal_completion(
    q: jax.Array, cols: jax.Array, cols_valid: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Orthonormal completion of ``span(Q)`` by ``cols`` and the columns' coordinates.

    Args:
      q: ``(n, r)`` orthonormal columns (masked columns are zero).
      cols: ``(n, m)`` new columns.
      cols_valid: ``(m,)`` mask; invalid columns are treated as zero.

    Returns:
      ``(V, v_valid, coords)``: ``V`` is ``(n, m)`` with orthonormal columns
      orthogonal to ``Q`` (dependent ones zero, ``v_valid`` False), and
      ``coords`` ``(r + m, m)`` the coordinates of ``cols`` in ``[Q, V]``.
    """
    n, m = cols.shape
    dtype = cols.dtype
    cols = jnp.where(cols_valid[None, :], cols, 0)
    p = contract(cols.T, q).T  # = Qᵀcols; this operand order streams the tall Q faster on CPU
    resid = cols - q @ p
    p2 = contract(resid.T, q).T  # second Gram-Schmidt pass
    resid = resid - q @ p2
    p = p + p2
    col_norms = jnp.linalg.norm(cols, axis=0)
    eps = jnp.finfo(dtype).eps
    if m == 1:
        beta = jnp.linalg.norm(resid[:, 0])
        ok = (beta > IN_SPAN_RTOL * eps * col_norms[0]) & (beta > tiny(dtype))
        v = jnp.where(ok, resid / jnp.where(ok, beta, 1), 0)
        coef = jnp.where(ok, beta, 0).reshape(1, 1)
        return v, ok.reshape(1), jnp.concatenate([p, coef], axis=0)
    v, rr = householder_qr(resid)  # diag(rr) >= 0; sharded rows stay where they are
    if v.shape[1] < m:  # m > n: pad to m columns
        v = jnp.pad(v, ((0, 0), (0, m - v.shape[1])))
        rr = jnp.pad(rr, ((0, m - rr.shape[0]), (0, 0)))
    d = jnp.abs(jnp.diagonal(rr))
    scale = jnp.max(col_norms)
    ok = (d > IN_SPAN_RTOL * eps * scale) & (d > tiny(dtype))
    v = jnp.where(ok[None, :], v, 0)
    coef = jnp.where(ok[:, None], rr, 0)
    return v, ok, jnp.concatenate([p, coef], axis=0)


def masked_eigh(b: jax.Array, coord_valid: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``eigh`` of the valid block of a symmetric matrix, at static shape.

    Args:
      b: ``(d, d)`` matrix (symmetrised; invalid rows/columns ignored).
      coord_valid: ``(d,)`` mask of valid coordinates.

    Returns:
      ``(eigenvalues, S, eig_valid)``: ascending eigenvalues (0 where invalid),
      eigenvectors as columns, and the mask of eigenpairs belonging to the valid
      block (those of invalid coordinates come first and are supported on them).
    """
    outer = coord_valid[:, None] & coord_valid[None, :]
    b = jnp.where(outer, sym(b), 0)
    sentinel = 2 * jnp.sqrt(jnp.sum(jnp.square(b))) + 1
    b = b - jnp.diag(jnp.where(coord_valid, 0, sentinel).astype(b.dtype))
    lam, s = jnp.linalg.eigh(b)
    n_invalid = jnp.sum(~coord_valid)
    eig_valid = jnp.arange(b.shape[0]) >= n_invalid
    return jnp.where(eig_valid, lam, 0), s, eig_valid


@full_precision
def eigh_update(
    q: jax.Array,
    eigenvalues: jax.Array,
    valid: jax.Array,
    y: jax.Array,
    alpha: jax.Array,
    col_valid: jax.Array,
    *,
    z: jax.Array | None = None,
    w1: jax.typing.ArrayLike = 1.0,
    w2: jax.typing.ArrayLike = 1.0,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    r"""All eigenpairs of ``w1 Q diag(L) Qᵀ + w2 Y diag(α) Yᵀ`` on ``span([Q, Y])``.

    With ``z`` the correction is symmetrised: :math:`\tfrac{w_2}{2}(Y D Z^\top +
    Z D Y^\top)`, :math:`D = \mathrm{diag}(\alpha)`, on ``span([Q, Y, Z])``.

    Args:
      q: ``(n, r)`` orthonormal columns (masked ones zero).
      eigenvalues: ``(r,)`` eigenvalues ``L``.
      valid: ``(r,)`` mask of ``Q``'s columns.
      y: ``(n, k)`` correction columns.
      alpha: ``(k,)`` signs/weights of the columns.
      col_valid: ``(k,)`` mask of the columns.
      z: optional ``(n, k)`` second factor.
      w1: weight of the old matrix.
      w2: weight of the correction.

    Returns:
      ``(eigenvalues, eig_valid, S, V)``: the ``r + m`` eigenvalues (``m = k`` or
      ``2k``) with their mask, the eigenvectors ``S`` in the coordinates of
      ``[Q, V]`` and the completion ``V``. New eigenvectors are ``[Q, V] S``.
    """
    k = y.shape[1]
    cols = y if z is None else jnp.concatenate([y, z], axis=1)
    cv = col_valid if z is None else jnp.concatenate([col_valid, col_valid])
    v, v_valid, coords = orthonormal_completion(q, cols, cv)
    a = (w2 * jnp.where(col_valid, alpha, 0)).astype(y.dtype)
    if z is None:
        bc = (coords * a[None, :]) @ coords.T
    else:
        cy, cz = coords[:, :k], coords[:, k:]
        bc = sym((cy * a[None, :]) @ cz.T)
    base = jnp.concatenate(
        [jnp.where(valid, w1 * eigenvalues, 0), jnp.zeros(cols.shape[1], y.dtype)]
    )
    b = jnp.diag(base.astype(y.dtype)) + bc
    coord_valid = jnp.concatenate([valid, v_valid])
    lam, s, eig_valid = masked_eigh(b, coord_valid)
    return lam, eig_valid, s, v


@full_precision
def select_columns(
    q: jax.Array,
    v: jax.Array,
    s: jax.Array,
    eigenvalues: jax.Array,
    valid: jax.Array,
    r_out: int,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Keeps the ``r_out`` largest valid eigenpairs of an :func:`eigh_update` result.

    Returns:
      ``(Q_new, L_new, valid_new, S_sel)`` with ``Q_new = [Q, V] S_sel`` of shape
      ``(n, r_out)`` (invalid columns zero) and ``S_sel`` the selected
      eigenvectors (``(r + m, r_out)``, invalid columns zero).
    """
    idx = top_indices(eigenvalues, valid, r_out)
    valid_new = valid[idx]
    s_sel = jnp.where(valid_new[None, :], s[:, idx], 0)
    r = q.shape[1]
    q_new = q @ s_sel[:r] + v @ s_sel[r:]
    return q_new, jnp.where(valid_new, eigenvalues[idx], 0), valid_new, s_sel


@full_precision
def orthonormalize(a: jax.Array) -> jax.Array:
    """Orthonormal basis of ``a``'s columns by QR (diag(R) ≥ 0), padded to ``a``'s width.

    On an Explicit mesh the factorisation runs where ``a``'s rows lie
    (:func:`~lowrank_optax._src.linalg.householder_qr`) and the result is laid
    out as ``a``.
    """
    n, m = a.shape
    q = positive_qr(a)
    if q.shape[1] < m:
        q = jnp.pad(q, ((0, 0), (0, m - q.shape[1])))
    return match(q, a)


@full_precision
def orthogonality_error(q: jax.Array, valid: jax.Array) -> jax.Array:
    """``mean((QᵀQ − diag(valid))²)``: the reference's re-orthogonalisation trigger."""
    g = contract(q.T, q)
    return jnp.mean(jnp.square(g - jnp.diag(valid.astype(g.dtype))))
