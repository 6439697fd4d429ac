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
stays float64). All functions accept leading batch axes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def decomposition_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """The dtype a decomposition of ``dtype`` data runs in (at least float32)."""
    return jnp.promote_types(dtype, jnp.float32)


def canonicalize_signs(u: jax.Array, vh: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Flips singular-vector pairs so each column of ``u`` has a positive peak.

    Args:
      u: ``(..., m, k)`` left singular vectors (columns).
      vh: ``(..., k, n)`` right singular vectors (rows).

    Returns:
      ``(u, vh)`` with, for every j, ``u[..., argmax_i |u[i, j]|, j] >= 0``
      (first index on ties) and ``vh[..., j, :]`` flipped together with it.
    """
    peak = jnp.argmax(jnp.abs(u), axis=-2, keepdims=True)  # (..., 1, k)
    peak_value = jnp.take_along_axis(u, peak, axis=-2)  # (..., 1, k)
    # Never multiply by zero: an all-zero column keeps sign +1.
    sign = jnp.where(peak_value < 0, -1, 1).astype(u.dtype)
    return u * sign, vh * jnp.swapaxes(sign, -1, -2).astype(vh.dtype)


def positive_qr(y: jax.Array) -> jax.Array:
    """Orthonormal ``Q`` of ``y = QR`` with the convention ``diag(R) >= 0`` (Householder)."""
    return _householder_qr(y)[0]


def _householder_qr(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    q, r = jnp.linalg.qr(y)
    diag = jnp.diagonal(r, axis1=-2, axis2=-1)
    sign = jnp.where(diag < 0, -1, 1).astype(q.dtype)
    return q * sign[..., None, :], r * sign[..., :, None]


def _cholesky_qr(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One CholeskyQR pass: ``R = chol(YᵀY)ᵀ``, ``Q = Y R⁻¹`` (``diag(R) > 0``)."""
    gram = jnp.swapaxes(y, -1, -2) @ y
    lower = jnp.linalg.cholesky(gram)
    # Q = Y L⁻ᵀ through the explicit k×k inverse: one matrix product, far cheaper on
    # CPU than a triangular solve with m right-hand sides.
    eye = jnp.broadcast_to(jnp.eye(y.shape[-1], dtype=y.dtype), lower.shape)
    inverse = jax.lax.linalg.triangular_solve(lower, eye, left_side=True, lower=True)
    return y @ jnp.swapaxes(inverse, -1, -2), jnp.swapaxes(lower, -1, -2)


def qr_factors(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Thin QR of a tall ``y`` (``..., m, k`` with ``m >= k``) with ``diag(R) >= 0``.

    Fast path: CholeskyQR2 (two Cholesky passes; only matrix products, a
    ``k × k`` Cholesky and a triangular solve), accepted when its ``Q`` is
    orthonormal to ``100·k·ε`` and finite. Otherwise (``y`` ill-conditioned or
    rank-deficient, e.g. a gradient of rank below ``k``) Householder QR, whose
    ``Q`` is orthonormal whatever ``y``. For full-rank ``y`` both give the same
    factors up to rounding (the QR with a positive diagonal is unique).

    Args:
      y: ``(..., m, k)`` matrix, ``m >= k``.

    Returns:
      ``(q, r)`` of shapes ``(..., m, k)`` and ``(..., k, k)``.
    """
    k = y.shape[-1]
    q1, r1 = _cholesky_qr(y)
    q2, r2 = _cholesky_qr(q1)
    eye = jnp.eye(k, dtype=y.dtype)
    error = jnp.max(jnp.abs(jnp.swapaxes(q2, -1, -2) @ q2 - eye))
    tol = 100 * k * jnp.finfo(y.dtype).eps
    ok = jnp.isfinite(error) & (error <= tol)
    return jax.lax.cond(
        ok,
        lambda: (q2, r2 @ r1),
        lambda: _householder_qr(y),
    )


def svd_factors(g: jax.Array, rank: int) -> tuple[jax.Array, jax.Array]:
    """Top-``rank`` canonical singular vectors of ``g`` by a thin SVD.

    Args:
      g: ``(..., m, n)`` matrix (any float dtype).
      rank: number of singular pairs to keep, ``1 <= rank <= min(m, n)``.

    Returns:
      ``(u, vh)`` of shapes ``(..., m, rank)`` and ``(..., rank, n)`` in the
      decomposition dtype (see :func:`decomposition_dtype`).
    """
    g = g.astype(decomposition_dtype(g.dtype))
    u, _, vh = jnp.linalg.svd(g, full_matrices=False)
    u, vh = u[..., :rank], vh[..., :rank, :]
    return canonicalize_signs(u, vh)


def randomized_factors(
    g: jax.Array,
    rank: int,
    key: jax.Array,
    *,
    oversampling: int = 10,
    power_iterations: int = 1,
) -> tuple[jax.Array, jax.Array]:
    """Top-``rank`` canonical singular vectors of ``g`` by a randomized range finder.

    Halko, Martinsson and Tropp's range finder: with ``K = rank + oversampling``
    columns (capped at ``min(m, n)``), a Gaussian test matrix ``Ω``, ``Y = G Ω``,
    ``power_iterations`` rounds of ``Y ← G (Gᵀ Y)`` with QR re-orthonormalisation,
    ``Q = qr(Y)``, ``B = Qᵀ G`` and ``svd(B)``. The sketch is taken from the
    smaller side of ``g`` (the transpose is sketched when ``m > n``).

    Cost: ``2 + 2·power_iterations`` products with ``G`` (``m·n·K`` each); the
    rest is ``K``-sized. Every QR is :func:`qr_factors` (CholeskyQR2, Householder
    when the sketch is ill-conditioned or rank-deficient), and ``svd(B)`` is taken
    through the QR of ``Bᵀ`` and the SVD of its ``K × K`` factor.

    Args:
      g: ``(..., m, n)`` matrix.
      rank: number of singular pairs to keep.
      key: PRNG key for the Gaussian test matrix.
      oversampling: extra sketch columns (``>= 0``).
      power_iterations: subspace iterations (``>= 0``).

    Returns:
      ``(u, vh)`` of shapes ``(..., m, rank)`` and ``(..., rank, n)``.
    """
    g = g.astype(decomposition_dtype(g.dtype))
    m, n = g.shape[-2:]
    if m > n:  # sketch the column space of the transpose: QR on the smaller side
        v, uh = randomized_factors(
            jnp.swapaxes(g, -1, -2),
            rank,
            key,
            oversampling=oversampling,
            power_iterations=power_iterations,
        )
        u, vh = jnp.swapaxes(uh, -1, -2), jnp.swapaxes(v, -1, -2)
        return canonicalize_signs(u, vh)
    width = min(rank + oversampling, m, n)
    omega = jax.random.normal(key, g.shape[:-2] + (n, width), g.dtype)
    q = qr_factors(g @ omega)[0]
    gt = jnp.swapaxes(g, -1, -2)
    for _ in range(power_iterations):
        z = qr_factors(gt @ q)[0]
        q = qr_factors(g @ z)[0]
    b = jnp.swapaxes(q, -1, -2) @ g  # (..., K, n)
    # svd(B) through the QR of Bᵀ = Q_b R_b: B = R_bᵀ Q_bᵀ and only the K×K R_bᵀ
    # needs an SVD (R_bᵀ = U_r S V_rᵀ gives B = U_r S (Q_b V_r)ᵀ).
    qb, rb = qr_factors(jnp.swapaxes(b, -1, -2))  # (..., n, K), (..., K, K)
    ur, _, vrh = jnp.linalg.svd(jnp.swapaxes(rb, -1, -2))
    u = q @ ur[..., :rank]
    vh = vrh[..., :rank, :] @ jnp.swapaxes(qb, -1, -2)
    return canonicalize_signs(u, vh)
