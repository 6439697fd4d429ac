"""Cross-check with optax.contrib.galore where the conventions coincide (galore.md §5).

optax 0.2.8's GaLore projects a tall matrix on the left and a wide one on the
right, which is the library's ``proj_type='reverse_std'``; its inner optimizer
runs on the projected gradient with moments kept across refreshes ('keep').

Signs: optax takes ``jnp.linalg.svd`` as it comes, the library canonicalises.
A sign flip S of basis columns cancels within one refresh period (R → S R, M → S M,
V unchanged, update P S S N = P N), but under 'keep' old-basis moments mix with
new-basis coordinates at the next refresh, where different sign patterns give
different trajectories. Hence two checks:

* unmodified optax, compared until the second refresh (one basis, signs cancel);
* over several refreshes with ``jnp.linalg.svd`` wrapped (for both libraries) to
  return canonical signs — the sign rule is not part of GaLore, so this keeps
  optax's algorithm intact. The library re-applies the rule, which is idempotent.
"""

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized

import lowrank_optax as lowrank

LR, RANK, GAP = 1e-2, 2, 4
_SVD = jnp.linalg.svd


def _canonical_svd(a, full_matrices=True, compute_uv=True, **kwargs):
    """jnp.linalg.svd whose left vectors have a positive largest-magnitude entry."""
    out = _SVD(a, full_matrices=full_matrices, compute_uv=compute_uv, **kwargs)
    if not compute_uv:
        return out
    u, s, vh = out
    k = s.shape[-1]
    peak = jnp.take_along_axis(
        u[..., :k], jnp.argmax(jnp.abs(u[..., :k]), axis=-2)[..., None, :], -2
    )
    sign = jnp.where(peak < 0, -1.0, 1.0).astype(u.dtype)  # (..., 1, k)
    u = u.at[..., :k].multiply(sign)
    vh = vh.at[..., :k, :].multiply(jnp.swapaxes(sign, -1, -2))
    return u, s, vh


def _problem(seed=0):
    """Least squares per matrix, so gradients (and their singular vectors) follow the params."""
    rng = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(rng.standard_normal(s).astype(np.float32))
    data = {"tall": (f(10, 8), f(10, 5)), "wide": (f(6, 4), f(6, 7))}
    params = {"tall": f(8, 5), "wide": f(4, 7), "b": f(5)}

    def loss(p):
        out = sum(jnp.sum((a @ p[k] - y) ** 2) for k, (a, y) in data.items())
        return out + jnp.sum((p["b"] - 1.0) ** 2)

    return params, loss


def _trajectory(tx, steps):
    params, loss = _problem()
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    out = []
    for _ in range(steps):
        params, state = step(params, state)
        out.append(jax.tree.map(np.asarray, params))
    return out, state


def _ours(proj_type="reverse_std"):
    return lowrank.galore(optax.adam(LR), rank=RANK, update_proj_gap=GAP, proj_type=proj_type)


def _theirs():
    return optax.contrib.galore(LR, rank=RANK, update_proj_gap=GAP)


class OptaxGaloreCrossCheckTest(parameterized.TestCase):
    def test_same_layout(self):
        params, _ = _problem()
        ours, theirs = _ours().init(params), _theirs().init(params)
        ours_adam, theirs_adam = ours.inner_state[0], theirs[0].base_optimizer_state
        for k in params:
            self.assertEqual(ours_adam.mu[k].shape, theirs_adam.mu[k].shape)
        self.assertEqual(ours.bases["['tall']"].left.shape, theirs[0].projector["tall"].shape)
        self.assertEqual(ours.bases["['wide']"].right.T.shape, theirs[0].projector["wide"].shape)

    def test_close_until_the_second_refresh_without_any_patch(self):
        ours, _ = _trajectory(_ours(), GAP)
        theirs, _ = _trajectory(_theirs(), GAP)
        for t in range(GAP):
            jax.tree.map(
                lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                ours[t],
                theirs[t],
            )

    def test_close_over_several_refreshes_with_canonical_signs(self):
        steps = 3 * GAP + 2  # refreshes at 0, T, 2T, 3T
        with mock.patch.object(jnp.linalg, "svd", _canonical_svd):
            ours, s_ours = _trajectory(_ours(), steps)
            theirs, s_theirs = _trajectory(_theirs(), steps)
        for t in range(steps):
            jax.tree.map(
                lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                ours[t],
                theirs[t],
            )
        np.testing.assert_allclose(
            np.asarray(s_ours.bases["['tall']"].left),
            np.asarray(s_theirs[0].projector["tall"]),
            atol=1e-5,
        )
        # The parameters moved well beyond the tolerance (the check is not vacuous).
        params, _ = _problem()
        self.assertGreater(np.max(np.abs(ours[-1]["tall"] - np.asarray(params["tall"]))), 0.05)

    def test_std_is_not_optax_layout_for_tall_matrices(self):
        # galore-torch 'std' projects a tall matrix on the right; optax on the left.
        with mock.patch.object(jnp.linalg, "svd", _canonical_svd):
            ours, _ = _trajectory(_ours("std"), GAP)
            theirs, _ = _trajectory(_theirs(), GAP)
        np.testing.assert_allclose(ours[-1]["b"], theirs[-1]["b"], rtol=1e-5)
        self.assertFalse(np.allclose(ours[-1]["tall"], theirs[-1]["tall"], rtol=1e-3, atol=1e-4))


if __name__ == "__main__":
    absltest.main()
