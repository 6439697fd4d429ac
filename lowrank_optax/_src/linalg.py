"""Deterministic low-rank bases: canonical-sign SVD and a randomized range finder.

Singular vectors are only defined up to sign, and LAPACK builds (and backends)
disagree on the signs. Every basis the library computes is therefore put in a
canonical form:

* each left singular vector's largest-magnitude entry is made positive (the first
  such index on ties) and the matching right singular vector flips with it;
* a QR factorisation used inside the randomized range finder is normalised so
  that the diagonal of R is non-negative (CholeskyQR2 yields it directly; the
  Householder fallback is sign-corrected).

Decompositions run in at least float32 (bf16/f16 inputs are upcast, float64
stays float64) and their matrix products at ``Precision.HIGHEST`` (see
:func:`full_precision`). All functions accept leading batch axes.

Sharding: the randomized range finder and :func:`householder_qr` are one
function of their input, whatever its layout. On an Explicit mesh (sharding in
the types) the gradient is never gathered: the products that contract a sharded
axis (:func:`_rows_times`: products with ``G``, Gram matrices) request their
output layout, so XLA sums ``K``-row partial products; the Householder fallback
is a one-level TSQR over the row blocks and the ``K × K`` Cholesky runs per
batch block (both through ``jax.shard_map``, the only places with block-local
code); the sign rule is a reduction. Off Explicit meshes these are the plain
single-device operations (XLA's partitioner shards them on Auto meshes).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp

from lowrank_optax._src import sharding
from lowrank_optax._src.numerics import working_dtype

T = TypeVar("T")


def full_precision(fn: Callable[..., T]) -> Callable[..., T]:
    """Runs ``fn`` with ``jax_default_matmul_precision='highest'`` while it traces.

    On GPU (TF32) and TPU (bf16 passes) JAX's default float32 matmuls keep about
    10 mantissa bits; a Gram matrix or a basis product computed that way loses
    orthonormality at the 1e-3 level. Decompositions therefore always run at full
    precision; the projections of a normal step keep the user's setting.
    """

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> T:
        with jax.default_matmul_precision("highest"):
            return fn(*args, **kwargs)

    return wrapped


def _peak_signs(x: jax.Array) -> jax.Array:
    """``(..., 1, k)`` signs making each column's largest-magnitude entry positive.

    One variadic reduction over the rows, no gather: it keeps, for each column,
    the entry that is largest in magnitude (the first index on ties; a NaN ranks
    above every number, so a column holding one keeps ``+1``) together with its
    value. A column sharded along its rows is therefore reduced where it lies
    (partial results, then an all-reduce of ``k``-sized triples). An all-zero
    column keeps ``+1``: the sign never multiplies by zero.

    The signs are piecewise constant, so ``x`` enters under
    :func:`jax.lax.stop_gradient`: JAX has no JVP rule for a variadic
    ``reduce``, and a refresh traced under differentiation (the fused update's
    backward scan, ``fused_layers``'s leaf-wise check) must not need one.
    """
    x = jax.lax.stop_gradient(x)
    axis = x.ndim - 2
    index = jax.lax.broadcasted_iota(jnp.int32, x.shape, axis)
    spec = sharding.explicit_spec(x)
    if spec is not None:  # the iota laid out like x (elementwise partners)
        index = sharding.reshard(index, spec, x)

    def first_peak(p: tuple, q: tuple) -> tuple:
        (pa, pv, pi), (qa, qv, qi) = p, q
        pn, qn = jnp.isnan(pv), jnp.isnan(qv)
        earlier = qi < pi
        larger = (qa > pa) | ((qa == pa) & earlier)
        take = (qn & ~pn) | (qn & pn & earlier) | (~qn & ~pn & larger)
        return tuple(jnp.where(take, b, a) for a, b in zip(p, q, strict=True))

    init = (
        jnp.array(-1, x.dtype),  # below every magnitude: the first entry always wins
        jnp.array(0, x.dtype),
        jnp.array(jnp.iinfo(jnp.int32).max, jnp.int32),
    )
    _, value, _ = jax.lax.reduce((jnp.abs(x), x, index), init, first_peak, (axis,))
    return jnp.where(value < 0, -1, 1).astype(x.dtype)[..., None, :]


def canonicalize_signs(u: jax.Array, vh: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
    """Flips singular-vector pairs so each column of ``u`` has a positive peak.

    Args:
      u: ``(..., m, k)`` left singular vectors (columns).
      vh: ``(..., k, n)`` right singular vectors (rows), or ``None``.

    Returns:
      ``(u, vh)`` with, for every j, ``u[..., argmax_i |u[i, j]|, j] >= 0``
      (first index on ties) and ``vh[..., j, :]`` flipped together with it.
    """
    sign = _peak_signs(u)
    if vh is None:
        return u * sign, None
    return u * sign, vh * jnp.swapaxes(sign, -1, -2).astype(vh.dtype)


@full_precision
def householder_qr(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Householder QR ``y = QR`` with ``diag(R) >= 0``, where ``y``'s rows lie.

    ``y`` is ``(..., m, k)``. Off Explicit meshes one LAPACK QR; with ``y``'s rows
    sharded, the TSQR of :func:`_householder_rows` (``k``-sized collectives, ``Q``
    laid out as ``y``, ``R`` replicated). ``Q`` is orthonormal whatever the rank
    of ``y``; where ``y`` is rank-deficient, ``R``'s diagonal holds the distances
    of its columns from the span of the previous ones (as any QR's does).
    """
    qt, r = _householder_rows(_swap(y))
    return _swap(qt), r


def positive_qr(y: jax.Array) -> jax.Array:
    """Orthonormal ``Q`` of ``y = QR`` with ``diag(R) >= 0`` (:func:`householder_qr`)."""
    return householder_qr(y)[0]


def _householder_qr(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    q, r = jnp.linalg.qr(y)
    diag = jnp.diagonal(r, axis1=-2, axis2=-1)
    sign = jnp.where(diag < 0, -1, 1).astype(q.dtype)
    return q * sign[..., None, :], r * sign[..., :, None]


def _rows_times(x: jax.Array, mat: jax.Array) -> jax.Array:
    """``x @ mat`` for a thin ``x`` (``K`` rows): the product that may contract a sharded axis.

    Off Explicit meshes a plain product. On one, ``mat``'s rows may be sharded
    (so is ``x``'s last axis, laid out alike): each device multiplies its blocks
    and the ``K``-row partial results are summed (an all-reduce of ``K ×``
    ``mat``'s local columns); the result keeps ``mat``'s column sharding and
    batch axes. This is the only place the range finder communicates, apart
    from the Householder fallback.
    """
    spec = sharding.explicit_spec(mat)
    out = None if spec is None else spec[:-2] + (None, spec[-1])
    return sharding.matmul(x, mat, out, mat)


def _batch_local(fn: Callable[..., Any], x: jax.Array) -> Any:
    """``fn(x)`` for a small ``(batch..., k, k)`` ``x`` sharded at most on batch axes.

    ``jnp.linalg.cholesky`` and triangular solves have no sharding rule for
    Explicit batch axes; each device then runs ``fn`` on its batch block
    (outputs batch-leading, sharded like ``x``'s batch axes).
    """
    spec = sharding.explicit_spec(x)
    if spec is None or all(s is None for s in spec):
        return fn(x)
    nb = x.ndim - 2
    shapes = jax.eval_shape(fn, jax.ShapeDtypeStruct(x.shape, x.dtype))
    outs = [spec[:nb] + (None,) * (o.ndim - nb) for o in shapes]
    return sharding.shard_local(fn, [x], [spec], outs)


def _householder_rows(yt: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Householder QR of ``Y`` given as rows: ``(Qᵀ, R)`` from ``Yᵀ``, ``diag(R) >= 0``.

    Off Explicit meshes one ``jnp.linalg.qr``. When ``Y``'s rows are sharded
    over ``p`` blocks (``Yᵀ``'s last axis), a TSQR tree of height one: each
    device factors its own rows ``Y_i = Q_i R_i`` (LAPACK, locally), the
    ``p`` small ``R_i`` are stacked (a sum of ``(p·c) × K`` zero-padded blocks,
    ``c = min(K, rows per block)``: sketch-sized), the stack is factored
    ``[R_1; …; R_p] = S R`` on every device, and ``Q_i S_i`` are the rows of
    ``Q``. Householder QR on each block keeps ``Q`` orthonormal whatever the
    rank of ``Y``. With ``diag(R) >= 0`` a full-rank ``Y`` has one QR, so the
    tree gives the single-device factors up to rounding; where ``Y`` is
    rank-deficient only the columns beyond its rank (an arbitrary orthonormal
    completion, ``R``'s diagonal zero there) may differ.
    """
    spec = sharding.explicit_spec(yt)
    if spec is None:
        q, r = _householder_qr(_swap(yt))
        return _swap(q), r
    batch, rows = spec[:-2], spec[-1]
    blocks = sharding.axis_size(rows, yt)
    axes = sharding.axis_names(rows)
    k, local_rows = yt.shape[-2], yt.shape[-1] // blocks
    c = min(k, local_rows)

    def local(y: jax.Array) -> tuple[jax.Array, jax.Array]:  # y: (batch..., rows/p, K)
        q, r = _householder_qr(y)
        if blocks == 1:
            return q, r
        i = jax.lax.axis_index(axes)
        stack = jnp.zeros(y.shape[:-2] + (blocks * c, k), y.dtype)
        stack = jax.lax.psum(jax.lax.dynamic_update_slice_in_dim(stack, r, i * c, axis=-2), axes)
        s, r = _householder_qr(stack)
        return q @ jax.lax.dynamic_slice_in_dim(s, i * c, c, axis=-2), r

    y_spec = batch + (rows, None)
    q, r = sharding.shard_local(local, [_swap(yt)], [y_spec], [y_spec, batch + (None, None)])
    return _swap(q), r


def _cholesky_rows(yt: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One CholeskyQR pass on rows: ``L = chol(Yᵀ Y)`` and ``L⁻¹``.

    ``yt`` is ``Yᵀ`` (``..., k, m``); ``Qᵀ = L⁻¹ Yᵀ`` has orthonormal rows (up to
    ``ε κ(Y)²``) and ``Y = Q Lᵀ``. Returns ``(L⁻¹, L, YᵀY)``. ``L⁻¹`` is formed
    explicitly: applying it is then one matrix product, far cheaper on CPU than
    a triangular solve with ``m`` right-hand sides. On a mesh the Gram matrix is
    the one ``k × k`` all-reduce (:func:`_rows_times`) and the rest is local.
    """
    gram = _rows_times(yt, _swap(yt))

    def factor(gram: jax.Array) -> tuple[jax.Array, jax.Array]:
        lower = jnp.linalg.cholesky(gram)
        eye = jnp.broadcast_to(jnp.eye(gram.shape[-1], dtype=gram.dtype), lower.shape)
        inverse = jax.lax.linalg.triangular_solve(lower, eye, left_side=True, lower=True)
        return inverse, lower

    inverse, lower = _batch_local(factor, gram)
    return inverse, lower, gram


def _identity_like(x: jax.Array) -> jax.Array:
    """Identity matrices of ``x``'s shape, laid out like ``x`` on an Explicit mesh."""
    eye = jnp.broadcast_to(jnp.eye(x.shape[-1], dtype=x.dtype), x.shape)
    return sharding.reshard(eye, sharding.explicit_spec(x), x)


# CholeskyQR2 is accepted when the first pass's Q₁ has ‖Q₁ᵀQ₁ − I‖_F ≤ this: then
# κ(Q₁)² ≤ 3 and the second pass is orthonormal to working precision.
_FIRST_PASS_TOL = 0.5


def _orthonormal_rows_deferred(yt: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`qr_factors` of ``Y = (yt)ᵀ`` with the last product left to the caller.

    Returns ``(Wᵀ, T, R)`` with ``Qᵀ = T Wᵀ`` (orthonormal rows) and ``Y = Q R``:
    ``Wᵀ = Q₁ᵀ`` and ``T = L₂⁻¹`` from CholeskyQR2's two passes, or ``Wᵀ = Qᵀ``
    and ``T = I`` from the Householder fallback. ``T`` is well conditioned
    (``κ(T)² ≤ 3`` when the fast path is taken), so a caller that only needs
    ``Qᵀ X`` for a thin ``X``, or ``Q`` times a few columns, may apply ``T`` to
    the ``k × k`` side and skip the ``k × k × m`` product that forms ``Qᵀ``.
    The range finder keeps its thin matrices as ``k × m`` rows: on CPU every
    product with the gradient is then a fast layout (a ``k``-row operand times
    ``G`` or ``Gᵀ``) instead of ``Gᵀ X``, which ran at half the speed.

    With ``yt``'s last axis sharded (Explicit mesh) the factors are computed
    where the rows lie: two ``k × k`` all-reduces (the Gram matrices), or the
    TSQR of :func:`_householder_rows`; ``Wᵀ`` keeps ``yt``'s layout and ``T``,
    ``R`` are replicated (batch axes aside).
    """
    k = yt.shape[-2]
    yt, _ = finite_or_zero(yt)  # a non-finite y gets the QR of zero (no LAPACK on NaN)
    inverse1, lower1, _ = _cholesky_rows(yt)
    q1t = inverse1 @ yt
    inverse2, lower2, gram1 = _cholesky_rows(q1t)
    departure = jnp.sqrt(jnp.sum(jnp.square(gram1 - jnp.eye(k, dtype=yt.dtype))))
    ok = (departure <= _FIRST_PASS_TOL) & jnp.all(jnp.isfinite(inverse2))

    def householder() -> tuple[jax.Array, jax.Array, jax.Array]:
        qt, r = _householder_rows(yt)
        return qt, _identity_like(r), r

    return jax.lax.cond(ok, lambda: (q1t, inverse2, _swap(lower2) @ _swap(lower1)), householder)


def _orthonormal_rows(yt: jax.Array) -> tuple[jax.Array, jax.Array]:
    """:func:`qr_factors` of ``Y`` given and returned transposed: ``(Qᵀ, R)`` from ``Yᵀ``."""
    wt, transform, r = _orthonormal_rows_deferred(yt)
    return transform @ wt, r


@full_precision
def qr_factors(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Thin QR of a tall ``y`` (``..., m, k`` with ``m >= k``) with ``diag(R) >= 0``.

    Fast path: CholeskyQR2 (two Cholesky passes; only matrix products, a
    ``k × k`` Cholesky and a triangular solve). It is accepted when the second
    pass starts from a well-conditioned matrix: ``‖Q₁ᵀQ₁ − I‖_F ≤ 1/2`` for the
    first pass's ``Q₁`` (``κ(Q₁)² ≤ 3``; ``Q₁ᵀQ₁`` is the second pass's Gram
    matrix, so the test costs nothing), and every factor is finite. CholeskyQR2
    from such a start is orthonormal to working precision (Yamamoto et al.,
    2015); the test rejects ``y`` with ``κ(y) ≳ ε^{-1/2}`` (about 3·10³ in
    float32), where the first Cholesky loses the small directions or fails.
    Otherwise (``y`` ill-conditioned or rank-deficient, e.g. a gradient of rank
    below ``k``) Householder QR, whose ``Q`` is orthonormal whatever ``y``. For
    full-rank ``y`` both give the same factors up to rounding (the QR with a
    positive diagonal is unique).

    Args:
      y: ``(..., m, k)`` matrix, ``m >= k``.

    Returns:
      ``(q, r)`` of shapes ``(..., m, k)`` and ``(..., k, k)``.
    """
    qt, r = _orthonormal_rows(_swap(y))
    return _swap(qt), r


@full_precision
def svd_factors_checked(g: jax.Array, rank: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`svd_factors` and whether ``g`` was usable (finite and not all zero).

    The flag (batch-shaped booleans) comes from the finiteness scan that guards
    LAPACK and from the largest singular value (``σ₁ > 0`` iff ``g ≠ 0``); the
    factors of an unusable matrix are those of a zero matrix (finite).
    """
    g = g.astype(working_dtype(g.dtype))
    g, finite = finite_or_zero(g)
    u, s, vh = jnp.linalg.svd(g, full_matrices=False)
    u, vh = canonicalize_signs(u[..., :rank], vh[..., :rank, :])
    return u, vh, finite & (s[..., 0] > 0)


def svd_factors(g: jax.Array, rank: int) -> tuple[jax.Array, jax.Array]:
    """Top-``rank`` canonical singular vectors of ``g`` by a thin SVD.

    Args:
      g: ``(..., m, n)`` matrix (any float dtype).
      rank: number of singular pairs to keep, ``1 <= rank <= min(m, n)``.

    Returns:
      ``(u, vh)`` of shapes ``(..., m, rank)`` and ``(..., rank, n)`` in the
      decomposition dtype (at least float32, ``numerics.working_dtype``). A matrix with a
      NaN or an infinity gives NaN factors: LAPACK's SVD is never called on it
      (``gesdd`` loops forever on some wide matrices holding an infinity).
      (Inside the library, :func:`svd_projector` reports such matrices with a
      flag instead.)
    """
    u, vh, _ = svd_factors_checked(g, rank)
    finite = jnp.all(jnp.isfinite(g), axis=(-2, -1))
    return _nan_where_not(finite, u), _nan_where_not(finite, vh)


def finite_or_zero(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``x`` with every matrix holding a NaN/infinity zeroed, and the finite mask.

    LAPACK routines may not return on non-finite input (``gesdd`` loops forever
    on some wide matrices with an infinity), so none is ever given one.
    """
    finite = jnp.all(jnp.isfinite(x), axis=(-2, -1))
    return jnp.where(finite[..., None, None], x, 0), finite


def _nan_where_not(ok: jax.Array, x: jax.Array) -> jax.Array:
    return jnp.where(ok[..., None, None], x, jnp.nan)


def _swap(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, -1, -2)


def _gaussian_rows(key: jax.Array, width: int, mat: jax.Array) -> jax.Array:
    """Gaussian ``Ωᵀ`` of ``width`` rows to multiply ``mat`` with (``Ωᵀ mat``).

    On an Explicit mesh ``Ωᵀ`` is drawn laid out like ``mat``'s rows (and batch
    axes): with JAX's partitionable threefry (the default) every device draws
    only its block and the values are those of the single-device draw.
    """
    shape = mat.shape[:-2] + (width, mat.shape[-2])
    spec = sharding.explicit_spec(mat)
    if spec is None:
        return jax.random.normal(key, shape, mat.dtype)
    out = sharding._named(mat, spec[:-2] + (None, spec[-2]))
    return jax.random.normal(key, shape, mat.dtype, out_sharding=out)


def _range_rows(
    g: jax.Array,
    side: str,
    width: int,
    key: jax.Array,
    power_iterations: int,
) -> tuple[jax.Array, jax.Array, Callable[[jax.Array], jax.Array], jax.Array]:
    """Range finder on one side of ``g``, every thin matrix kept as ``K`` rows.

    With ``H = G`` (``side='left'``) or ``H = Gᵀ`` (``'right'``): ``Yᵀ = Ωᵀ Hᵀ``
    for a Gaussian ``Ωᵀ`` of ``K = width`` rows, ``power_iterations`` rounds of
    re-orthonormalised subspace iteration (``Qᵀ = orth(Yᵀ)``, ``Zᵀ = orth(Qᵀ H)``,
    ``Yᵀ ← Zᵀ Hᵀ``, with ``orth`` the row QR), then the orthonormal rows ``Qᵀ``
    spanning the sketch, returned deferred as
    ``Qᵀ = T Wᵀ`` (see :func:`_orthonormal_rows_deferred`). Products with ``G``
    are only ever ``X G`` or ``X Gᵀ`` for a ``K``-row ``X``: ``G`` is never
    transposed in memory, and no product contracts over ``G``'s rows into a
    tall output (the slow ``Gᵀ X`` layout on CPU).

    Also returns whether ``G`` is usable (batch-shaped booleans): the sketch is
    finite and not zero. A NaN or infinity in ``G`` makes the sketch
    non-finite and a nonzero ``G`` has ``Ωᵀ Hᵀ ≠ 0`` (both with probability 1
    over the Gaussian ``Ω``), so the thin sketch answers what a scan of ``G``
    would, for ``1/K`` of the memory traffic.

    Returns:
      ``(Wᵀ, T, rows_times_h, usable)``: ``(..., K, a)`` and ``(..., K, K)`` with
      ``a`` the sketched side's dimension, and ``X ↦ X H`` for ``K``-row ``X``.
    """
    gt = _swap(g)  # a transposed operand, not a copy: XLA picks the dot's layout
    h, h_t = (g, gt) if side == "left" else (gt, g)

    def h_rows(xt: jax.Array) -> jax.Array:  # (H X)ᵀ = Xᵀ Hᵀ
        return _rows_times(xt, h_t)

    def ht_rows(qt: jax.Array) -> jax.Array:  # (Hᵀ Q)ᵀ = Qᵀ H
        return _rows_times(qt, h)

    omega_t = _gaussian_rows(key, width, h_t)
    yt = h_rows(omega_t)
    usable = jnp.all(jnp.isfinite(yt), axis=(-2, -1)) & jnp.any(yt != 0, axis=(-2, -1))
    for _ in range(power_iterations):
        zt = _orthonormal_rows(ht_rows(_orthonormal_rows(yt)[0]))[0]
        yt = h_rows(zt)
    wt, transform, _ = _orthonormal_rows_deferred(yt)
    return wt, transform, ht_rows, usable


@full_precision
def randomized_factors_checked(
    g: jax.Array,
    rank: int,
    key: jax.Array,
    *,
    oversampling: int = 10,
    power_iterations: int = 1,
    sides: str = "both",
) -> tuple[jax.Array | None, jax.Array | None, jax.Array]:
    """:func:`randomized_factors` and whether ``g`` was usable (finite, nonzero).

    The flag (batch-shaped booleans) is read from the sketch ``Ωᵀ Gᵀ``, not from
    a scan of ``G``: see :func:`_range_rows`.
    """
    if sides not in ("both", "left", "right"):
        raise ValueError(f"`sides` must be one of 'both', 'left', 'right'; got {sides!r}.")
    g = g.astype(working_dtype(g.dtype))
    m, n = g.shape[-2:]
    width = min(rank + oversampling, m, n)
    if sides == "both":  # sketch the smaller side: the QR runs on it
        side = "left" if m <= n else "right"
    else:
        side = sides
    wt, transform, rows_times_h, usable = _range_rows(g, side, width, key, power_iterations)
    if sides == "both":
        qt = transform @ wt
        b = rows_times_h(qt)  # B = Qᵀ H, (..., K, b)
        # svd(B) through the row QR of B = R_bᵀ Q_bᵀ: only the K×K R_bᵀ needs an
        # SVD (R_bᵀ = U_r S V_rᵀ gives B = U_r S (Q_b V_r)ᵀ).
        qbt, rb = _orthonormal_rows(b)  # (..., K, b), (..., K, K)
        ur, _, vrh = jnp.linalg.svd(finite_or_zero(_swap(rb))[0])
        sketched = _swap(qt) @ ur[..., :rank]  # (..., a, rank)
        other = vrh[..., :rank, :] @ qbt  # (..., rank, b)
        if side == "left":
            u, vh = canonicalize_signs(sketched, other)
        else:
            u, vh = canonicalize_signs(_swap(other), _swap(sketched))
        return u, vh, usable
    # One side: eigh of the K×K Gram B Bᵀ = Ũ S² Ũᵀ with B = Qᵀ H = T (Wᵀ H); the
    # vectors are Q Ũ_r = W (Tᵀ Ũ_r) and Ũ_rᵀ B = S_r V_rᵀ holds the other side's
    # vectors scaled by σ (their signs fix the convention when the right side is
    # asked for). An eigh of a K×K matrix replaces the SVD of a K×b one; squaring
    # B costs accuracy only in directions with σ ≲ √ε σ₁, and the basis stays
    # orthonormal whatever the spectrum. Qᵀ itself is never formed.
    bw = rows_times_h(wt)  # Wᵀ H, (..., K, b)
    gram = transform @ _rows_times(bw, _swap(bw)) @ _swap(transform)
    _, vecs = jnp.linalg.eigh(finite_or_zero(gram)[0])
    top = vecs[..., ::-1][..., :rank]  # eigh is ascending
    vectors = _swap(wt) @ (_swap(transform) @ top)  # (..., a, rank)
    if side == "left":
        return canonicalize_signs(vectors, None)[0], None, usable
    other = (_swap(top) @ transform) @ bw  # (..., rank, m): σ_j u_jᵀ
    return None, _swap(vectors) * _swap(_peak_signs(_swap(other))), usable


def randomized_factors(
    g: jax.Array,
    rank: int,
    key: jax.Array,
    *,
    oversampling: int = 10,
    power_iterations: int = 1,
    sides: str = "both",
) -> tuple[jax.Array | None, jax.Array | None]:
    """Top-``rank`` canonical singular vectors of ``g`` by a randomized range finder.

    Halko, Martinsson and Tropp's range finder: with ``K = rank + oversampling``
    columns (capped at ``min(m, n)``), a Gaussian test matrix ``Ω``, ``Y = G Ω``,
    ``power_iterations`` rounds of ``Y ← G (Gᵀ Y)`` with QR re-orthonormalisation,
    ``Q = qr(Y)``, ``B = Qᵀ G`` and the top-``rank`` singular vectors of ``B``
    (``U ≈ Q Ũ_r``, ``Vᵀ ≈ Ṽᵀ_r``).

    * ``sides='both'``: the sketch is taken from the smaller side of ``g`` (the
      transpose is sketched when ``m > n``) and ``svd(B)`` through the QR of
      ``Bᵀ`` and the SVD of its ``K × K`` factor.
    * ``sides='left'`` / ``'right'`` (a one-sided projection needs one basis):
      the side asked for is sketched, whichever is larger, and ``B``'s singular
      vectors come from ``eigh(B Bᵀ)``, a ``K × K`` problem. The other factor is
      not formed (returned as ``None``); its signs still fix the convention.

    Cost: ``2 + 2·power_iterations`` products with ``G`` (``m·n·K`` each); the
    rest is ``K``-sized. Every QR is :func:`qr_factors` (CholeskyQR2, Householder
    when the sketch is ill-conditioned or rank-deficient). All matrix products
    run at ``Precision.HIGHEST`` whatever ``jax_default_matmul_precision`` says
    (reduced-precision passes would break the orthonormality of the basis on
    GPU/TPU).

    Args:
      g: ``(..., m, n)`` matrix.
      rank: number of singular pairs to keep.
      key: PRNG key for the Gaussian test matrix.
      oversampling: extra sketch columns (``>= 0``).
      power_iterations: subspace iterations (``>= 0``).
      sides: ``'both'``, ``'left'`` or ``'right'``: the factors to compute.

    Returns:
      ``(u, vh)`` of shapes ``(..., m, rank)`` and ``(..., rank, n)``, canonical
      as :func:`canonicalize_signs` says; ``None`` for a side not computed. A
      matrix with a NaN or an infinity gives NaN factors (no LAPACK routine
      sees a non-finite input).

    Raises:
      ValueError: if ``sides`` is not one of the three names.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import lowrank_optax as lowrank
      >>> g = jnp.outer(jnp.arange(1.0, 7.0), jnp.ones(4))  # rank 1
      >>> u, vh = lowrank.randomized_factors(g, 1, jax.random.PRNGKey(0))
      >>> print(u.shape, vh.shape, bool(jnp.allclose(u @ (u.T @ g), g, atol=1e-5)))
      (6, 1) (1, 4) True
      >>> u, vh = lowrank.randomized_factors(g, 1, jax.random.PRNGKey(0), sides="left")
      >>> vh is None
      True

    References:
      Halko, Martinsson and Tropp, `Finding structure with randomness
      <https://arxiv.org/abs/0909.4061>`_, SIAM Review 2011.
    """
    u, vh, _ = randomized_factors_checked(
        g, rank, key, oversampling=oversampling, power_iterations=power_iterations, sides=sides
    )
    finite = jnp.all(jnp.isfinite(g), axis=(-2, -1))
    u = None if u is None else _nan_where_not(finite, u)
    vh = None if vh is None else _nan_where_not(finite, vh)
    return u, vh
