"""Gradient accumulation in the subspace: project_lowrank(accumulation_steps=k) and
lowrank.subspace_accumulation, on their own and inside lowrank.fused_layers.

References are independent of the code under test: ``optax.MultiSteps`` around
the non-accumulating transformation (equal wherever the basis does not change
inside an update: every update but the refresh ones, whose micro-batches are
made identical here), and numpy's float64 SVD for the refresh rule.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized
from core_np import side_of, svd_basis
from test_fused import (
    LR,
    OPTIMIZERS,
    batches,
    init_model,
    layer,
    loss_fn,
    max_rel_diff,
    run_unfused,
)

import lowrank_optax as lowrank

K, GAP = 3, 2
SHAPES = {"w": (7, 5), "v": (4, 9), "b": (5,)}


def micro_batch_grads(updates, k=K, gap=GAP, seed=0):
    """Gradients per micro-batch; the micro-batches of refresh updates are identical."""
    rng = np.random.default_rng(seed)
    out = []
    for u in range(updates):
        same = u % gap == 0
        first = None
        for _ in range(k):
            g = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
            first = first if (first is not None and same) else g
            out.append(first if same else g)
    return out


def schedule(count):
    return 0.05 / (1.0 + 0.5 * count)


def galore_chain(k):
    """galore_adamw's pieces, with the projection accumulating k micro-batches."""
    return optax.chain(
        lowrank.galore(
            lowrank.scale_by_adam_in_basis(eps=1e-6, eps_mode="galore"),
            rank=2,
            update_proj_gap=GAP,
            accumulation_steps=k,
        ),
        lowrank.decay_weights_after_update(0.1, schedule),
        optax.scale_by_learning_rate(schedule),
    )


def trajectory(tx, grads_seq, params):
    state = tx.init(params)
    step = jax.jit(tx.update)
    updates = []
    for g in grads_seq:
        u, state = step(g, state, params)
        updates.append(u)
        params = optax.apply_updates(params, u)
    return params, updates, state


def zeros_params():
    rng = np.random.default_rng(9)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}


class SubspaceAccumulationTest(parameterized.TestCase):
    def test_chain_equals_multisteps(self):
        grads = micro_batch_grads(updates=5)
        p0 = zeros_params()
        ours = lowrank.subspace_accumulation(galore_chain(K))
        ref = optax.MultiSteps(
            lowrank.galore_adamw(schedule, weight_decay=0.1, rank=2, update_proj_gap=GAP), K
        ).gradient_transformation()
        p1, u1, _ = trajectory(ours, grads, p0)
        p2, u2, _ = trajectory(ref, grads, p0)
        for i, (a, b) in enumerate(zip(u1, u2, strict=True)):
            emits = (i + 1) % K == 0
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
                if emits:
                    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
                else:
                    np.testing.assert_array_equal(x, 0.0)
        self.assertLess(max_rel_diff(p1, p2), 1e-6)

    def test_wrapper_free_galore_adam_equals_multisteps(self):
        # Nothing outside the projection: no wrapper needed.
        grads = micro_batch_grads(updates=4)
        p0 = zeros_params()
        ours = lowrank.galore(
            optax.adam(schedule), rank=2, update_proj_gap=GAP, accumulation_steps=K
        )
        ref = optax.MultiSteps(
            lowrank.galore(optax.adam(schedule), rank=2, update_proj_gap=GAP), K
        ).gradient_transformation()
        p1, _, state = trajectory(ours, grads, p0)
        p2, _, _ = trajectory(ref, grads, p0)
        self.assertLess(max_rel_diff(p1, p2), 1e-6)
        # One tick of the inner Adam (and its schedule) per update; the clock counts calls.
        self.assertEqual(int(state.count), 4 * K)
        self.assertEqual(int(state.inner_state.gradient_step), 4)
        self.assertEqual(int(state.inner_state.inner_opt_state[0].count), 4)

    def test_refresh_basis_comes_from_the_first_micro_batch(self):
        rng = np.random.default_rng(5)
        grads = [
            {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
            for _ in range(K)
        ]
        tx = lowrank.subspace_accumulation(galore_chain(K))
        state = tx.init(zeros_params())
        step = jax.jit(tx.update)
        for i, g in enumerate(grads):
            _, state = step(g, state, zeros_params())
            proj = state.inner_state[0]
            for name in ("w", "v"):
                m, n = SHAPES[name]
                u, vh = svd_basis(grads[0][name], 2)
                basis = proj.bases[f"['{name}']"]
                if side_of("std", m, n) == "left":
                    np.testing.assert_allclose(basis.left, u, atol=2e-5, err_msg=f"call {i}")
                else:
                    np.testing.assert_allclose(basis.right, vh, atol=2e-5, err_msg=f"call {i}")
        # ... and not from the mean gradient of the update.
        mean = np.mean([g["w"] for g in grads], axis=0)
        _, vh_mean = svd_basis(mean, 2)
        self.assertGreater(np.max(np.abs(state.inner_state[0].bases["['w']"].right - vh_mean)), 0.1)

    def test_accumulator_is_rank_sized(self):
        state = lowrank.subspace_accumulation(galore_chain(K)).init(zeros_params())
        full = {SHAPES["w"], SHAPES["v"]}
        shapes = {tuple(x.shape) for x in jax.tree.leaves(state)}
        self.assertEmpty(shapes & full)
        acc = state.inner_state[0].inner_state.acc_grads
        self.assertEqual(acc["w"].shape, (7, 2))  # m >= n: coordinates G Pᵀ
        self.assertEqual(acc["v"].shape, (2, 9))  # m < n: coordinates Pᵀ G

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, "accumulates in the subspace"):
            lowrank.subspace_accumulation(optax.adam(1e-3)).init(zeros_params())
        with self.assertRaisesRegex(ValueError, "accumulation_steps"):
            lowrank.galore(optax.adam(1e-3), rank=2, accumulation_steps=0)
        with self.assertRaisesRegex(ValueError, "reproject"):
            lowrank.galore(
                lowrank.scale_by_adam_in_basis(),
                rank=2,
                on_refresh="reproject",
                accumulation_steps=2,
            )


def fused_data(updates, k=2, gap=2, seed=7):
    base = batches(updates * k, seed=seed)
    out = []
    for u in range(updates):
        chunk = base[u * k : (u + 1) * k]
        out += [chunk[0]] * k if u % gap == 0 else chunk
    return out


def run_fused(tx_layer, tx_rest, data, k):
    layers = lowrank.fused_layers(layer, tx_layer, accumulation_steps=k, check_leafwise=False)
    train = lowrank.fused_train_step(loss_fn, layers, tx_rest)
    params, stacked = init_model()
    state = train.init(params, stacked)
    step = jax.jit(train.step, donate_argnums=(0, 1, 2))
    params, stacked = jax.tree.map(jnp.array, (params, stacked))
    for x, y in data:
        params, stacked, state, _ = step(params, stacked, state, x, y)
    return params, stacked, state


class FusedSubspaceAccumulationTest(parameterized.TestCase):
    @parameterized.named_parameters(
        (
            "galore_adam",
            lambda: lowrank.galore(optax.adam(LR), rank=3, update_proj_gap=4, accumulation_steps=2),
            "galore_adam",
        ),
        (
            "galore_adamw_pieces",
            lambda: lowrank.subspace_accumulation(
                optax.chain(
                    lowrank.galore(
                        lowrank.scale_by_adam_in_basis(eps=1e-6, eps_mode="galore"),
                        rank=3,
                        update_proj_gap=4,
                        accumulation_steps=2,
                    ),
                    lowrank.decay_weights_after_update(0.1, LR),
                    optax.scale_by_learning_rate(LR),
                )
            ),
            "galore_adamw",
        ),
    )
    def test_fused_equals_unfused_multisteps(self, make, reference):
        data = fused_data(updates=6, k=2, gap=4)
        p_u, s_u, _ = run_unfused(OPTIMIZERS[reference][1](), optax.adam(LR), data, k=2)
        p_f, s_f, state = run_fused(make(), optax.adam(LR), data, k=2)
        self.assertLess(max_rel_diff(s_f, s_u), 1e-6)
        self.assertLess(max_rel_diff(p_f, p_u), 1e-6)
        # The block keeps no full-size accumulator: the coordinates are rank-sized.
        self.assertEqual(state.layers_state.acc_grads, ())
        block_shapes = {tuple(x.shape) for x in jax.tree.leaves(s_f) if x.ndim == 3}
        state_shapes = {tuple(x.shape) for x in jax.tree.leaves(state.layers_state)}
        self.assertEmpty(block_shapes & state_shapes)

    def test_mismatched_steps_raise(self):
        _, stacked = init_model()
        tx = lowrank.galore(optax.adam(LR), rank=3, accumulation_steps=2)
        with self.assertRaisesRegex(ValueError, "same accumulation_steps"):
            lowrank.fused_layers(layer, tx, accumulation_steps=3).init(stacked)
        with self.assertRaisesRegex(ValueError, "same accumulation_steps"):
            lowrank.fused_layers(layer, tx).init(stacked)

    def test_unwrapped_chain_raises(self):
        _, stacked = init_model()
        tx = optax.chain(
            lowrank.galore(optax.scale_by_adam(), rank=3, accumulation_steps=2),
            optax.add_decayed_weights(0.1),
            optax.scale_by_learning_rate(LR),
        )
        with self.assertRaisesRegex(ValueError, "subspace_accumulation"):
            lowrank.fused_layers(layer, tx, accumulation_steps=2).init(stacked)


if __name__ == "__main__":
    absltest.main()
