"""Bases for :func:`lowrank.eigenbasis_update`: how ``Q diag(L) Qᵀ`` is kept up to date.

Each factory returns a :class:`Basis`, a NamedTuple of pure functions over an
array-only state. The basis owns the representation of ``Q`` (explicit
``(n, r)`` columns, or for :func:`ggt` the history ``M`` and a small ``W`` with
``Q = M W``); the driver only calls ``project`` (``Qᵀx``), ``unproject``
(``Qu``) and ``update``. All shapes are static: ``r`` columns with a validity
mask (removed columns are zero with mask False).

Arrays with ``n`` rows (``Q``, the GGT history, Hebbian moments, the Nyström
test matrix, the full matrix) are the ones to shard along ``n`` on a mesh; the
``r × r`` work is small and replicated. With Explicit sharding types, ``init``
creates them with the layout in :attr:`BasisSpec.rows` and ``update`` keeps it
(products contracting ``n`` give replicated results, fresh random matrices are
laid out like the state, QR factorisations run where the rows lie, with
``m``-sized collectives only: :func:`~lowrank_optax._src.linalg.householder_qr`;
the full matrix's ``eigh`` runs on a replicated copy).

Use as ``lowrank.bases.ggt()``, ``lowrank.bases.eigen()``, ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lowrank_optax._src import adam_in_basis as adam_core
from lowrank_optax._src import sharding
from lowrank_optax._src import validation as v
from lowrank_optax._src.lre.curvatures import Correction
from lowrank_optax._src.lre.flatten import put_rows, zeros_rows
from lowrank_optax._src.lre.linalg import (
    contract,
    eigh_update,
    keep_if,
    masked_eigh,
    masked_max,
    match,
    orthogonality_error,
    orthonormalize,
    regularize,
    select_columns,
    sym,
    tiny,
    top_indices,
)

__all__ = [
    "Basis",
    "BasisSpec",
    "BasisUpdate",
    "eigen",
    "full_matrix",
    "ggt",
    "hebbian",
    "nystrom",
    "random",
    "randomized_eigen",
]

HEBBIAN_OPTS = ("adamg", "gd", "stiefel_gd")


class BasisSpec(NamedTuple):
    """Static facts a basis is built for (given by the driver at ``init``).

    Attributes:
      n: length of the flattened block.
      k: correction columns per update (after symmetrisation).
      dtype: compute dtype.
      has_z: corrections carry a ``Z`` factor.
      signed: ``alpha`` may differ from 1.
      rows: layout of arrays with ``n`` rows when the parameters carry Explicit
        sharding types: the ``NamedSharding`` of an ``(n,)`` vector, which ``init``
        gives every array with ``n`` rows (sharded along ``n``); ``None`` otherwise.
    """

    n: int
    k: int
    dtype: Any
    has_z: bool
    signed: bool
    rows: Any = None


class BasisUpdate(NamedTuple):
    """Result of one basis update.

    Attributes:
      state: the state to keep: the new one, or (where ``ok`` is False) one that
        still describes the previous basis. Bases revert their own state so that
        large arrays are not copied needlessly.
      eigenvalues: ``(r,)`` regularised eigenvalues ``L_reg`` (debiased).
      valid: ``(r,)`` mask of the regularised basis ``Q_reg``.
      acc_eigenvalues: ``(r,)`` accumulator eigenvalues ``L_acc`` (debiased), so that
        ``B = Q_acc diag(L_acc) Q_accᵀ``.
      acc_valid: ``(r,)`` mask of ``Q_acc``.
      rotation: ``(r, r)`` ``Q_acc,newᵀ Q_acc,old`` (the driver applies the masks).
      ok: boolean scalar; False keeps the previous basis (and its state).
      projection: ``(r,)`` coordinates ``Qᵀx`` of the ``x`` passed to ``update`` in the
        kept basis (bases with ``fused_projection``), else ``None``.
    """

    state: Any
    eigenvalues: jax.Array
    valid: jax.Array
    acc_eigenvalues: jax.Array
    acc_valid: jax.Array
    rotation: jax.Array
    ok: jax.Array
    projection: jax.Array | None = None


class Basis(NamedTuple):
    """A basis: pure functions plus static facts the driver checks.

    Attributes:
      name: the basis' name.
      rank: ``BasisSpec -> r``, the static number of columns.
      init: ``(BasisSpec, key) -> state``.
      update: ``(BasisSpec, state, Correction, key, x=None) -> BasisUpdate``.
      project: ``(state, x) -> Qᵀx`` for ``x`` of shape ``(n,)`` or ``(n, m)``.
      unproject: ``(state, u) -> Qu``.
      symmetric_only: rejects corrections with a ``Z`` factor.
      unsigned_only: rejects signed corrections.
      fused_projection: ``update(..., x=g)`` also returns ``Qᵀg`` in the new basis
        (GGT: shares the pass over the history with the Gram update).
    """

    name: str
    rank: Callable[[BasisSpec], int]
    init: Callable[[BasisSpec, jax.Array], Any]
    update: Callable[[BasisSpec, Any, Correction, jax.Array], BasisUpdate]
    project: Callable[[Any, jax.Array], jax.Array]
    unproject: Callable[[Any, jax.Array], jax.Array]
    symmetric_only: bool = False
    unsigned_only: bool = False
    fused_projection: bool = False


def _finite(*xs: jax.Array) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs]))


def _insert_columns(history: jax.Array, cols: jax.Array, idx: jax.Array) -> jax.Array:
    """Writes ``cols[:, j]`` to ``history[:, idx[j]]`` (``idx[j]`` out of range: skipped).

    Written with dynamic slices, and nothing reads the old history except inside
    the update itself, so XLA updates a donated history in place: a masked scatter,
    or any separate read of the old history, makes it copy the whole ``n × c·h``
    array (twice), which costs more than the rest of a GGT step.
    """
    n, width = history.shape
    m = cols.shape[1]

    zero = jnp.zeros([], jnp.int32)

    def body(j: Any, hist: jax.Array) -> jax.Array:
        write = idx[j] < width
        slot = jnp.where(write, idx[j], 0).astype(jnp.int32)
        col = (
            cols[:, j : j + 1]
            if isinstance(j, int)
            else jax.lax.dynamic_slice(cols, (zero, jnp.asarray(j, jnp.int32)), (n, 1))
        )
        old = jax.lax.dynamic_slice(hist, (zero, slot), (n, 1))
        new = jnp.where(write, col, old)
        return jax.lax.dynamic_update_slice(hist, new, (zero, slot))

    if m == 1:
        return body(0, history)
    return jax.lax.fori_loop(0, m, body, history)


def _explicit_project(state: Any, x: jax.Array) -> jax.Array:
    # (xᵀQ)ᵀ rather than Qᵀx: XLA:CPU streams the tall matrix ~3x faster this way.
    return contract(x.T, state.q).T


def _explicit_unproject(state: Any, u: jax.Array) -> jax.Array:
    return state.q @ u


def _check_optional_beta(name: str, beta: Any) -> None:
    if beta is not None:
        v.check_beta(name, beta)


def _check_regularization(**kwargs: Any) -> None:
    for name, value in kwargs.items():
        if value is None:
            continue
        if name.endswith("truncate"):
            v.check_int(name, value, minimum=1)
        else:
            v.check_nonnegative(name, value)


# --------------------------------------------------------------------------- #
# GGT
# --------------------------------------------------------------------------- #


class GGTState(NamedTuple):
    """State of :func:`ggt`: the history and ``Q = history @ w``.

    Attributes:
      history: ``(n, c·h)`` last ``h`` correction columns (``c = 2`` with a ``Z``
        factor: its columns follow).
      alpha: ``(h,)`` signs of the stored columns.
      col_valid: ``(h,)`` mask of filled history slots.
      pos: int32 next slot (circular).
      gram: ``(c·h, c·h)`` Gram matrix ``historyᵀ history``, kept incrementally.
      w: ``(c·h, c·h)`` coefficients of the eigenvectors in the history columns.
      evict: ``(n, c·e)`` copies of the ``e = min(k, h)`` columns the next update
        will overwrite (read after each write, so the history is never read before
        being updated in place; see :func:`_insert_columns`).
    """

    history: jax.Array
    alpha: jax.Array
    col_valid: jax.Array
    pos: jax.Array
    gram: jax.Array
    w: jax.Array
    evict: jax.Array


def ggt(
    history_size: int = 100,
    *,
    truncate: int | None = None,
    eig_tol: jax.typing.ArrayLike = 1e-5,
    damping: jax.typing.ArrayLike = 0.0,
    rdamping: jax.typing.ArrayLike = 0.0,
    abs: bool = False,
) -> Basis:
    r"""GGT: exact eigendecomposition of the sum of the last ``history_size`` corrections.

    With :math:`M = [y_1, \dots, y_h]` the stored columns (no decay, no debiasing)
    and the symmetric unit-sign case:

    .. math::

      \begin{align*}
        M^\top M + d I &= V \Lambda V^\top, \quad
        \Lambda \leftarrow \mathrm{regularize}(\Lambda; truncate, tol) \\
        Q &= M V \Lambda^{-1/2}, \qquad L = \Lambda + \rho\,\lambda_{max}
      \end{align*}

    so :math:`L` is the squared singular values of :math:`M`. With signs
    :math:`D = \mathrm{diag}(\alpha)` or a second factor :math:`Z` the matrix is
    :math:`A = \mathrm{sym}(M D Z^\top)`; writing :math:`N` for the stored columns
    (:math:`[M, Z]` or :math:`M`), :math:`N^\top N = V\Lambda V^\top`, the small
    matrix :math:`T = \Lambda^{1/2}V^\top K V\Lambda^{1/2} + dI` (:math:`K` the
    coefficient matrix of :math:`A` in :math:`N`) is diagonalised,
    :math:`T = S\Theta S^\top`, and :math:`Q = N V \Lambda^{-1/2} S`,
    :math:`L = \Theta`.

    ``Q`` is never formed: the state keeps :math:`N`, its Gram matrix (updated
    with one :math:`N^\top y` per new column) and the small :math:`W` with
    :math:`Q = NW`, so a step costs :math:`O(n h)` plus an :math:`h\times h`
    eigendecomposition, and projections are :math:`W^\top (N^\top x)`.

    .. warning::
       The reference orthogonalises :math:`[M, Z]` by QR in the signed/asymmetric
       case; here the same eigenproblem is solved through the Gram matrix (equal in
       exact arithmetic on the span of :math:`N`, damping only on that span), so
       ``ortho_method`` does not exist. Directions with
       :math:`\Lambda \le \epsilon\,\Lambda_{max}` are dropped before the inverse
       square root (the reference can produce NaN there). The reference keeps Y and
       Z histories of different lengths when they mix; here each stored column has
       its own ``Z`` partner.

    Args:
      history_size: number :math:`h \ge 1` of stored columns (upper bound on rank).
      truncate: keep only the largest ``truncate`` eigenvalues.
      eig_tol: drop eigenvalues :math:`\le tol\,\lambda_{max}`.
      damping: :math:`d` added to the small eigenproblem.
      rdamping: :math:`\rho`, adds :math:`\rho\,\lambda_{max}` to kept eigenvalues.
      abs: take absolute values of the eigenvalues.

    Returns:
      The corresponding :class:`Basis`.

    Examples:
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.lre(1e-2, basis=lowrank.bases.ggt(history_size=10))

    References:
      Agarwal et al, `Efficient Full-Matrix Adaptive Regularization
      <https://arxiv.org/abs/1806.02958>`_, 2019
    """
    h = v.check_int("history_size", history_size, minimum=1)
    _check_regularization(truncate=truncate, eig_tol=eig_tol, damping=damping, rdamping=rdamping)

    def rank(spec: BasisSpec) -> int:
        return (2 if spec.has_z else 1) * h

    def init(spec: BasisSpec, key: jax.Array) -> GGTState:
        del key
        c = 2 if spec.has_z else 1
        dt = spec.dtype
        return GGTState(
            history=zeros_rows((spec.n, c * h), dt, spec.rows),
            alpha=jnp.ones((h,), dt),
            col_valid=jnp.zeros((h,), jnp.bool_),
            pos=jnp.zeros([], jnp.int32),
            gram=jnp.zeros((c * h, c * h), dt),
            w=jnp.zeros((c * h, c * h), dt),
            evict=zeros_rows((spec.n, c * min(spec.k, h)), dt, spec.rows),
        )

    def project(state: GGTState, x: jax.Array) -> jax.Array:
        return (contract(x.T, state.history) @ state.w).T  # = wᵀ historyᵀ x

    def unproject(state: GGTState, u: jax.Array) -> jax.Array:
        return state.history @ (state.w @ u)

    def update(
        spec: BasisSpec,
        state: GGTState,
        corr: Correction,
        key: jax.Array,
        x: jax.Array | None = None,
    ) -> BasisUpdate:
        del key
        dt = state.history.dtype
        has_z = corr.z is not None
        c = 2 if has_z else 1
        k = corr.y.shape[1]
        # Non-finite columns never enter the history (so the Gram matrix stays
        # finite and the history need not be reverted); valid columns go first
        # (stable) so they fill consecutive slots.
        col_ok = corr.valid & jnp.all(jnp.isfinite(corr.y), axis=0)
        if has_z:
            col_ok = col_ok & jnp.all(jnp.isfinite(corr.z), axis=0)
        corr = corr._replace(valid=col_ok)
        order = jnp.argsort(~corr.valid, stable=True)
        y = corr.y[:, order].astype(dt)
        alpha = corr.alpha[order].astype(dt)
        n_valid = jnp.sum(corr.valid).astype(jnp.int32)
        offset = jnp.maximum(n_valid - h, 0)  # more than h new columns: keep the last h
        j = jnp.arange(k, dtype=jnp.int32)
        keep = (j >= offset) & (j < n_valid)
        slot = jnp.where(keep, (state.pos + j - offset) % h, c * h)
        y = jnp.where(keep[None, :], y, 0)
        if has_z:
            zc = jnp.where(keep[None, :], corr.z[:, order].astype(dt), 0)
            new_cols = jnp.concatenate([y, zc], axis=1)
            new_idx = jnp.concatenate([slot, jnp.where(keep, slot + h, c * h)])
        else:
            new_cols = y
            new_idx = slot
        m = new_cols.shape[1]
        # Order chosen so the history is updated in place (a copy of the n × c·h
        # history would cost more than the rest of the step): read the replaced
        # columns, write the new ones, then one pass over the new history gives the
        # new Gram rows (and Qᵀx when x is given).
        # The replaced columns: prefetched by the previous update when the correction
        # is no wider than declared (always, except per-sample curvatures without
        # `batch_size`), else read here (XLA then copies the history once).
        e = state.evict.shape[1] // c
        i = jnp.clip(j - offset, 0, max(e - 1, 0))
        if min(k, h) <= e:
            old_cols = jnp.where(keep[None, :], state.evict[:, i], 0)
            if has_z:
                old_z = jnp.where(keep[None, :], state.evict[:, e + i], 0)
                old_cols = jnp.concatenate([old_cols, old_z], axis=1)
        else:
            old_cols = jnp.take(state.history, new_idx, axis=1, mode="fill", fill_value=0)
        history = _insert_columns(state.history, new_cols, new_idx)
        if x is None:
            cross_new = contract(new_cols.T, history)  # (m, c·h): new columns vs new history
        else:
            both = contract(jnp.concatenate([new_cols, x.astype(dt)[:, None]], axis=1).T, history)
            cross_new, hx = both[:m], both[m]  # hx = history_newᵀ x
        # new columns against the old history: differs only where columns were replaced
        cross_old = cross_new.at[:, new_idx].set(contract(new_cols.T, old_cols), mode="drop")
        x_new_old = state.gram.at[new_idx, :].set(cross_old, mode="drop")  # hist_newᵀ hist_old
        gram = state.gram.at[new_idx, :].set(cross_new, mode="drop")
        gram = gram.at[:, new_idx].set(cross_new.T, mode="drop")
        hist_alpha = state.alpha.at[slot].set(alpha, mode="drop")
        hist_valid = state.col_valid.at[slot].set(True, mode="drop")
        pos = (state.pos + jnp.minimum(n_valid, h)) % h
        next_slots = (pos + jnp.arange(e, dtype=jnp.int32)) % h
        if has_z:
            next_slots = jnp.concatenate([next_slots, next_slots + h])
        evict = jnp.take(history, next_slots, axis=1)  # read after the write

        col_mask = jnp.concatenate([hist_valid] * c)
        outer = col_mask[:, None] & col_mask[None, :]
        g = jnp.where(outer, sym(gram), 0)
        eps = jnp.finfo(dt).eps
        d = jnp.where(col_mask, damping, 0).astype(dt)
        if not (has_z or spec.signed):
            lam, vecs = jnp.linalg.eigh(g + jnp.diag(d))
            if abs:
                lam = jnp.abs(lam)
            lam, valid = regularize(lam, jnp.ones_like(col_mask), truncate=truncate, tol=eig_tol)
            valid = valid & (lam > eps * masked_max(lam, valid)) & (lam > 0)
            inv_sqrt = jnp.where(valid, 1 / jnp.sqrt(jnp.where(valid, lam, 1)), 0)
            w = vecs * inv_sqrt[None, :]
            lam_max = masked_max(lam, valid)
            lam = jnp.where(valid, lam + rdamping * lam_max, 0)
            ok_small = _finite(lam, vecs)
        else:
            big_lam, vecs = jnp.linalg.eigh(g)
            span = (big_lam > eps * jnp.max(big_lam)) & (big_lam > 0)
            root = jnp.where(span, jnp.sqrt(jnp.where(span, big_lam, 0)), 0)
            a = jnp.where(hist_valid, hist_alpha, 0)
            if has_z:
                dz = jnp.diag(a / 2)
                zero = jnp.zeros_like(dz)
                kmat = jnp.block([[zero, dz], [dz, zero]])
            else:
                kmat = jnp.diag(a)
            t = root[:, None] * (vecs.T @ kmat @ vecs) * root[None, :]
            t = t + jnp.diag(jnp.where(span, damping, 0).astype(dt))
            lam, s, ev = masked_eigh(t, span)
            if abs:
                lam = jnp.abs(lam)
            lam, valid = regularize(lam, ev, truncate=truncate, tol=eig_tol)
            lam_max = masked_max(lam, valid)
            lam = jnp.where(valid, lam + rdamping * lam_max, 0)
            inv_root = jnp.where(span, 1 / jnp.where(span, root, 1), 0)
            w = vecs @ (inv_root[:, None] * s)
            w = jnp.where(valid[None, :], w, 0)
            ok_small = _finite(lam, s, vecs)
        w = jnp.where(valid[None, :], w, 0)
        rotation = w.T @ x_new_old @ state.w
        ok = jnp.any(corr.valid) & ok_small & _finite(rotation)
        # The (finite) columns are stored whatever happens; only the eigenvector
        # coefficients fall back. If the small eigenproblem failed on a finite Gram
        # matrix (not observed in practice), Q = history @ w_old is then an
        # approximation of the previous basis for one update.
        w = jnp.where(ok, w, state.w)
        new_state = GGTState(history, hist_alpha, hist_valid, pos, gram, w, evict)
        projection = None if x is None else w.T @ hx
        return BasisUpdate(new_state, lam, valid, lam, valid, rotation, ok, projection)

    return Basis(
        name="ggt",
        rank=rank,
        init=init,
        update=update,
        project=project,
        unproject=unproject,
        fused_projection=True,
    )


# --------------------------------------------------------------------------- #
# Eigen, RandomizedEigen, Nystrom: an EMA of the curvature as Q diag(L) Qᵀ
# --------------------------------------------------------------------------- #


class EigenState(NamedTuple):
    """State of :func:`eigen`, :func:`randomized_eigen` and :func:`nystrom`.

    Attributes:
      q: ``(n, r)`` eigenvectors of the accumulator (valid columns first).
      acc: ``(r,)`` accumulator eigenvalues (not debiased).
      acc_valid: ``(r,)`` mask of ``q``'s columns.
      count: int32 number of successful updates (debiasing clock).
      omega: ``(n, l)`` Nyström test matrix kept between regenerations, or ``None``.
    """

    q: jax.Array
    acc: jax.Array
    acc_valid: jax.Array
    count: jax.Array
    omega: jax.Array | None


class _Later(NamedTuple):
    """Output of a non-first accumulator update (before ``abs``, round 2, debiasing)."""

    q: jax.Array
    eigenvalues: jax.Array
    valid: jax.Array
    rotation: jax.Array
    finite: jax.Array
    omega: jax.Array | None


def _top_columns(
    basis: jax.Array, s: jax.Array | None, lam: jax.Array, valid: jax.Array, r: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``r`` columns of ``basis @ s`` (or ``basis``) with the largest valid ``lam``.

    When fewer than ``r`` candidates exist (a sketch narrower than the basis), the
    result is padded with invalid zero columns.
    """
    m = lam.shape[0]
    idx = top_indices(lam, valid, min(r, m))
    valid_sel = valid[idx]
    cols = basis[:, idx] if s is None else basis @ s[:, idx]
    q = jnp.where(valid_sel[None, :], cols, 0)
    lam_sel = jnp.where(valid_sel, lam[idx], 0)
    if m < r:
        q = jnp.pad(q, ((0, 0), (0, r - m)))
        lam_sel = jnp.pad(lam_sel, (0, r - m))
        valid_sel = jnp.pad(valid_sel, (0, r - m))
    return q, lam_sel, valid_sel


def _solve_lower_t(chol: jax.Array, y: jax.Array) -> jax.Array:
    """``Y C⁻ᵀ`` for lower-triangular ``C``.

    On an Explicit mesh (``Y`` sharded along ``n``) the small inverse is formed and
    applied by a product that keeps ``Y``'s layout; otherwise a triangular solve.
    """
    if sharding.explicit_spec(y) is None:
        return jax.scipy.linalg.solve_triangular(chol, y.T, lower=True).T
    eye = jnp.eye(chol.shape[0], dtype=chol.dtype)
    return y @ jax.scipy.linalg.solve_triangular(chol, eye, lower=True).T


def _weights(beta: Any) -> tuple[Any, Any]:
    return (1.0, 1.0) if beta is None else (beta, 1 - beta)


def _apply_accumulated(
    state: EigenState, corr: Correction, b: jax.Array, w1: Any, w2: Any
) -> jax.Array:
    """``(w1 Q diag(L) Qᵀ + w2 Y diag(α) Yᵀ) B`` without forming the matrix."""
    lam = jnp.where(state.acc_valid, state.acc, 0)
    y = jnp.where(corr.valid[None, :], corr.y, 0).astype(b.dtype)
    a = jnp.where(corr.valid, corr.alpha, 0).astype(b.dtype)
    return w1 * (state.q @ (lam[:, None] * contract(state.q.T, b))) + w2 * (
        y @ (a[:, None] * contract(y.T, b))
    )


def _eigen_family(
    name: str,
    *,
    rank: int,
    beta: Any,
    later: Callable[[BasisSpec, EigenState, Correction, jax.Array, int], _Later],
    abs: bool,
    update_truncate: int | None,
    update_eig_tol: Any,
    update_damping: Any,
    update_rdamping: Any,
    update_abs: bool,
    symmetric_only: bool,
    unsigned_only: bool,
    omega_width: Callable[[BasisSpec], int] | None = None,
) -> Basis:
    def r_of(spec: BasisSpec) -> int:
        return min(max(rank, spec.k), spec.n)

    def init(spec: BasisSpec, key: jax.Array) -> EigenState:
        r = r_of(spec)
        omega = None
        if omega_width is not None:
            omega = jax.random.normal(key, (spec.n, omega_width(spec)), spec.dtype)
            # QR where the rows lie (Explicit mesh), then the layout on any mesh.
            omega = put_rows(orthonormalize(put_rows(omega, spec.rows)), spec.rows)
        return EigenState(
            q=zeros_rows((spec.n, r), spec.dtype, spec.rows),
            acc=jnp.zeros((r,), spec.dtype),
            acc_valid=jnp.zeros((r,), jnp.bool_),
            count=jnp.zeros([], jnp.int32),
            omega=omega,
        )

    def first(spec: BasisSpec, state: EigenState, corr: Correction, key: jax.Array) -> _Later:
        # Eigendecomposition of the first correction (the reference's low_rank_eigh):
        # no truncation or regularisation, L_acc = w2·α·λ.
        del key
        r = r_of(spec)
        _, w2 = _weights(beta)
        lam, ev, s, vv = eigh_update(
            state.q,
            state.acc,
            jnp.zeros_like(state.acc_valid),
            corr.y.astype(spec.dtype),
            corr.alpha,
            corr.valid,
            z=None if corr.z is None else corr.z.astype(spec.dtype),
            w1=0.0,
            w2=w2,
        )
        lam, ev = regularize(lam, ev)
        q, lam_sel, valid, _ = select_columns(state.q, vv, s, lam, ev, r)
        rotation = jnp.zeros((r, r), spec.dtype)  # no previous basis
        return _Later(q, lam_sel, valid, rotation, _finite(lam, s), state.omega)

    def update(
        spec: BasisSpec,
        state: EigenState,
        corr: Correction,
        key: jax.Array,
        x: jax.Array | None = None,
    ) -> BasisUpdate:
        r = r_of(spec)
        is_first = state.count == 0
        res = jax.lax.cond(
            is_first,
            lambda: first(spec, state, corr, key),
            lambda: later(spec, state, corr, key, r),
        )
        acc = res.eigenvalues
        if abs:
            acc = jnp.where(is_first, acc, jnp.abs(acc))
        count = state.count + 1
        new_state = EigenState(res.q, acc, res.valid, count, res.omega)
        lam = jnp.abs(acc) if update_abs else acc
        lam_reg, valid_reg = regularize(
            lam,
            res.valid,
            truncate=update_truncate,
            tol=update_eig_tol,
            damping=update_damping,
            rdamping=update_rdamping,
        )
        lam_reg = jnp.where(is_first, acc, lam_reg)
        valid_reg = jnp.where(is_first, res.valid, valid_reg)
        if beta is None:
            debias = jnp.ones([], spec.dtype)
        else:
            debias = 1 - jnp.asarray(beta, spec.dtype) ** count.astype(spec.dtype)
        ok = jnp.any(corr.valid) & res.finite
        return BasisUpdate(
            keep_if(ok, new_state, state),
            jnp.where(valid_reg, lam_reg / debias, 0),
            valid_reg,
            jnp.where(res.valid, acc / debias, 0),
            res.valid,
            res.rotation,
            ok,
        )

    return Basis(
        name=name,
        rank=r_of,
        init=init,
        update=update,
        project=_explicit_project,
        unproject=_explicit_unproject,
        symmetric_only=symmetric_only,
        unsigned_only=unsigned_only,
    )


def eigen(
    rank: int = 100,
    beta: jax.typing.ArrayLike | None = 0.99,
    *,
    eig_tol: jax.typing.ArrayLike | None = 1e-4,
    damping: jax.typing.ArrayLike = 0.0,
    rdamping: jax.typing.ArrayLike = 0.0,
    abs: bool = False,
    update_truncate: int | None = None,
    update_eig_tol: jax.typing.ArrayLike | None = None,
    update_damping: jax.typing.ArrayLike = 1e-4,
    update_rdamping: jax.typing.ArrayLike = 0.0,
    update_abs: bool = False,
    reortho_threshold: jax.typing.ArrayLike = 0.1,
) -> Basis:
    r"""Streaming truncated eigendecomposition of an EMA of the corrections.

    The accumulator :math:`A = Q\,\mathrm{diag}(L_{acc})\,Q^\top` is updated by the
    exact rank-:math:`k` update of its eigendecomposition: with :math:`P = Q^\top Y`,
    the residual :math:`R = Y - QP` (two Gram–Schmidt passes) orthonormalised to
    :math:`V` (QR; columns with a residual below a relative tolerance are dropped),

    .. math::

      \begin{align*}
        \beta A + (1-\beta) Y D Y^\top &= [Q, V]\, B\, [Q, V]^\top, \quad
        B = \begin{bmatrix}\beta L & 0\\0 & 0\end{bmatrix}
            + (1-\beta)\begin{bmatrix}P\\V^\top Y\end{bmatrix} D
              \begin{bmatrix}P\\V^\top Y\end{bmatrix}^\top \\
        B &= S \Lambda S^\top, \quad Q \leftarrow [Q, V] S, \quad L_{acc} \leftarrow \Lambda
      \end{align*}

    cut back to ``rank`` columns by ``regularize(rank, eig_tol, damping, rdamping)``
    (weights 1, 1 when ``beta=None``). With a ``Z`` factor the correction is
    :math:`\mathrm{sym}(YDZ^\top)` on :math:`\mathrm{span}([Q, Y, Z])`. If
    :math:`\mathrm{mean}((Q^\top Q - I)^2) >` ``reortho_threshold``, :math:`Q` is
    re-orthonormalised by QR. ``abs`` replaces :math:`L_{acc}` by its absolute
    value. The basis used for the step is a second regularisation (``update_*``
    arguments) of the accumulator that does not feed back. Both eigenvalue sets are
    debiased by :math:`1/(1-\beta^t)`, :math:`t` the number of updates. The first
    update is the plain eigendecomposition of :math:`(1-\beta)YDY^\top`.

    .. warning::
       The reference counts debiasing steps in correction columns; here in updates
       (same for rank-1 corrections, deviation 11). It uses an absolute tolerance
       for "in span"; here a relative one. Its first update multiplies the
       eigenvalues of :math:`Y^\top Y` by a vector :math:`\alpha` elementwise; here
       the first update is the eigendecomposition of :math:`Y D Y^\top`.

    Args:
      rank: number of eigenpairs kept (``>= 1``; at least the first correction's
        column count is allocated).
      beta: EMA decay in ``[0, 1)``, or ``None`` for a plain sum (no debiasing).
      eig_tol: accumulator: drop eigenvalues :math:`\le tol\,\lambda_{max}`.
      damping: accumulator: constant added to eigenvalues (compounds over updates).
      rdamping: accumulator: :math:`\rho\,\lambda_{max}` added to eigenvalues.
      abs: accumulator: absolute values of eigenvalues.
      update_truncate: step basis: keep the largest ``update_truncate``.
      update_eig_tol: step basis: relative tolerance.
      update_damping: step basis: constant added to eigenvalues.
      update_rdamping: step basis: :math:`\rho\,\lambda_{max}` added.
      update_abs: step basis: absolute values.
      reortho_threshold: re-orthonormalisation trigger.

    Returns:
      The corresponding :class:`Basis`.

    Examples:
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.lre(1e-2, basis=lowrank.bases.eigen(rank=8))

    References:
      Nikishev, `LRE: Low-rank eigenbasis <https://github.com/inikishev/lre>`_, 2025

      Brand, `Fast low-rank modifications of the thin singular value decomposition
      <https://doi.org/10.1016/j.laa.2005.07.021>`_, 2006
    """
    rank = v.check_int("rank", rank, minimum=1)
    _check_optional_beta("beta", beta)
    _check_regularization(
        eig_tol=eig_tol,
        damping=damping,
        rdamping=rdamping,
        update_truncate=update_truncate,
        update_eig_tol=update_eig_tol,
        update_damping=update_damping,
        update_rdamping=update_rdamping,
        reortho_threshold=reortho_threshold,
    )

    def later(
        spec: BasisSpec, state: EigenState, corr: Correction, key: jax.Array, r: int
    ) -> _Later:
        del key
        w1, w2 = _weights(beta)
        lam, ev, s, vv = eigh_update(
            state.q,
            state.acc,
            state.acc_valid,
            corr.y.astype(spec.dtype),
            corr.alpha,
            corr.valid,
            z=None if corr.z is None else corr.z.astype(spec.dtype),
            w1=w1,
            w2=w2,
        )
        lam, ev = regularize(
            lam, ev, truncate=rank, tol=eig_tol, damping=damping, rdamping=rdamping
        )
        q, lam_sel, valid, s_sel = select_columns(state.q, vv, s, lam, ev, r)
        rotation = s_sel[:r].T  # [Q, V] S ᵀ Q = Sᵀ [I; 0]

        def reortho() -> tuple[jax.Array, jax.Array]:
            # Valid columns are first (select_columns), so QR keeps their span.
            q2 = jnp.where(valid[None, :], orthonormalize(q), 0)
            return q2, contract(q2.T, q) @ rotation

        q, rotation = jax.lax.cond(
            orthogonality_error(q, valid) > reortho_threshold, reortho, lambda: (q, rotation)
        )
        return _Later(q, lam_sel, valid, rotation, _finite(lam, s), None)

    return _eigen_family(
        "eigen",
        rank=rank,
        beta=beta,
        later=later,
        abs=abs,
        update_truncate=update_truncate,
        update_eig_tol=update_eig_tol,
        update_damping=update_damping,
        update_rdamping=update_rdamping,
        update_abs=update_abs,
        symmetric_only=False,
        unsigned_only=False,
    )


def randomized_eigen(
    rank: int = 100,
    beta: jax.typing.ArrayLike | None = 0.99,
    oversampling: int = 10,
    *,
    eig_tol: jax.typing.ArrayLike | None = 1e-12,
    damping: jax.typing.ArrayLike = 0.0,
    rdamping: jax.typing.ArrayLike = 0.0,
    abs: bool = False,
    update_truncate: int | None = None,
    update_eig_tol: jax.typing.ArrayLike | None = None,
    update_damping: jax.typing.ArrayLike = 1e-12,
    update_rdamping: jax.typing.ArrayLike = 0.0,
    update_abs: bool = False,
) -> Basis:
    r"""EMA of the corrections kept by a randomized eigendecomposition.

    With a fresh Gaussian :math:`\Omega \in \mathbb{R}^{n\times(r+p)}` and
    :math:`A = \beta Q L Q^\top + (1-\beta) Y D Y^\top` applied without forming it:

    .. math::

      \tilde Q = \mathrm{qr}(A\Omega), \quad
      \mathrm{sym}(\tilde Q^\top A \tilde Q) = S \Lambda S^\top, \quad
      Q \leftarrow \tilde Q S, \; L \leftarrow \Lambda

    regularised by ``(rank, eig_tol, damping, rdamping)``; second round and
    debiasing as :func:`eigen`. A failed update (non-finite) keeps the old basis
    without decay. Requires symmetric corrections.

    Args:
      rank: eigenpairs kept.
      beta: EMA decay, or ``None`` for a sum.
      oversampling: extra sketch columns :math:`p \ge 0`.
      eig_tol: accumulator relative tolerance.
      damping: accumulator damping.
      rdamping: accumulator relative damping.
      abs: accumulator absolute values.
      update_truncate: step-basis truncation.
      update_eig_tol: step-basis tolerance.
      update_damping: step-basis damping.
      update_rdamping: step-basis relative damping.
      update_abs: step-basis absolute values.

    Returns:
      The corresponding :class:`Basis`.

    Examples:
      >>> import lowrank_optax as lowrank
      >>> basis = lowrank.bases.randomized_eigen(rank=8)

    References:
      Halko et al, `Finding structure with randomness
      <https://arxiv.org/abs/0909.4061>`_, 2011
    """
    rank = v.check_int("rank", rank, minimum=1)
    _check_optional_beta("beta", beta)
    oversampling = v.check_int("oversampling", oversampling, minimum=0)
    _check_regularization(
        eig_tol=eig_tol,
        damping=damping,
        rdamping=rdamping,
        update_truncate=update_truncate,
        update_eig_tol=update_eig_tol,
        update_damping=update_damping,
        update_rdamping=update_rdamping,
    )

    def later(
        spec: BasisSpec, state: EigenState, corr: Correction, key: jax.Array, r: int
    ) -> _Later:
        w1, w2 = _weights(beta)
        width = min(rank + oversampling, spec.n)
        omega = match(jax.random.normal(key, (spec.n, width), spec.dtype), state.q)
        qt = orthonormalize(_apply_accumulated(state, corr, omega, w1, w2))
        small = sym(contract(qt.T, _apply_accumulated(state, corr, qt, w1, w2)))
        lam, s = jnp.linalg.eigh(small)
        lam, valid = regularize(
            lam,
            jnp.ones(width, jnp.bool_),
            truncate=rank,
            tol=eig_tol,
            damping=damping,
            rdamping=rdamping,
        )
        q, lam_sel, valid_sel = _top_columns(qt, s, lam, valid, r)
        return _Later(q, lam_sel, valid_sel, contract(q.T, state.q), _finite(lam, s), None)

    return _eigen_family(
        "randomized_eigen",
        rank=rank,
        beta=beta,
        later=later,
        abs=abs,
        update_truncate=update_truncate,
        update_eig_tol=update_eig_tol,
        update_damping=update_damping,
        update_rdamping=update_rdamping,
        update_abs=update_abs,
        symmetric_only=True,
        unsigned_only=False,
    )


def nystrom(
    rank: int = 100,
    beta: jax.typing.ArrayLike | None = 0.99,
    oversampling: int = 10,
    omega_update_freq: int = 1,
    *,
    eig_tol: jax.typing.ArrayLike | None = 1e-12,
    damping: jax.typing.ArrayLike = 0.0,
    rdamping: jax.typing.ArrayLike = 0.0,
    abs: bool = False,
    update_truncate: int | None = None,
    update_eig_tol: jax.typing.ArrayLike | None = None,
    update_damping: jax.typing.ArrayLike = 1e-12,
    update_rdamping: jax.typing.ArrayLike = 0.0,
    update_abs: bool = False,
) -> Basis:
    r"""EMA of the corrections kept by a Nyström approximation (PSD corrections only).

    With an orthonormal test matrix :math:`\Omega` (``n × (rank + p)``, redrawn
    every ``omega_update_freq`` updates) and :math:`A` as in
    :func:`randomized_eigen`:

    .. math::

      \begin{align*}
        \nu &= \epsilon\,\|A\Omega\|_F, \quad Y_\nu = A\Omega + \nu\Omega, \quad
        C = \mathrm{chol}(\Omega^\top Y_\nu), \quad B = Y_\nu C^{-\top} \\
        B^\top B &= V \Lambda V^\top, \quad U = B V \Lambda^{-1/2}, \quad
        L = \Lambda - \nu
      \end{align*}

    keeping :math:`\Lambda > \epsilon\Lambda_{max}`, then regularised (the largest
    ``rank`` kept); second round and debiasing as :func:`eigen`. A failed Cholesky
    factorisation keeps the old basis.

    .. warning::
       The reference passes descending eigenvalues to an ascending-order
       regulariser and so keeps the *smallest* ones; here the largest are kept
       (deviation 2). It also ignores Cholesky failure (deviation 9).

    Args:
      rank: eigenpairs kept.
      beta: EMA decay, or ``None`` for a sum.
      oversampling: extra sketch columns.
      omega_update_freq: updates between test-matrix redraws (``>= 1``; with more
        than 1 the matrix is stored, ``n × (rank + p)``).
      eig_tol: accumulator relative tolerance.
      damping: accumulator damping.
      rdamping: accumulator relative damping.
      abs: accumulator absolute values.
      update_truncate: step-basis truncation.
      update_eig_tol: step-basis tolerance.
      update_damping: step-basis damping.
      update_rdamping: step-basis relative damping.
      update_abs: step-basis absolute values.

    Returns:
      The corresponding :class:`Basis`.

    Examples:
      >>> import lowrank_optax as lowrank
      >>> basis = lowrank.bases.nystrom(rank=8)

    References:
      Frangella et al, `Randomized Nyström Preconditioning
      <https://arxiv.org/abs/2110.02820>`_, 2023
    """
    rank = v.check_int("rank", rank, minimum=1)
    _check_optional_beta("beta", beta)
    oversampling = v.check_int("oversampling", oversampling, minimum=0)
    omega_update_freq = v.check_int("omega_update_freq", omega_update_freq, minimum=1)
    _check_regularization(
        eig_tol=eig_tol,
        damping=damping,
        rdamping=rdamping,
        update_truncate=update_truncate,
        update_eig_tol=update_eig_tol,
        update_damping=update_damping,
        update_rdamping=update_rdamping,
    )

    def width_of(spec: BasisSpec) -> int:
        return min(rank + oversampling, spec.n)

    def later(
        spec: BasisSpec, state: EigenState, corr: Correction, key: jax.Array, r: int
    ) -> _Later:
        w1, w2 = _weights(beta)
        width = width_of(spec)

        def fresh() -> jax.Array:
            return orthonormalize(
                match(jax.random.normal(key, (spec.n, width), spec.dtype), state.q)
            )

        if state.omega is None:
            omega = fresh()
        else:
            # Drawn at init; redrawn every `omega_update_freq` updates.
            omega = jax.lax.cond(
                state.count % omega_update_freq == 0,
                fresh,
                lambda: state.omega,
            )
        a_omega = _apply_accumulated(state, corr, omega, w1, w2)
        eps = jnp.finfo(spec.dtype).eps
        nu = eps * jnp.sqrt(jnp.sum(jnp.square(a_omega)))
        y_nu = a_omega + nu * omega
        chol = jnp.linalg.cholesky(sym(contract(omega.T, y_nu)))
        b = _solve_lower_t(chol, y_nu)
        lam, vecs = jnp.linalg.eigh(contract(b.T, b))
        keep = (lam > eps * jnp.max(lam)) & (lam > 0)
        u = (b @ vecs) * jnp.where(keep, 1 / jnp.sqrt(jnp.where(keep, lam, 1)), 0)[None, :]
        lam, valid = regularize(
            lam - nu, keep, truncate=rank, tol=eig_tol, damping=damping, rdamping=rdamping
        )
        q, lam_sel, valid_sel = _top_columns(u, None, lam, valid, r)
        new_omega = None if state.omega is None else omega
        finite = _finite(chol, lam, vecs)
        return _Later(q, lam_sel, valid_sel, contract(q.T, state.q), finite, new_omega)

    return _eigen_family(
        "nystrom",
        rank=rank,
        beta=beta,
        later=later,
        abs=abs,
        update_truncate=update_truncate,
        update_eig_tol=update_eig_tol,
        update_damping=update_damping,
        update_rdamping=update_rdamping,
        update_abs=update_abs,
        symmetric_only=True,
        unsigned_only=True,
        omega_width=width_of if omega_update_freq > 1 else None,
    )


# --------------------------------------------------------------------------- #
# Hebbian, FullMatrix, Random
# --------------------------------------------------------------------------- #


class HebbianState(NamedTuple):
    """State of :func:`hebbian`.

    Attributes:
      q: ``(n, r)`` orthonormal basis.
      mu: ``(n, r)`` first moment of the Riemannian gradient (``'adamg'``) or ``None``.
      nu: scalar second moment of its norm (``'adamg'``) or ``None``.
      count: int32 number of updates.
    """

    q: jax.Array
    mu: jax.Array | None
    nu: jax.Array | None
    count: jax.Array


def hebbian(
    rank: int = 100,
    lr: jax.typing.ArrayLike = 1e-2,
    *,
    value_clip: jax.typing.ArrayLike | None = None,
    norm_clip: jax.typing.ArrayLike | None = None,
    opt: str = "adamg",
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-8,
) -> Basis:
    r"""Principal subspace by the generalised Hebbian algorithm (Sanger's rule).

    With :math:`p_b = Q^\top y_b` for the correction columns (weighted by their
    signs :math:`\alpha_b`), Sanger's direction is

    .. math::

      G = \frac1k \sum_b \alpha_b\left(y_b p_b^\top
          - Q\,\mathrm{tril}(p_b p_b^\top)\right)

    (optionally value- and norm-clipped). ``opt='gd'``: :math:`Q \leftarrow
    \mathrm{qr}(Q + \eta G)`; ``'stiefel_gd'``: the same with the Riemannian
    gradient :math:`\xi = G - Q\,\mathrm{sym}(Q^\top G)`; ``'adamg'``: Adam on the
    Stiefel manifold, :math:`m \leftarrow \beta_1 m + (1-\beta_1)\xi` projected
    back to the tangent space, :math:`v \leftarrow \beta_2 v + (1-\beta_2)\|\xi\|^2`
    (a scalar, as AdamG), :math:`Q \leftarrow \mathrm{qr}(Q + \eta\,\hat m/
    (\sqrt{\hat v} + \epsilon))`. The QR retraction has :math:`\mathrm{diag}(R) \ge 0`.
    There are no eigenvalues: ``eigenvalues`` are 1 on every column.

    .. warning::
       The reference's ``'adamg'`` treats the column-orthonormal :math:`Q` as
       row-orthonormal (orthonormality is lost, rotations stay within the span, the
       retraction crashes or gives NaN); here it is Adam on the Stiefel manifold as
       AdamG intends (deviation 3). :math:`Q_0` is a random orthonormal matrix (the
       reference: :math:`10^{-4}` times a Gaussian), every update retracts by QR
       (the reference's ``reortho_freq``/Newton–Schulz options do not exist), and
       AdamG's settings are the keywords ``b1``, ``b2``, ``eps`` (the reference's
       ``opt_kwargs``; its ``cautious`` option is not offered).

    Args:
      rank: number of directions (at most ``n``).
      lr: step size :math:`\eta` on the manifold.
      value_clip: clip :math:`G`'s entries to ``[-value_clip, value_clip]``.
      norm_clip: clip the step direction's Frobenius norm.
      opt: ``'adamg'``, ``'gd'`` or ``'stiefel_gd'``.
      b1: AdamG first-moment decay.
      b2: AdamG second-moment decay.
      eps: AdamG denominator term.

    Returns:
      The corresponding :class:`Basis`.

    Examples:
      >>> import lowrank_optax as lowrank
      >>> basis = lowrank.bases.hebbian(rank=4, lr=0.1)

    References:
      Sanger, `Optimal unsupervised learning in a single-layer linear feedforward
      neural network <https://doi.org/10.1016/0893-6080(89)90044-0>`_, 1989

      Li et al, `Efficient Riemannian Optimization on the Stiefel Manifold via the
      Cayley Transform <https://arxiv.org/abs/2002.01113>`_, 2020
    """
    rank = v.check_int("rank", rank, minimum=1)
    v.check_positive("lr", lr)
    if value_clip is not None:
        v.check_positive("value_clip", value_clip)
    if norm_clip is not None:
        v.check_positive("norm_clip", norm_clip)
    v.check_choice("opt", opt, HEBBIAN_OPTS)
    v.check_beta("b1", b1)
    v.check_beta("b2", b2)
    v.check_nonnegative("eps", eps)

    def r_of(spec: BasisSpec) -> int:
        return min(rank, spec.n)

    def init(spec: BasisSpec, key: jax.Array) -> HebbianState:
        r = r_of(spec)
        q = orthonormalize(put_rows(jax.random.normal(key, (spec.n, r), spec.dtype), spec.rows))
        adam = opt == "adamg"
        return HebbianState(
            q=put_rows(q, spec.rows),
            mu=zeros_rows((spec.n, r), spec.dtype, spec.rows) if adam else None,
            nu=jnp.zeros([], spec.dtype) if adam else None,
            count=jnp.zeros([], jnp.int32),
        )

    def clip_norm(x: jax.Array) -> jax.Array:
        if norm_clip is None:
            return x
        nrm = jnp.sqrt(jnp.sum(jnp.square(x)))
        return x * jnp.minimum(1, norm_clip / jnp.maximum(nrm, tiny(x.dtype)))

    def update(
        spec: BasisSpec,
        state: HebbianState,
        corr: Correction,
        key: jax.Array,
        x: jax.Array | None = None,
    ) -> BasisUpdate:
        del key
        r = r_of(spec)
        q = state.q
        y = jnp.where(corr.valid[None, :], corr.y, 0).astype(q.dtype)
        a = jnp.where(corr.valid, corr.alpha, 0).astype(q.dtype)
        kv = jnp.maximum(jnp.sum(corr.valid), 1).astype(q.dtype)
        p = contract(q.T, y)  # (r, k)
        g = ((y * a[None, :]) @ p.T - q @ jnp.tril((p * a[None, :]) @ p.T)) / kv
        if value_clip is not None:
            g = jnp.clip(g, -value_clip, value_clip)
        count = state.count + 1
        mu, nu = state.mu, state.nu
        if opt == "gd":
            step = clip_norm(g)
        else:
            xi = g - q @ sym(contract(q.T, g))
            if opt == "stiefel_gd":
                step = clip_norm(xi)
            else:
                xi = clip_norm(xi)
                mu = adam_core.ema(xi, mu, b1)
                mu = mu - q @ sym(contract(q.T, mu))
                nu = adam_core.ema(jnp.sum(jnp.square(xi)), nu, b2)
                step = adam_core.adam_direction(mu, nu, count, b1=b1, b2=b2, eps=eps)
        q_new = orthonormalize(q + lr * step)
        new_state = HebbianState(q_new, mu, nu, count)
        ones = jnp.ones((r,), q.dtype)
        valid = jnp.ones((r,), jnp.bool_)
        ok = jnp.any(corr.valid) & _finite(q_new)
        new_state = keep_if(ok, new_state, state)
        return BasisUpdate(new_state, ones, valid, ones, valid, contract(q_new.T, q), ok)

    return Basis(
        name="hebbian",
        rank=r_of,
        init=init,
        update=update,
        project=_explicit_project,
        unproject=_explicit_unproject,
        symmetric_only=True,
    )


class FullMatrixState(NamedTuple):
    """State of :func:`full_matrix`.

    Attributes:
      matrix: ``(n, n)`` accumulated curvature (starts at the identity).
      q: ``(n, r)`` its regularised eigenvectors.
    """

    matrix: jax.Array
    q: jax.Array


def full_matrix(
    beta: jax.typing.ArrayLike | None = 0.99,
    *,
    truncate: int | None = None,
    eig_tol: jax.typing.ArrayLike | None = 1e-12,
    damping: jax.typing.ArrayLike = 0.0,
    rdamping: jax.typing.ArrayLike = 0.0,
    abs: bool = False,
) -> Basis:
    r"""Dense ``n × n`` curvature with a full eigendecomposition (for tiny problems).

    .. math::

      M_0 = I, \quad M \leftarrow \mathrm{sym}\big(\beta M + (1-\beta) Y D Z^\top\big)
      \;(\text{or } M + YDZ^\top \text{ with } \beta = \text{None}), \quad
      M = Q\,\mathrm{diag}(L)\,Q^\top

    regularised by ``(truncate, eig_tol, damping, rdamping)``; no debiasing.

    .. warning::
       The reference diagonalises the non-symmetrised matrix with ``eigh`` (which
       reads one triangle); here it is symmetrised first (deviation 9).

    Args:
      beta: EMA decay, or ``None`` for a sum.
      truncate: keep the largest ``truncate`` eigenvalues.
      eig_tol: relative tolerance.
      damping: constant added to eigenvalues.
      rdamping: :math:`\rho\,\lambda_{max}` added.
      abs: absolute values of eigenvalues.

    Returns:
      The corresponding :class:`Basis`.

    Examples:
      >>> import lowrank_optax as lowrank
      >>> basis = lowrank.bases.full_matrix()

    References:
      Duchi et al, `Adaptive Subgradient Methods for Online Learning and Stochastic
      Optimization <https://jmlr.org/papers/v12/duchi11a.html>`_, 2011
    """
    _check_optional_beta("beta", beta)
    _check_regularization(truncate=truncate, eig_tol=eig_tol, damping=damping, rdamping=rdamping)

    def r_of(spec: BasisSpec) -> int:
        return spec.n if truncate is None else min(truncate, spec.n)

    def init(spec: BasisSpec, key: jax.Array) -> FullMatrixState:
        del key
        return FullMatrixState(
            put_rows(jnp.eye(spec.n, dtype=spec.dtype), spec.rows),
            zeros_rows((spec.n, r_of(spec)), spec.dtype, spec.rows),
        )

    def update(
        spec: BasisSpec,
        state: FullMatrixState,
        corr: Correction,
        key: jax.Array,
        x: jax.Array | None = None,
    ) -> BasisUpdate:
        del key
        dt = spec.dtype
        # On an Explicit mesh the (tiny-problem) dense matrix is handled replicated
        # and stored back along its rows.
        y = sharding.replicated(jnp.where(corr.valid[None, :], corr.y, 0).astype(dt))
        z = y if corr.z is None else sharding.replicated(jnp.where(corr.valid[None, :], corr.z, 0))
        a = jnp.where(corr.valid, corr.alpha, 0).astype(dt)
        corr_m = (y * a[None, :]) @ z.astype(dt).T
        if beta is None:
            m = sharding.replicated(state.matrix) + corr_m
        else:
            m = beta * sharding.replicated(state.matrix) + (1 - beta) * corr_m
        m = sym(m)
        lam, vecs = jnp.linalg.eigh(m)
        if abs:
            lam = jnp.abs(lam)
        lam, valid = regularize(
            lam,
            jnp.ones(spec.n, jnp.bool_),
            truncate=truncate,
            tol=eig_tol,
            damping=damping,
            rdamping=rdamping,
        )
        idx = top_indices(lam, valid, r_of(spec))
        valid_sel = valid[idx]
        q = jnp.where(valid_sel[None, :], vecs[:, idx], 0)
        lam_sel = jnp.where(valid_sel, lam[idx], 0)
        ok = jnp.any(corr.valid) & _finite(lam, vecs)
        q = match(q, state.q)
        new_state = keep_if(ok, FullMatrixState(match(m, state.matrix), q), state)
        rotation = contract(q.T, state.q)
        return BasisUpdate(new_state, lam_sel, valid_sel, lam_sel, valid_sel, rotation, ok)

    return Basis(
        name="full_matrix",
        rank=r_of,
        init=init,
        update=update,
        project=_explicit_project,
        unproject=_explicit_unproject,
    )


class RandomState(NamedTuple):
    """State of :func:`random`.

    Attributes:
      q: ``(n, r)`` random orthonormal basis.
      count: int32 number of updates.
    """

    q: jax.Array
    count: jax.Array


def random(rank: int = 100, generate_freq: int = 1) -> Basis:
    r"""Random orthonormal basis, redrawn every ``generate_freq`` updates; ignores curvature.

    .. math::

      Q = \mathrm{qr}(\Omega), \quad \Omega_{ij} \sim \mathcal{N}(0, 1)

    Useful to test reprojection. ``eigenvalues`` are 1 on every column.

    .. warning::
       The reference ignores ``generate_freq`` (deviation 9); here it is honoured.

    Args:
      rank: number of columns (at most ``n``).
      generate_freq: updates between redraws (``>= 1``).

    Returns:
      The corresponding :class:`Basis`.

    Examples:
      >>> import lowrank_optax as lowrank
      >>> basis = lowrank.bases.random(rank=4)

    References:
      Nikishev, `LRE: Low-rank eigenbasis <https://github.com/inikishev/lre>`_, 2025
    """
    rank = v.check_int("rank", rank, minimum=1)
    generate_freq = v.check_int("generate_freq", generate_freq, minimum=1)

    def r_of(spec: BasisSpec) -> int:
        return min(rank, spec.n)

    def init(spec: BasisSpec, key: jax.Array) -> RandomState:
        del key
        q = zeros_rows((spec.n, r_of(spec)), spec.dtype, spec.rows)
        return RandomState(q, jnp.zeros([], jnp.int32))

    def update(
        spec: BasisSpec,
        state: RandomState,
        corr: Correction,
        key: jax.Array,
        x: jax.Array | None = None,
    ) -> BasisUpdate:
        r = r_of(spec)
        regen = state.count % generate_freq == 0
        q = jax.lax.cond(
            regen,
            lambda: orthonormalize(match(jax.random.normal(key, (spec.n, r), spec.dtype), state.q)),
            lambda: state.q,
        )
        ones = jnp.ones((r,), spec.dtype)
        valid = jnp.ones((r,), jnp.bool_)
        ok = jnp.any(corr.valid)
        new_state = keep_if(ok, RandomState(q, state.count + 1), state)
        return BasisUpdate(new_state, ones, valid, ones, valid, contract(q.T, state.q), ok)

    return Basis(
        name="random",
        rank=r_of,
        init=init,
        update=update,
        project=_explicit_project,
        unproject=_explicit_unproject,
    )
