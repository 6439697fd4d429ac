"""Deterministic low-rank bases: canonical-sign SVD and a randomized range finder.

Singular vectors are only defined up to sign, and LAPACK builds (and backends)
disagree on the signs. Every basis the library computes is therefore put in a
canonical form:

* each left singular vector's largest-magnitude entry is made positive (the first
  such index on ties) and the matching right singular vector flips with it;
* a QR factorisation used inside the randomized range finder is normalised so
  that the diagonal of R is non-negative.

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
    """Orthonormal ``Q`` of ``y = QR`` with the convention ``diag(R) >= 0``."""
    q, r = jnp.linalg.qr(y)
    diag = jnp.diagonal(r, axis1=-2, axis2=-1)
    sign = jnp.where(diag < 0, -1, 1).astype(q.dtype)
    return q * sign[..., None, :]


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
    q = positive_qr(g @ omega)
    gt = jnp.swapaxes(g, -1, -2)
    for _ in range(power_iterations):
        z = positive_qr(gt @ q)
        q = positive_qr(g @ z)
    b = jnp.swapaxes(q, -1, -2) @ g  # (..., K, n)
    ub, _, vh = jnp.linalg.svd(b, full_matrices=False)
    u = q @ ub[..., :rank]
    return canonicalize_signs(u, vh[..., :rank, :])
