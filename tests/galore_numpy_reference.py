"""A small numpy implementation of GaLore-AdamW, written from spec ``galore.md`` sections 2.1-2.5.

It is an independent reference for the parity tests: it shares no code with ``lowrank_optax`` or
galore-torch and runs in float64 by default. It covers one projected matrix (every ``proj_type`` and
the library's aliases, ``on_refresh='keep'``, SVD projector) and unprojected leaves (plain AdamW
with the same eps placement and decoupled weight decay).

Formulas (t = 1-based step, c = 0-based count):

* basis at ``c % T == 0`` from the current gradient: thin SVD ``G = U diag(s) Vh`` with canonical
  signs (each column of U has a positive largest-magnitude entry, first index on ties; the matching
  row of Vh flips with it), keeping ``U[:, :r]`` and/or ``Vh[:r]`` (table of section 2.1);
* ``R = project(G)``; ``M ← β1 M + (1-β1) R``; ``V ← β2 V + (1-β2) R²`` (moments kept on refresh);
* ``N = M / (√V + eps) · √(1-β2ᵗ) / (1-β1ᵗ)`` (eps on the un-bias-corrected ``√V``);
* ``W ← W - lr · scale · back(N)``; then ``W ← W - lr · wd · W`` on the updated ``W``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ALIASES = {"symmetric": "full", "asymmetric": "std"}
PROJ_TYPES = ("std", "reverse_std", "right", "left", "full")

# Deliberate departures from the formula above, used only by the parity tests to show that their
# tolerances are tight enough to detect each plausible implementation mistake.
DEVIATIONS = {
    "eps_optax": "eps added to the bias-corrected sqrt(V-hat) (optax.scale_by_adam placement)",
    "decay_before_update": "weight decay applied before the Adam step (Keras port order)",
    "decay_times_scale": "weight decay multiplied by GaLore's scale",
    "no_bias_correction": "Adam without bias correction",
    "reset_on_refresh": "moments reset at every refresh (on_refresh='reset')",
    "clock_off_by_one": "refresh at count % T == T - 1 after step 0 (pytorch_optimizer's clock)",
    "sign_flip_second_refresh": "first singular pair's sign flipped at the second refresh",
    "bias_no_decay": "no weight decay on the unprojected bias",
}


def canonical_svd(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Thin SVD ``(U, Vh)`` of a matrix with the canonical sign rule of spec section 2.2."""
    u, _, vh = np.linalg.svd(g, full_matrices=False)
    peak = np.argmax(np.abs(u), axis=0)  # numpy's argmax returns the first index on ties
    sign = np.where(u[peak, np.arange(u.shape[1])] < 0, -1.0, 1.0)
    return u * sign[None, :], vh * sign[:, None]


def projection_sides(proj_type: str, shape: Sequence[int]) -> tuple[bool, bool]:
    """``(uses_left_basis, uses_right_basis)`` for a ``shape = (m, n)`` matrix (section 2.1)."""
    proj_type = ALIASES.get(proj_type, proj_type)
    m, n = shape
    if proj_type == "std":
        return (False, True) if m >= n else (True, False)
    if proj_type == "reverse_std":
        return (True, False) if m >= n else (False, True)
    if proj_type == "right":
        return False, True
    if proj_type == "left":
        return True, False
    if proj_type == "full":
        return True, True
    raise ValueError(f"unknown proj_type {proj_type!r}")


class GaLoreMatrix:
    """Projected-leaf state and step: basis ``P_L`` (m×r) and/or ``P_R`` (r×n), moments M, V."""

    def __init__(self, shape: Sequence[int], *, rank: int, update_proj_gap: int, proj_type: str):
        self.left, self.right = projection_sides(proj_type, shape)
        self.rank = min(rank, *shape)
        self.gap = update_proj_gap
        self.p_left = self.p_right = None
        self.mu = self.nu = None

    def project(self, g: np.ndarray) -> np.ndarray:
        r = g
        if self.left:
            r = self.p_left.T @ r
        if self.right:
            r = r @ self.p_right.T
        return r

    def back(self, n: np.ndarray) -> np.ndarray:
        out = n
        if self.left:
            out = self.p_left @ out
        if self.right:
            out = out @ self.p_right
        return out

    def refresh(self, g: np.ndarray) -> None:
        u, vh = canonical_svd(g)
        self.p_left = u[:, : self.rank]
        self.p_right = vh[: self.rank, :]


def adam_direction(mu, nu, r, t, b1, b2, eps, eps_mode="galore", bias_correction=True):
    """Moment update and Adam direction at 1-based step ``t``; returns ``(mu, nu, N)``.

    ``eps_mode='galore'``: ``N = M / (√V + eps) · √(1-β2ᵗ) / (1-β1ᵗ)`` (spec section 2.4);
    ``'optax'``: ``N = M̂ / (√V̂ + eps)``.
    """
    mu = b1 * mu + (1.0 - b1) * r
    nu = b2 * nu + (1.0 - b2) * r * r
    bc1 = 1.0 - b1**t if bias_correction else 1.0
    bc2 = 1.0 - b2**t if bias_correction else 1.0
    if eps_mode == "galore":
        n = mu / (np.sqrt(nu) + eps) * (np.sqrt(bc2) / bc1)
    else:
        n = (mu / bc1) / (np.sqrt(nu / bc2) + eps)
    return mu, nu, n


def galore_adamw_trajectory(
    w0: np.ndarray,
    b0: np.ndarray,
    grads_w: np.ndarray,
    grads_b: np.ndarray,
    *,
    learning_rate: float,
    b1: float,
    b2: float,
    eps: float,
    weight_decay: float,
    rank: int,
    update_proj_gap: int,
    scale: float,
    proj_type: str,
    dtype: np.dtype = np.float64,
    deviation: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Params ``(w, b)`` after every step; ``w`` is projected, the bias ``b`` gets plain AdamW.

    ``deviation`` (a key of ``DEVIATIONS``, default ``None``) deliberately changes one detail.
    """
    if deviation is not None and deviation not in DEVIATIONS:
        raise ValueError(f"unknown deviation {deviation!r}")
    eps_mode = "optax" if deviation == "eps_optax" else "galore"
    bias_correction = deviation != "no_bias_correction"
    w = np.asarray(w0, dtype)
    b = np.asarray(b0, dtype)
    proj = GaLoreMatrix(w.shape, rank=rank, update_proj_gap=update_proj_gap, proj_type=proj_type)
    mu_b = np.zeros_like(b)
    nu_b = np.zeros_like(b)
    wd_w = weight_decay * (scale if deviation == "decay_times_scale" else 1.0)
    wd_b = 0.0 if deviation == "bias_no_decay" else weight_decay
    w_traj, b_traj = [], []
    refreshes = 0
    for count, (gw, gb) in enumerate(zip(grads_w, grads_b, strict=True)):
        gw = np.asarray(gw, dtype)
        gb = np.asarray(gb, dtype)
        if deviation == "clock_off_by_one":
            refresh = count == 0 or count % update_proj_gap == update_proj_gap - 1
        else:
            refresh = count % update_proj_gap == 0
        if refresh:
            proj.refresh(gw)
            if deviation == "sign_flip_second_refresh" and refreshes == 1:
                # What a LAPACK build with other sign choices (and no canonicalisation) does.
                proj.p_left[:, 0] *= -1.0
                proj.p_right[0, :] *= -1.0
            if deviation == "reset_on_refresh":
                proj.mu = proj.nu = None
            refreshes += 1
        r = proj.project(gw)
        if proj.mu is None:
            proj.mu, proj.nu = np.zeros_like(r), np.zeros_like(r)
        step = 1 + (count % update_proj_gap if deviation == "reset_on_refresh" else count)
        proj.mu, proj.nu, n = adam_direction(
            proj.mu, proj.nu, r, step, b1, b2, eps, eps_mode, bias_correction
        )
        if deviation == "decay_before_update":
            w = w - learning_rate * wd_w * w
        w = w - learning_rate * scale * proj.back(n)
        if deviation != "decay_before_update":
            w = w - learning_rate * wd_w * w

        mu_b, nu_b, n_b = adam_direction(
            mu_b, nu_b, gb, count + 1, b1, b2, eps, eps_mode, bias_correction
        )
        if deviation == "decay_before_update":
            b = b - learning_rate * wd_b * b
        b = b - learning_rate * n_b
        if deviation != "decay_before_update":
            b = b - learning_rate * wd_b * b
        w_traj.append(w)
        b_traj.append(b)
    return np.stack(w_traj), np.stack(b_traj)
