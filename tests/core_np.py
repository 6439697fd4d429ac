"""Small float64 numpy formulas for the subspace-core tests (independent of the library).

Everything here is written from the spec (``galore.md`` §2), not from the code
under test: the sign rule of §2.2, the projection table of §2.1 and the two Adam
eps conventions of §2.4.
"""

from __future__ import annotations

import numpy as np

# proj_type -> side for a tall (m >= n) and a wide (m < n) matrix (galore.md §2.1).
SIDES = {
    "std": ("right", "left"),
    "reverse_std": ("left", "right"),
    "right": ("right", "right"),
    "left": ("left", "left"),
    "full": ("full", "full"),
    "symmetric": ("full", "full"),
    "asymmetric": ("right", "left"),
}


def side_of(proj_type: str, m: int, n: int) -> str:
    return SIDES[proj_type][0 if m >= n else 1]


def canonical_signs(u: np.ndarray, vh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column j of ``u``: entry of largest magnitude (first on ties) made >= 0; row j of vh too."""
    u, vh = np.array(u, np.float64), np.array(vh, np.float64)
    for j in range(u.shape[1]):
        i = int(np.argmax(np.abs(u[:, j])))
        if u[i, j] < 0:
            u[:, j] *= -1
            vh[j, :] *= -1
    return u, vh


def svd_basis(g: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-r canonical singular vectors ``(U[:, :r], Vh[:r])`` of a 2-D ``g``."""
    u, _, vh = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
    return canonical_signs(u[:, :r], vh[:r])


def project(g: np.ndarray, side: str, u: np.ndarray, vh: np.ndarray) -> np.ndarray:
    g = np.asarray(g, np.float64)
    if side == "left":
        return u.T @ g
    if side == "right":
        return g @ vh.T
    return u.T @ g @ vh.T


def back(x: np.ndarray, side: str, u: np.ndarray, vh: np.ndarray) -> np.ndarray:
    if side == "left":
        return u @ x
    if side == "right":
        return x @ vh
    return u @ x @ vh


class Adam:
    """Adam on one array; ``eps_mode`` 'optax' (optax.scale_by_adam) or 'galore' (torch AdamW)."""

    def __init__(self, b1=0.9, b2=0.999, eps=1e-8, eps_mode="optax", eps_root=0.0):
        self.b1, self.b2, self.eps, self.mode, self.eps_root = b1, b2, eps, eps_mode, eps_root
        self.m = self.v = None
        self.t = 0

    def step(self, g: np.ndarray) -> np.ndarray:
        g = np.asarray(g, np.float64)
        if self.m is None:
            self.m, self.v = np.zeros_like(g), np.zeros_like(g)
        self.t += 1
        b1, b2, t = self.b1, self.b2, self.t
        self.m = b1 * self.m + (1 - b1) * g
        self.v = b2 * self.v + (1 - b2) * g * g
        if self.mode == "optax":
            m_hat, v_hat = self.m / (1 - b1**t), self.v / (1 - b2**t)
            return m_hat / (np.sqrt(v_hat + self.eps_root) + self.eps)
        return self.m / (np.sqrt(self.v) + self.eps) * np.sqrt(1 - b2**t) / (1 - b1**t)
