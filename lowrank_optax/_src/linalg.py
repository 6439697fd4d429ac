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
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp

T = TypeVar("T")


def decomposition_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """The dtype a decomposition of ``dtype`` data runs in (at least float32)."""
    return jnp.promote_types(dtype, jnp.float32)


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
    """``(..., 1, k)`` signs making each column's largest-magnitude entry positive."""
    peak = jnp.argmax(jnp.abs(x), axis=-2, keepdims=True)  # first index on ties
    peak_value = jnp.take_along_axis(x, peak, axis=-2)
    # Never multiply by zero: an all-zero column keeps sign +1.
    return jnp.where(peak_value < 0, -1, 1).astype(x.dtype)


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
def positive_qr(y: jax.Array) -> jax.Array:
    """Orthonormal ``Q`` of ``y = QR`` with the convention ``diag(R) >= 0`` (Householder)."""
    return _householder_qr(y)[0]


def _householder_qr(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    q, r = jnp.linalg.qr(y)
    diag = jnp.diagonal(r, axis1=-2, axis2=-1)
    sign = jnp.where(diag < 0, -1, 1).astype(q.dtype)
    return q * sign[..., None, :], r * sign[..., :, None]


def _cholesky_qr(y: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One CholeskyQR pass: ``R = chol(YᵀY)ᵀ``, ``Q = Y R⁻¹`` (``diag(R) > 0``).

    Returns ``(Q, R, YᵀY)``.
    """
    gram = jnp.swapaxes(y, -1, -2) @ y
    lower = jnp.linalg.cholesky(gram)
    # Q = Y L⁻ᵀ through the explicit k×k inverse: one matrix product, far cheaper on
    # CPU than a triangular solve with m right-hand sides.
    eye = jnp.broadcast_to(jnp.eye(y.shape[-1], dtype=y.dtype), lower.shape)
    inverse = jax.lax.linalg.triangular_solve(lower, eye, left_side=True, lower=True)
    return y @ jnp.swapaxes(inverse, -1, -2), jnp.swapaxes(lower, -1, -2), gram


# CholeskyQR2 is accepted when the first pass's Q₁ has ‖Q₁ᵀQ₁ − I‖_F ≤ this: then
# κ(Q₁)² ≤ 3 and the second pass is orthonormal to working precision.
_FIRST_PASS_TOL = 0.5


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
    k = y.shape[-1]
    y, _ = finite_or_zero(y)  # a non-finite y gets the QR of zero (no LAPACK on NaN)
    q1, r1, _ = _cholesky_qr(y)
    q2, r2, gram1 = _cholesky_qr(q1)
    departure = jnp.sqrt(jnp.sum(jnp.square(gram1 - jnp.eye(k, dtype=y.dtype))))
    ok = (departure <= _FIRST_PASS_TOL) & jnp.all(jnp.isfinite(r2))
    return jax.lax.cond(
        ok,
        lambda: (q2, r2 @ r1),
        lambda: _householder_qr(y),
    )


@full_precision
def svd_factors(g: jax.Array, rank: int) -> tuple[jax.Array, jax.Array]:
    """Top-``rank`` canonical singular vectors of ``g`` by a thin SVD.

    Args:
      g: ``(..., m, n)`` matrix (any float dtype).
      rank: number of singular pairs to keep, ``1 <= rank <= min(m, n)``.

    Returns:
      ``(u, vh)`` of shapes ``(..., m, rank)`` and ``(..., rank, n)`` in the
      decomposition dtype (see :func:`decomposition_dtype`). A matrix with a
      NaN or an infinity gives NaN factors: LAPACK's SVD is never called on it
      (``gesdd`` loops forever on some wide matrices holding an infinity).
    """
    g = g.astype(decomposition_dtype(g.dtype))
    g, finite = finite_or_zero(g)
    u, _, vh = jnp.linalg.svd(g, full_matrices=False)
    u, vh = canonicalize_signs(u[..., :rank], vh[..., :rank, :])
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


def _range_basis(
    apply: Callable[[jax.Array], jax.Array],
    apply_t: Callable[[jax.Array], jax.Array],
    omega: jax.Array,
    power_iterations: int,
) -> tuple[jax.Array, jax.Array]:
    """Orthonormal ``Q`` approximating the range of the operator ``apply`` (``H·``).

    ``Y = H Ω``, then ``power_iterations`` rounds of ``Y ← H qr(Hᵀ qr(Y))``.
    Also returns whether ``H`` is usable (batch-shaped booleans): ``Y`` finite and
    not zero. A NaN or infinity in ``H`` makes its rows of ``Y`` non-finite and a
    nonzero ``H`` has ``H Ω ≠ 0`` (both with probability 1 over the Gaussian
    ``Ω``), so the thin sketch answers what a scan of ``H`` would, for ``1/K`` of
    the memory traffic (a scan of the gradients was ~15 % of a randomized refresh).
    """
    y = apply(omega)
    usable = jnp.all(jnp.isfinite(y), axis=(-2, -1)) & jnp.any(y != 0, axis=(-2, -1))
    q = qr_factors(y)[0]
    for _ in range(power_iterations):
        z = qr_factors(apply_t(q))[0]
        q = qr_factors(apply(z))[0]
    return q, usable


def _swap(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, -1, -2)


def _one_side(
    g: jax.Array,
    side: str,
    rank: int,
    key: jax.Array,
    oversampling: int,
    power_iterations: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Top-``rank`` singular vectors of ``g`` on one ``side``, and the other side's signs.

    With ``H = G`` (left) or ``H = Gᵀ`` (right): ``Q`` from the range finder on
    ``H``, ``Bᵀ = Hᵀ Q`` and the eigendecomposition of the ``K × K`` Gram matrix
    ``B Bᵀ = Ũ S² Ũᵀ``: the vectors are ``Q Ũ_r`` and ``Bᵀ Ũ_r = V_r S_r`` holds
    the other side's vectors scaled by ``σ`` (returned for their signs only).
    An ``eigh`` of a ``K × K`` matrix replaces the SVD of a ``K × n`` one;
    squaring ``B`` costs accuracy only in directions with ``σ ≲ √ε σ₁``, and
    the basis stays orthonormal whatever the spectrum. ``G`` is never
    transposed in memory: ``Gᵀ X`` is computed as ``(Xᵀ G)ᵀ`` (on CPU a
    transposed 1024×2816 operand doubled the cost of the whole finder).

    Returns:
      ``(vectors, other, usable)``: ``(..., a, rank)`` with ``a`` the side's
      dimension, ``(..., b, rank)`` the other side's ``σ``-scaled vectors, and
      the usability flag of :func:`_range_basis`.
    """
    m, n = g.shape[-2:]

    def g_times(x: jax.Array) -> jax.Array:
        return g @ x

    def gt_times(x: jax.Array) -> jax.Array:  # Gᵀx as (xᵀG)ᵀ
        return _swap(_swap(x) @ g)

    apply, apply_t, inner = (g_times, gt_times, n) if side == "left" else (gt_times, g_times, m)
    width = min(rank + oversampling, m, n)
    omega = jax.random.normal(key, g.shape[:-2] + (inner, width), g.dtype)
    q, usable = _range_basis(apply, apply_t, omega, power_iterations)
    bt = apply_t(q)  # (..., inner, K)
    _, vecs = jnp.linalg.eigh(finite_or_zero(_swap(bt) @ bt)[0])
    top = vecs[..., ::-1][..., :rank]  # eigh is ascending
    return q @ top, bt @ top, usable


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

    The flag (batch-shaped booleans) is read from the sketch ``G Ω``, not from a
    scan of ``G``: see :func:`_range_basis`.
    """
    if sides not in ("both", "left", "right"):
        raise ValueError(f"`sides` must be one of 'both', 'left', 'right'; got {sides!r}.")
    g = g.astype(decomposition_dtype(g.dtype))
    m, n = g.shape[-2:]
    if sides == "left":
        u, _, usable = _one_side(g, "left", rank, key, oversampling, power_iterations)
        return canonicalize_signs(u, None)[0], None, usable
    if sides == "right":
        v, us, usable = _one_side(g, "right", rank, key, oversampling, power_iterations)
        # The convention is set by the left vectors; us's columns are σ_j u_j.
        return None, _swap(v * _peak_signs(us)), usable
    if m > n:  # sketch the column space of the transpose: QR on the smaller side
        v, uh, usable = randomized_factors_checked(
            _swap(g), rank, key, oversampling=oversampling, power_iterations=power_iterations
        )
        u, vh = canonicalize_signs(_swap(uh), _swap(v))
        return u, vh, usable
    width = min(rank + oversampling, m, n)
    omega = jax.random.normal(key, g.shape[:-2] + (n, width), g.dtype)
    q, usable = _range_basis(
        lambda x: g @ x, lambda x: _swap(_swap(x) @ g), omega, power_iterations
    )
    b = _swap(q) @ g  # (..., K, n)
    # svd(B) through the QR of Bᵀ = Q_b R_b: B = R_bᵀ Q_bᵀ and only the K×K R_bᵀ
    # needs an SVD (R_bᵀ = U_r S V_rᵀ gives B = U_r S (Q_b V_r)ᵀ).
    qb, rb = qr_factors(_swap(b))  # (..., n, K), (..., K, K)
    ur, _, vrh = jnp.linalg.svd(finite_or_zero(_swap(rb))[0])
    u, vh = canonicalize_signs(q @ ur[..., :rank], vrh[..., :rank, :] @ _swap(qb))
    return u, vh, usable


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
