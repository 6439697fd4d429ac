"""Tests of the LRG-Adam family: ``lrg``, ``scale_by_torch_amsgrad``, ``lrg_adam``.

Independent references: a NumPy implementation of the filter formula (below), a
NumPy implementation of torch's AMSGrad, and golden trajectories written by
``scripts/make_lrg_golden.py`` (torch.optim.Adam with the documented LRGAdam
gradient rewrite, float64). The exact path (``projector='svd'``) is held to the
references at float64 precision; the randomized default is held to them where its
sketch spans the whole matrix, and to the best rank-k error elsewhere.
"""

import doctest
import math
import os
import pathlib
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized
from conformance_utils import conformance_case
from optax._src.utils import x64_precision

import lowrank_optax as lowrank
from lowrank_optax._src import lrg as lrg_module

GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"


def np_lrg(leaves: list[np.ndarray], rank: int) -> list[np.ndarray]:
    """NumPy reference of the filter: ravel, pad, SVD, truncate, crop, split."""
    flat = np.concatenate([np.asarray(x, np.float64).reshape(-1) for x in leaves])
    n = flat.size
    side = math.ceil(math.sqrt(n))
    padded = np.zeros(side * side)
    padded[:n] = flat
    u, s, vh = np.linalg.svd(padded.reshape(side, side), full_matrices=False)
    s[rank:] = 0.0
    approx = (u @ np.diag(s) @ vh).reshape(-1)[:n]
    out, start = [], 0
    for x in leaves:
        size = int(np.prod(np.shape(x), dtype=int))
        out.append(approx[start : start + size].reshape(np.shape(x)))
        start += size
    return out


def _random_leaves(shapes, seed=0):
    gen = np.random.default_rng(seed)
    return [gen.normal(size=shape) for shape in shapes]


def _apply_lrg(tx, tree):
    state = tx.init(tree)
    out, new_state = jax.jit(tx.update)(tree, state)
    return out, new_state


def exact_lrg(rank, **kwargs):
    """The reference's computation: LAPACK's full SVD."""
    return lowrank.lrg(rank, projector="svd", **kwargs)


PROJECTORS = (("svd", "svd"), ("randomized", "randomized"))


class LrgFormulaTest(parameterized.TestCase):
    @parameterized.product(
        case=(
            ([(3, 4), (5,)], 2),  # N = 17, s = 5, 8 padding zeros
            ([(3, 4), (5,)], 1),
            ([(4, 4), (3,), (2, 1)], 1),  # N = 21, s = 5
            ([(4, 4)], 2),  # N = 16, s = 4, no padding
            ([(2, 3), (3,), (7,)], 3),  # N = 16
            ([(6, 7), (2,)], 4),  # N = 44, s = 7
        ),
        projector=("svd", "randomized"),  # tiny s: the sketch spans the whole matrix
    )
    def test_matches_numpy_reference_float64(self, case, projector):
        shapes, rank = case
        leaves = _random_leaves(shapes, seed=len(shapes) + rank)
        expected = np_lrg(leaves, rank)
        with x64_precision(True):
            tree = [jnp.asarray(x, jnp.float64) for x in leaves]
            out, state = _apply_lrg(lowrank.lrg(rank, projector=projector), tree)
            if projector == "svd":
                self.assertIsInstance(state, optax.EmptyState)
            else:
                self.assertIsInstance(state, lowrank.LrgState)
            for o, e in zip(out, expected, strict=True):
                self.assertEqual(o.dtype, jnp.float64)
                np.testing.assert_allclose(np.asarray(o), e, rtol=1e-10, atol=1e-12)

    def test_matches_numpy_reference_float32_dict_tree(self):
        leaves = _random_leaves([(5, 3), (3,), (3, 2), (2,)], seed=3)  # N = 26, s = 6
        tree = {"a": {"kernel": leaves[0], "bias": leaves[1]}, "b": (leaves[2], leaves[3])}
        tree = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
        # Reference in jax's tree-leaf order (dict keys sorted: a.bias, a.kernel, b.0, b.1).
        ordered = [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]
        expected = np_lrg(ordered, 2)
        out, _ = _apply_lrg(lowrank.lrg(2), tree)
        for o, e in zip(jax.tree.leaves(out), expected, strict=True):
            self.assertEqual(o.dtype, jnp.float32)
            np.testing.assert_allclose(np.asarray(o), e, rtol=2e-4, atol=2e-5)

    def test_pad_reshape_layout_non_square(self):
        # A padded matrix that is exactly rank 1 survives a rank-1 filter; this pins the
        # row-major reshape and the padding at the end (a wrong layout breaks rank 1).
        side, n = 5, 22  # 3 padding zeros in the last row
        a = np.array([1.0, -2.0, 0.5, 3.0, 0.0])  # last row of the outer product is 0
        b = np.array([2.0, 1.0, -1.0, 0.25, 4.0])
        flat = np.outer(a, b).reshape(-1)[:n]
        tree = [jnp.asarray(flat[:12].reshape(3, 4)), jnp.asarray(flat[12:])]
        out, _ = _apply_lrg(lowrank.lrg(1), tree)
        np.testing.assert_allclose(np.concatenate([np.ravel(x) for x in out]), flat, atol=1e-5)
        # A permuted layout of the same numbers is no longer rank 1, so it changes.
        perm = flat[np.random.default_rng(0).permutation(n)]
        out_p, _ = _apply_lrg(lowrank.lrg(1), [jnp.asarray(perm)])
        self.assertGreater(np.max(np.abs(np.asarray(out_p[0]) - perm)), 1e-2)
        self.assertEqual(side, math.ceil(math.sqrt(n)))

    def test_pad_reshape_layout_square(self):
        m = np.outer([1.0, 2.0, -1.0], [0.5, -3.0, 2.0])  # N = 9 = 3 x 3, no padding
        out, _ = _apply_lrg(lowrank.lrg(1), {"w": jnp.asarray(m)})
        np.testing.assert_allclose(np.asarray(out["w"]), m, atol=1e-5)

    @parameterized.named_parameters(
        ("rank_equals_side", 5),
        ("rank_above_side", 6),
        ("huge_rank", 10_000),
    )
    def test_rank_at_least_side_is_exact_identity(self, rank):
        tree = [jnp.asarray(x, jnp.float32) for x in _random_leaves([(3, 4), (5,)])]  # s = 5
        out, _ = _apply_lrg(lowrank.lrg(rank), tree)
        for o, g in zip(out, tree, strict=True):
            np.testing.assert_array_equal(np.asarray(o), np.asarray(g))

    @parameterized.named_parameters(("scalar_leaf", ()), ("one_element", (1,)))
    def test_single_element_is_identity(self, shape):
        g = jnp.full(shape, -3.5, jnp.float32)
        out, _ = _apply_lrg(lowrank.lrg(1), g)
        self.assertEqual(out.shape, shape)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(g))

    def test_single_leaf(self):
        g = _random_leaves([(7, 5)], seed=11)[0]  # N = 35, s = 6
        with x64_precision(True):
            out, _ = _apply_lrg(lowrank.lrg(2), jnp.asarray(g))
            np.testing.assert_allclose(np.asarray(out), np_lrg([g], 2)[0], rtol=1e-10, atol=1e-12)

    def test_zero_gradient(self):
        tree = {"w": jnp.zeros((4, 3)), "b": jnp.zeros((3,))}
        out, _ = _apply_lrg(lowrank.lrg(2), tree)
        for o in jax.tree.leaves(out):
            np.testing.assert_array_equal(np.asarray(o), 0.0)

    @parameterized.named_parameters(*PROJECTORS)
    def test_fallback_to_raw_gradient_when_decomposition_overflows(self, projector):
        # A finite float32 G whose top singular value exceeds float32's range: G_k
        # is not representable, so the raw gradient is emitted.
        gen = np.random.default_rng(0)
        g = (3e38 * (1 - 0.1 * gen.random((4, 5)))).astype(np.float32)
        out, _ = _apply_lrg(lowrank.lrg(2, projector=projector), jnp.asarray(g))
        np.testing.assert_array_equal(np.asarray(out), g)
        # The same matrix scaled down is filtered (so the check above can fail).
        small = g * np.float32(1e-30)
        filtered, _ = _apply_lrg(lowrank.lrg(2, projector=projector), jnp.asarray(small))
        self.assertGreater(float(jnp.max(jnp.abs(filtered - small))), 1e-3 * float(small.max()))

    @parameterized.named_parameters(*PROJECTORS)
    def test_non_finite_gradient_passes_through(self, projector):
        g = np.asarray(_random_leaves([(4, 5)])[0], np.float32)
        g[1, 2] = np.nan
        g[3, 0] = np.inf
        out, _ = _apply_lrg(lowrank.lrg(2, projector=projector), jnp.asarray(g))
        np.testing.assert_array_equal(np.asarray(out), g)  # NaN == NaN for this assert

    @parameterized.product(bad=(np.inf, -np.inf), projector=("svd", "randomized"))
    def test_infinite_gradient_passes_through_and_returns(self, bad, projector):
        # An infinity alone (no NaN) in the padded 5×5 matrix: LAPACK's gesdd never
        # returns on it, so the filter must not hand it over.
        g = np.asarray(_random_leaves([(4, 5)])[0], np.float32)
        g[0, 0] = bad
        out, _ = _apply_lrg(lowrank.lrg(2, projector=projector), jnp.asarray(g))
        np.testing.assert_array_equal(np.asarray(out), g)

    def test_states_and_no_params_needed(self):
        params = {"w": jnp.ones((2, 3))}
        tx = exact_lrg(3)
        self.assertEqual(tx.init(params), optax.EmptyState())
        out, state = tx.update(params, tx.init(params))  # params=None is fine
        self.assertEqual(state, optax.EmptyState())
        self.assertEqual(out["w"].shape, (2, 3))
        tx = lowrank.lrg(3)  # randomized: a PRNG key, split every step
        state = tx.init(params)
        self.assertIsInstance(state, lowrank.LrgState)
        np.testing.assert_array_equal(state.key, jax.random.PRNGKey(0))
        _, new_state = tx.update(params, state)
        self.assertEqual(new_state.key.dtype, state.key.dtype)
        self.assertFalse(np.array_equal(new_state.key, state.key))

    @parameterized.named_parameters(
        ("bf16", [jnp.bfloat16, jnp.bfloat16]),
        ("f16", [jnp.float16]),
        ("mixed_bf16_f32", [jnp.bfloat16, jnp.float32]),
    )
    def test_dtype_preservation(self, dtypes):
        shapes = [(6, 5), (4,)][: len(dtypes)]
        leaves = _random_leaves(shapes, seed=5)
        tree = [jnp.asarray(x, d) for x, d in zip(leaves, dtypes, strict=True)]
        out, _ = _apply_lrg(lowrank.lrg(2), tree)
        expected = np_lrg([np.asarray(x, np.float64) for x in tree], 2)
        for o, g, e in zip(out, tree, expected, strict=True):
            self.assertEqual(o.dtype, g.dtype)
            self.assertEqual(o.shape, g.shape)
            np.testing.assert_allclose(np.asarray(o, np.float64), e, rtol=0.05, atol=0.05)

    def test_mixed_float32_float64_under_x64(self):
        leaves = _random_leaves([(4, 4), (5,)], seed=9)
        with x64_precision(True):
            tree = [jnp.asarray(leaves[0], jnp.float32), jnp.asarray(leaves[1], jnp.float64)]
            out, _ = _apply_lrg(lowrank.lrg(2), tree)
            self.assertEqual([o.dtype for o in out], [jnp.float32, jnp.float64])
            expected = np_lrg([np.asarray(x) for x in tree], 2)
            np.testing.assert_allclose(np.asarray(out[1]), expected[1], rtol=1e-10, atol=1e-12)

    @parameterized.named_parameters(*PROJECTORS)
    def test_jit_does_not_recompile(self, projector):
        tx = lowrank.lrg(2, projector=projector)

        @jax.jit
        @chex.assert_max_traces(n=1)
        def step(g, state):
            return tx.update(g, state)

        gen = np.random.default_rng(0)
        state = tx.init({"w": jnp.zeros((4, 5)), "b": jnp.zeros(3)})
        for _ in range(3):
            g = {"w": jnp.asarray(gen.normal(size=(4, 5)), jnp.float32), "b": jnp.ones(3)}
            _, state = step(g, state)
        chex.clear_trace_counter()

    def test_leaf_order_changes_output(self):
        a, b = (jnp.asarray(x, jnp.float32) for x in _random_leaves([(3, 4), (5,)], seed=2))
        out_ab, _ = _apply_lrg(lowrank.lrg(2), [a, b])
        out_ba, _ = _apply_lrg(lowrank.lrg(2), [b, a])
        self.assertGreater(float(jnp.max(jnp.abs(out_ab[0] - out_ba[1]))), 1e-3)

    def test_flatten_fn_defines_the_order(self):
        a, b = (jnp.asarray(x, jnp.float32) for x in _random_leaves([(3, 4), (5,)], seed=2))

        def reversed_flatten(tree):
            vec = jnp.concatenate([tree["b"], tree["a"].T.reshape(-1)])
            return vec, lambda v: {"a": v[5:].reshape(4, 3).T, "b": v[:5]}

        out, _ = _apply_lrg(lowrank.lrg(2, flatten_fn=reversed_flatten), {"a": a, "b": b})
        ref, _ = _apply_lrg(lowrank.lrg(2), [b, a.T])
        np.testing.assert_allclose(np.asarray(out["b"]), np.asarray(ref[0]), atol=1e-6)
        np.testing.assert_allclose(np.asarray(out["a"]), np.asarray(ref[1]).T, atol=1e-6)

    def test_flatten_fn_must_restore_structure(self):
        tree = {"a": jnp.ones((2, 3)), "b": jnp.ones(4)}

        def bad_structure(t):
            vec, unflatten = jax.flatten_util.ravel_pytree(t)
            return vec, lambda v: list(unflatten(v).values())

        def bad_shape(t):
            vec = jnp.concatenate([t["a"].reshape(-1), t["b"]])
            return vec, lambda v: {"a": v[:6].reshape(3, 2), "b": v[6:]}

        def not_a_vector(t):
            return jnp.ones((2, 5)), lambda v: t

        for fn in (bad_structure, bad_shape, not_a_vector):
            tx = lowrank.lrg(1, flatten_fn=fn)
            with self.subTest(fn.__name__), self.assertRaisesRegex(ValueError, "flatten_fn"):
                tx.update(tree, tx.init(tree))


class ValidationTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("zero", 0),
        ("negative", -2),
        ("float", 2.5),
        ("integral_float", 2.0),
        ("bool", True),
        ("string", "3"),
        ("none", None),
    )
    def test_bad_rank(self, rank):
        with self.assertRaisesRegex(ValueError, "rank"):
            lowrank.lrg(rank)
        if rank is None:  # lrg_adam's default (10), so inject_hyperparams needs no listing
            return
        with self.assertRaisesRegex(ValueError, "rank"):
            lowrank.lrg_adam(1e-3, rank=rank)

    def test_numpy_integer_rank_accepted(self):
        lowrank.lrg(np.int64(3))
        lowrank.lrg_adam(1e-3, rank=np.int32(3))

    @parameterized.named_parameters(("dict", {}), ("list", []), ("none", None))
    def test_empty_tree(self, tree):
        for tx in (lowrank.lrg(2), lowrank.lrg_adam(1e-3, rank=2)):
            with self.assertRaisesRegex(ValueError, "empty"):
                tx.init(tree)
        with self.assertRaisesRegex(ValueError, "empty"):
            lowrank.lrg(2).update(tree, lowrank.LrgState(jax.random.PRNGKey(0)))
        with self.assertRaisesRegex(ValueError, "empty"):
            exact_lrg(2).update(tree, optax.EmptyState())

    @parameterized.named_parameters(
        ("negative_lr", dict(learning_rate=-1e-3), "learning_rate"),
        ("negative_eps", dict(eps=-1e-8), "eps"),
        ("negative_wd", dict(weight_decay=-0.1), "weight_decay"),
        ("b1_one", dict(b1=1.0), "b1"),
        ("b1_negative", dict(b1=-0.1), "b1"),
        ("b2_one", dict(b2=1.0), "b2"),
        ("b2_nan", dict(b2=float("nan")), "b2"),
    )
    def test_bad_hyperparameters(self, kwargs, name):
        kwargs = {"learning_rate": 1e-3, **kwargs}
        with self.assertRaisesRegex(ValueError, name):
            lowrank.lrg_adam(**kwargs)

    def test_amsgrad_primitive_validation(self):
        with self.assertRaisesRegex(ValueError, "b2"):
            lowrank.scale_by_torch_amsgrad(b2=1.5)
        with self.assertRaisesRegex(ValueError, "eps"):
            lowrank.scale_by_torch_amsgrad(eps=-1.0)

    def test_flatten_fn_must_be_callable(self):
        with self.assertRaisesRegex(ValueError, "flatten_fn"):
            lowrank.lrg(2, flatten_fn=3)

    @parameterized.named_parameters(
        ("projector", dict(projector="qr"), "projector"),
        ("projector_none", dict(projector=None), "projector"),
    )
    def test_bad_projector_arguments(self, kwargs, name):
        with self.assertRaisesRegex(ValueError, name):
            lowrank.lrg(2, **kwargs)
        with self.assertRaisesRegex(ValueError, name):
            lowrank.lrg_adam(1e-3, rank=2, **kwargs)

    def test_schedules_and_injected_hyperparameters(self):
        sched = optax.linear_schedule(1e-2, 0.0, 10)
        params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}
        grads = jax.tree.map(lambda x: x * 0.5 + 0.1, params)
        for tx in (
            lowrank.lrg_adam(sched, rank=2, weight_decay=optax.constant_schedule(0.1)),
            optax.inject_hyperparams(lowrank.lrg_adam, static_args=("rank", "amsgrad"))(
                learning_rate=1e-2, rank=2, b1=0.8, weight_decay=0.1, amsgrad=True
            ),
            optax.inject_hyperparams(lowrank.lrg_adam, static_args=("rank",))(
                learning_rate=1e-2, rank=2, projector="svd"
            ),
            optax.inject_hyperparams(lowrank.lrg_adam, static_args=("rank",))(
                learning_rate=1e-2, rank=2, projector=lowrank.randomized_projector(4, 2)
            ),
        ):
            state = tx.init(params)
            updates, _ = jax.jit(tx.update)(grads, state, params)
            self.assertTrue(all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates)))


def np_torch_amsgrad(grads, b1, b2, eps):
    """NumPy AMSGrad as torch.optim.Adam(amsgrad=True): max of the raw second moment."""
    m = v = vmax = np.zeros_like(grads[0], np.float64)
    out = []
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, np.float64)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        vmax = np.maximum(vmax, v)
        out.append((m / (1 - b1**t)) / (np.sqrt(vmax) / np.sqrt(1 - b2**t) + eps))
    return out


class RandomizedFilterTest(parameterized.TestCase):
    """The randomized projector against the exact truncated SVD (NumPy)."""

    def test_flat_spectrum_error_close_to_optimal(self):
        # A Gaussian matrix has the flattest spectrum, the hardest case for a range
        # finder: with q = 1 the residual stays within a few percent of the optimum.
        g = np.random.default_rng(1).normal(size=(119, 119)).astype(np.float32)  # s = 119
        sv = np.linalg.svd(g.astype(np.float64), compute_uv=False)
        best = np.sqrt(np.sum(sv[20:] ** 2))
        out, _ = _apply_lrg(lowrank.lrg(20), jnp.asarray(g.reshape(-1)))
        residual = np.linalg.norm(g - np.asarray(out, np.float64).reshape(119, 119))
        self.assertLess(residual / best, 1.06)
        self.assertGreaterEqual(residual / best, 1.0 - 1e-5)  # nothing beats the SVD
        # Without power iterations the same sketch is visibly cruder.
        crude = lowrank.lrg(20, projector=lowrank.randomized_projector(power_iterations=0))
        out0, _ = _apply_lrg(crude, jnp.asarray(g.reshape(-1)))
        residual0 = np.linalg.norm(g - np.asarray(out0, np.float64).reshape(119, 119))
        self.assertGreater(residual0, residual * 1.01)

    def test_decaying_spectrum_matches_truncated_svd(self):
        # Rank-5 signal plus small noise: the sketch (K = 15 < s = 60) finds the top-5
        # subspace and G_k equals the truncated SVD to float32 precision.
        gen = np.random.default_rng(2)
        signal = (
            gen.normal(size=(60, 5)) @ np.diag([50.0, 30, 20, 10, 5]) @ gen.normal(size=(5, 60))
        )
        g = (signal + 0.01 * gen.normal(size=(60, 60))).reshape(-1)
        expected = np_lrg([g], 5)[0]
        out, _ = _apply_lrg(lowrank.lrg(5), jnp.asarray(g, jnp.float32))
        np.testing.assert_allclose(np.asarray(out), expected, rtol=0, atol=2e-3 * np.abs(g).max())

    def test_scale_invariant(self):
        # The range finder squares its sketches; the filter normalises first, so
        # gradients of any float32 magnitude give the same direction.
        g = np.random.default_rng(3).normal(size=(45 * 45,)).astype(np.float32)
        tx = lowrank.lrg(3)
        update = jax.jit(tx.update)
        state = tx.init(jnp.asarray(g))
        ref = np.asarray(update(jnp.asarray(g), state)[0])
        for scale in (1e-30, 1e-20, 1e20, 1e30):
            out = np.asarray(update(jnp.asarray(g * np.float32(scale)), state)[0])
            np.testing.assert_allclose(out / scale, ref, rtol=0, atol=1e-4, err_msg=str(scale))

    def test_projector_objects(self):
        g = {"w": jnp.asarray(np.random.default_rng(4).normal(size=(40, 50)), jnp.float32)}
        svd, _ = _apply_lrg(lowrank.lrg(3, projector=lowrank.svd_projector()), g)
        ref, _ = _apply_lrg(exact_lrg(3), g)
        np.testing.assert_array_equal(np.asarray(svd["w"]), np.asarray(ref["w"]))
        default, _ = _apply_lrg(lowrank.lrg(3), g)
        same, _ = _apply_lrg(lowrank.lrg(3, projector=lowrank.randomized_projector()), g)
        np.testing.assert_array_equal(np.asarray(same["w"]), np.asarray(default["w"]))
        tx = lowrank.lrg(3, projector=lowrank.randomized_projector(seed=7))
        state = tx.init(g)
        np.testing.assert_array_equal(state.key, jax.random.PRNGKey(7))
        seeded, _ = _apply_lrg(tx, g)
        self.assertGreater(float(jnp.max(jnp.abs(seeded["w"] - default["w"]))), 1e-5)

        class Custom(lowrank.Projector):
            pass

        with self.assertRaisesRegex(ValueError, "projector"):
            lowrank.lrg(3, projector=Custom())

    def test_fresh_sketch_every_step_and_seeded(self):
        g = {"w": jnp.asarray(np.random.default_rng(4).normal(size=(40, 50)), jnp.float32)}
        tx = lowrank.lrg(3)
        update = jax.jit(tx.update)
        first, state = update(g, tx.init(g))
        second, _ = update(g, state)
        again, _ = update(g, tx.init(g))
        np.testing.assert_array_equal(np.asarray(first["w"]), np.asarray(again["w"]))
        self.assertGreater(float(jnp.max(jnp.abs(first["w"] - second["w"]))), 1e-4)


class TorchAmsgradTest(absltest.TestCase):
    def test_matches_numpy_torch_amsgrad_over_20_steps(self):
        gen = np.random.default_rng(0)
        scales = 10.0 ** gen.uniform(-3, 1, size=20)  # the maximum is often an old step
        grads = [(gen.normal(size=(7, 5)) * c).astype(np.float32) for c in scales]
        expected = np_torch_amsgrad(grads, b1=0.8, b2=0.9, eps=1e-6)
        tx = lowrank.scale_by_torch_amsgrad(b1=0.8, b2=0.9, eps=1e-6)
        state = tx.init(jnp.zeros((7, 5)))
        update = jax.jit(tx.update)
        for g, e in zip(grads, expected, strict=True):
            u, state = update(jnp.asarray(g), state)
            np.testing.assert_allclose(np.asarray(u), e, rtol=2e-5, atol=1e-6)
        self.assertIsInstance(state, lowrank.ScaleByAdamInBasisState)  # the one Adam core
        # optax's AMSGrad (maximum of the bias-corrected moment) differs on this run.
        ref = optax.scale_by_amsgrad(b1=0.8, b2=0.9, eps=1e-6)
        ref_state = ref.init(jnp.zeros((7, 5)))
        for g in grads:
            ref_u, ref_state = ref.update(jnp.asarray(g), ref_state)
        self.assertGreater(float(jnp.max(jnp.abs(ref_u - u))), 1e-3)


class LrgAdamTest(parameterized.TestCase):
    def _run(self, tx, params, grads_seq, with_params=True):
        state = tx.init(params)
        update = jax.jit(tx.update)
        for g in grads_seq:
            updates, state = update(g, state, params) if with_params else update(g, state)
            params = optax.apply_updates(params, updates)
        return params

    def _problem(self):
        gen = np.random.default_rng(4)
        params = {"w": jnp.asarray(gen.normal(size=(5, 4)), jnp.float32), "b": jnp.zeros(4)}
        grads_seq = [
            jax.tree.map(lambda x: jnp.asarray(gen.normal(size=x.shape), x.dtype), params)
            for _ in range(6)
        ]
        return params, grads_seq

    def test_chain_lrg_adam_equals_alias_without_weight_decay(self):
        params, grads_seq = self._problem()
        got = self._run(lowrank.lrg_adam(3e-2, rank=2), params, grads_seq)
        want = self._run(
            optax.chain(lowrank.lrg(2), optax.adam(3e-2)), params, grads_seq, with_params=False
        )
        chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)
        # ... and the filter matters: plain Adam differs.
        plain = self._run(optax.adam(3e-2), params, grads_seq, with_params=False)
        self.assertGreater(float(jnp.max(jnp.abs(got["w"] - plain["w"]))), 1e-4)

    def test_state_is_full_size(self):
        params = {"w": jnp.ones((30, 20)), "b": jnp.ones(20)}
        state = lowrank.lrg_adam(1e-3, rank=2).init(params)
        adam_state = optax.adam(1e-3).init(params)
        size = lambda s: sum(x.size for x in jax.tree.leaves(s))  # noqa: E731
        self.assertEqual(size(state), size(adam_state) + 2)  # + the sketch's PRNG key
        exact_state = lowrank.lrg_adam(1e-3, rank=2, projector="svd").init(params)
        self.assertEqual(size(exact_state), size(adam_state))

    def test_bf16_params(self):
        params = {"w": jnp.ones((6, 5), jnp.bfloat16), "b": jnp.zeros(5, jnp.bfloat16)}
        grads = jax.tree.map(lambda x: x * 0.3 + 0.1, params)
        for amsgrad in (False, True):
            tx = lowrank.lrg_adam(1e-2, rank=2, weight_decay=0.01, amsgrad=amsgrad)
            state = tx.init(params)
            updates, new_state = jax.jit(tx.update)(grads, state, params)
            chex.assert_trees_all_equal_dtypes(updates, params)
            chex.assert_trees_all_equal_dtypes(new_state, state)

    def test_float16_params_compute_in_float32(self):
        # Adam's second moment of a float16 gradient underflows/overflows in
        # float16 (the update was inf); the alias computes in float32 and casts back.
        params, grads_seq = self._problem()
        half = jax.tree.map(lambda x: x.astype(jnp.float16), params)
        half_grads = [jax.tree.map(lambda x: x.astype(jnp.float16), g) for g in grads_seq]
        tx = lowrank.lrg_adam(3e-2, rank=2, projector="svd")
        got = self._run(tx, half, half_grads)
        chex.assert_trees_all_equal_dtypes(got, half)
        want = self._run(
            tx,
            jax.tree.map(lambda x: x.astype(jnp.float32), half),
            [jax.tree.map(lambda x: x.astype(jnp.float32), g) for g in half_grads],
        )
        chex.assert_trees_all_close(
            jax.tree.map(lambda x: x.astype(jnp.float32), got), want, atol=2e-3
        )

    def test_integer_params_raise(self):
        with self.assertRaisesRegex(ValueError, "lrg_adam.*floating"):
            lowrank.lrg_adam(1e-2).init({"w": jnp.ones((3, 3), jnp.int32)})

    def test_inject_hyperparams_needs_no_static_args_for_defaults(self):
        params, grads_seq = self._problem()
        tx = optax.inject_hyperparams(lowrank.lrg_adam)(learning_rate=3e-2)
        got = self._run(tx, params, grads_seq[:2])
        want = self._run(lowrank.lrg_adam(3e-2), params, grads_seq[:2])
        # Same algorithm; the range finder's products compile differently (round-off).
        chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)


def _golden(name):
    return dict(np.load(GOLDEN / f"lrg_{name}.npz"))


def _torch_layout_params(flat, sizes):
    """Splits a torch-ordered vector into [W1 (out, in), b1, W2, b2, ...]."""
    out, start = [], 0
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        out.append(flat[start : start + fan_in * fan_out].reshape(fan_out, fan_in))
        start += fan_in * fan_out
        out.append(flat[start : start + fan_out])
        start += fan_out
    return out


def _mlp_loss(layers, x, y):
    """CE loss of Linear-Tanh-Linear; ``layers`` = [(W (out, in), b), ...]."""
    h = x
    for i, (w, b) in enumerate(layers):
        h = h @ w.T + b
        if i < len(layers) - 1:
            h = jnp.tanh(h)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(h), y[:, None], axis=1))


def _flax_to_layers(params):
    return [(params[k]["kernel"].T, params[k]["bias"]) for k in sorted(params)]


def _torch_order_flatten(params):
    """Flax-style {'Dense_i': {'bias', 'kernel' (in, out)}} -> torch order and layout."""
    names = sorted(params)
    vec = jnp.concatenate(
        [
            part
            for k in names
            for part in (params[k]["kernel"].T.reshape(-1), params[k]["bias"].reshape(-1))
        ]
    )

    def unflatten(v):
        out, start = {}, 0
        for k in names:
            fan_in, fan_out = params[k]["kernel"].shape
            w = v[start : start + fan_in * fan_out].reshape(fan_out, fan_in).T
            start += fan_in * fan_out
            out[k] = {"bias": v[start : start + fan_out], "kernel": w}
            start += fan_out
        return out

    return vec, unflatten


def _golden_tx(g, **overrides):
    kwargs = dict(
        learning_rate=float(g["lr"]),
        projector="svd",  # the reference's computation
        rank=int(g["rank"]),
        b1=float(g["b1"]),
        b2=float(g["b2"]),
        eps=float(g["eps"]),
        weight_decay=float(g["weight_decay"]),
        amsgrad=bool(g["amsgrad"]),
    )
    kwargs.update(overrides)
    return lowrank.lrg_adam(**kwargs)


def _run_golden_torch_layout(g, tx):
    sizes = [int(s) for s in g["layer_sizes"]]
    params = [jnp.asarray(p) for p in _torch_layout_params(g["params"][0], sizes)]

    def loss(p, x, y):
        return _mlp_loss(list(zip(p[::2], p[1::2], strict=True)), x, y)

    state = tx.init(params)

    @jax.jit
    def step(p, s, x, y):
        grads = jax.grad(loss)(p, x, y)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    traj = [np.concatenate([np.ravel(x) for x in params])]
    for t in range(g["x"].shape[0]):
        params, state = step(params, state, jnp.asarray(g["x"][t]), jnp.asarray(g["y"][t]))
        traj.append(np.concatenate([np.ravel(x) for x in params]))
    return np.stack(traj)


class GoldenParityTest(parameterized.TestCase):
    """lrg_adam against torch.optim.Adam + the documented LRGAdam rewrite, float64."""

    @parameterized.parameters("adam", "wd", "amsgrad", "fullrank")
    def test_trajectory_matches_torch_reference(self, name):
        g = _golden(name)
        with x64_precision(True):
            traj = _run_golden_torch_layout(g, _golden_tx(g))
        np.testing.assert_allclose(traj, g["params"], rtol=1e-9, atol=1e-11)

    def test_golden_variants_are_discriminating(self):
        # The low-rank filter, weight decay and the amsgrad maximum each change the
        # trajectory, so the parity test above cannot pass by accident.
        with x64_precision(True):
            g = _golden("adam")
            full = _run_golden_torch_layout(g, _golden_tx(g, rank=100))
            self.assertGreater(np.max(np.abs(full[-1] - g["params"][-1])), 1e-4)
            g = _golden("wd")
            no_wd = _run_golden_torch_layout(g, _golden_tx(g, weight_decay=0.0))
            self.assertGreater(np.max(np.abs(no_wd[-1] - g["params"][-1])), 1e-5)
            g = _golden("amsgrad")
            plain = _run_golden_torch_layout(g, _golden_tx(g, amsgrad=False))
            self.assertGreater(np.max(np.abs(plain[-1] - g["params"][-1])), 1e-6)
            optax_ams = optax.chain(
                exact_lrg(int(g["rank"])),
                optax.add_decayed_weights(float(g["weight_decay"])),
                optax.scale_by_amsgrad(b1=float(g["b1"]), b2=float(g["b2"])),
                optax.scale_by_learning_rate(float(g["lr"])),
            )
            other = _run_golden_torch_layout(g, optax_ams)
            self.assertGreater(np.max(np.abs(other[-1] - g["params"][-1])), 1e-6)

    def _run_flax_layout(self, g, flatten_fn):
        sizes = [int(s) for s in g["layer_sizes"]]
        torch_params = _torch_layout_params(g["params"][0], sizes)
        params = {
            f"Dense_{i}": {"bias": jnp.asarray(b), "kernel": jnp.asarray(w).T}
            for i, (w, b) in enumerate(zip(torch_params[::2], torch_params[1::2], strict=True))
        }
        tx = _golden_tx(g, flatten_fn=flatten_fn)
        state = tx.init(params)

        @jax.jit
        def step(p, s, x, y):
            grads = jax.grad(lambda q: _mlp_loss(_flax_to_layers(q), x, y))(p)
            updates, s = tx.update(grads, s, p)
            return optax.apply_updates(p, updates), s

        for t in range(g["x"].shape[0]):
            params, state = step(params, state, jnp.asarray(g["x"][t]), jnp.asarray(g["y"][t]))
        return np.asarray(_torch_order_flatten(params)[0])

    def test_flatten_fn_restores_torch_order_parity(self):
        g = _golden("wd")
        with x64_precision(True):
            final = self._run_flax_layout(g, _torch_order_flatten)
            np.testing.assert_allclose(final, g["params"][-1], rtol=1e-9, atol=1e-11)
            # Flax's own leaf order (bias first, kernels (in, out)) gives another filter.
            flax_order = self._run_flax_layout(g, None)
            self.assertGreater(np.max(np.abs(flax_order - g["params"][-1])), 1e-4)


def _lrg_adam_amsgrad_svd(
    learning_rate: optax.ScalarOrSchedule, rank: int = 1
) -> optax.GradientTransformationExtraArgs:
    return lowrank.lrg_adam(learning_rate, rank=rank, amsgrad=True, projector="svd")


class LrgAdamConformanceTest(
    conformance_case(
        {
            "lowrank_lrg_adam": (lowrank.lrg_adam, {"learning_rate": 1e-2, "rank": 1}),
            "lowrank_lrg_adam_amsgrad_svd": (_lrg_adam_amsgrad_svd, {"learning_rate": 1e-2}),
        }
    )
):
    pass


class DocstringExamplesTest(absltest.TestCase):
    def test_docstring_examples_run(self):
        result = doctest.testmod(lrg_module, verbose=False)
        self.assertEqual(result.failed, 0)
        self.assertGreaterEqual(result.attempted, 3)


_SHARDING_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import PartitionSpec as P
    import lowrank_optax as lowrank
    mesh = jax.make_mesh((4, 2), ("x", "y"))
    gen = np.random.default_rng(0)
    host = {"w": gen.normal(size=(8, 6)).astype(np.float32),
            "b": gen.normal(size=(6,)).astype(np.float32)}
    for projector in ("svd", "randomized"):
        flt = lowrank.lrg(3, projector=projector)
        local = jax.tree.map(jnp.asarray, host)
        want = flt.update(local, flt.init(local))[0]
        with jax.set_mesh(mesh):
            specs = {"w": P("x", "y"), "b": P("y")}
            params = {k: jax.device_put(v, specs[k]) for k, v in host.items()}
            tx = lowrank.lrg_adam(1e-2, rank=3, projector=projector)
            state = jax.jit(tx.init)(params)
            out = jax.jit(flt.update)(params, jax.jit(flt.init)(params))[0]
            updates, state2 = jax.jit(tx.update)(params, state, params)
            for k in host:
                assert jax.typeof(out[k]).sharding.spec == specs[k], (k, jax.typeof(out[k]))
                assert jax.typeof(updates[k]).sharding.spec == specs[k]
                np.testing.assert_allclose(np.asarray(out[k]), np.asarray(want[k]), atol=1e-5)
            assert jax.tree.map(jax.typeof, state) == jax.tree.map(jax.typeof, state2)
    print("SHARDING_OK")
    """
)


class ExplicitShardingTest(absltest.TestCase):
    def test_explicit_mesh_replicates_and_restores_sharding(self):
        env = dict(os.environ)
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
        env["JAX_PLATFORMS"] = "cpu"
        result = subprocess.run(
            [sys.executable, "-c", _SHARDING_SCRIPT],
            capture_output=True,
            text=True,
            env=env,
            timeout=240,
        )
        self.assertIn("SHARDING_OK", result.stdout, result.stdout + result.stderr)


if __name__ == "__main__":
    absltest.main()
