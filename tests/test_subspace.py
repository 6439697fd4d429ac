"""Projection geometry: the proj_type table, dimension numbers, batch axes and masks.

Every check compares the wrapper against explicit numpy formulas (``core_np``):
the inner transformation is ``optax.trace(decay=0)``, whose state is exactly the
projected coordinates it received, and the wrapper's output is
``scale · back(project(G))``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import absltest, parameterized
from core_np import back, project, side_of, svd_basis

import lowrank_optax as lowrank

DN = lowrank.DimensionNumbers
ALL_NAMES = ("std", "reverse_std", "right", "left", "full", "symmetric", "asymmetric")
SHAPES = {"tall": (7, 4), "wide": (4, 7), "square": (5, 5)}


def _grads(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def _step(tx, grads):
    """One jitted update from a fresh state; returns (updates, state) as numpy."""
    params = jax.tree.map(jnp.zeros_like, grads)
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    return jax.tree.map(np.asarray, updates), state


RANK, SCALE = 2, 0.5
TABLE_GRADS = {**_grads(SHAPES, seed=1), "bias": np.arange(3, dtype=np.float32)}


@functools.cache
def _table_run(proj_type):
    """Cached: one compile per proj_type serves the table and the alias tests."""
    tx = lowrank.project_lowrank(
        optax.trace(decay=0.0), rank=RANK, scale=SCALE, proj_type=proj_type
    )
    return _step(tx, TABLE_GRADS)


class ProjectionTableTest(parameterized.TestCase):
    @parameterized.parameters(*ALL_NAMES)
    def test_side_shapes_project_and_back(self, proj_type):
        rank, scale, grads = RANK, SCALE, TABLE_GRADS
        updates, state = _table_run(proj_type)
        coords = state.inner_state.trace
        for name, (m, n) in SHAPES.items():
            side = side_of(proj_type, m, n)
            basis = state.bases[f"['{name}']"]
            u_ref, vh_ref = svd_basis(grads[name], rank)
            if side in ("left", "full"):
                self.assertEqual(basis.left.shape, (m, rank))
                np.testing.assert_allclose(np.asarray(basis.left), u_ref, atol=2e-5)
            else:
                self.assertIsNone(basis.left)
            if side in ("right", "full"):
                self.assertEqual(basis.right.shape, (rank, n))
                np.testing.assert_allclose(np.asarray(basis.right), vh_ref, atol=2e-5)
            else:
                self.assertIsNone(basis.right)
            expected_coords = project(grads[name], side, u_ref, vh_ref)
            coord_shape = {"left": (rank, n), "right": (m, rank), "full": (rank, rank)}[side]
            self.assertEqual(coords[name].shape, coord_shape)
            np.testing.assert_allclose(np.asarray(coords[name]), expected_coords, atol=1e-5)
            expected = scale * back(expected_coords, side, u_ref, vh_ref)
            self.assertEqual(updates[name].shape, (m, n))
            np.testing.assert_allclose(updates[name], expected, atol=1e-5)
        # The 1-D leaf is not projected and not scaled.
        self.assertNotIn("['bias']", state.bases)
        np.testing.assert_array_equal(updates["bias"], grads["bias"])

    @parameterized.parameters(("symmetric", "full"), ("asymmetric", "std"))
    def test_aliases_are_identical_to_their_targets(self, alias, target):
        outs = [_table_run(alias), _table_run(target)]
        jax.tree.map(np.testing.assert_array_equal, outs[0][0], outs[1][0])
        self.assertEqual(set(outs[0][1].bases), set(outs[1][1].bases))
        for k in outs[0][1].bases:
            jax.tree.map(np.testing.assert_array_equal, outs[0][1].bases[k], outs[1][1].bases[k])

    @parameterized.parameters("random", "svd", "STD", "", None, "fulll")
    def test_invalid_proj_type_lists_valid_names(self, bad):
        for factory in (
            lambda: lowrank.project_lowrank(rank=2, proj_type=bad),
            lambda: lowrank.galore(rank=2, proj_type=bad),
            lambda: lowrank.galore_adamw(1e-3, rank=2, proj_type=bad),
        ):
            with pytest.raises(ValueError, match="proj_type") as err:
                factory()
            for name in ALL_NAMES:
                self.assertIn(repr(name), str(err.value))


# (leaf shape, dims, permutation to (rows..., cols...), matrix shape)
ND_CASES = (
    ((4, 3, 5), DN(0, (1, 2)), (0, 1, 2), (4, 15)),
    ((4, 3, 5), DN((2, 0), 1), (2, 0, 1), (20, 3)),
    ((4, 3, 5), DN(-1, (0, 1)), (2, 0, 1), (5, 12)),
    ((2, 3, 2, 5), DN((1, 3), (0, 2)), (1, 3, 0, 2), (15, 4)),
)
# (leaf shape, dims, batch axes); m >= n in every case, so 'std' uses a right basis.
BATCH_CASES = (
    ((3, 6, 4), DN(1, 2), (0,)),
    ((6, 3, 4), DN(0, 2), (1,)),
    ((2, 5, 3, 2), DN(1, 3), (0, 2)),
)


class DimensionNumbersTest(parameterized.TestCase):
    @parameterized.parameters("std", "full")
    def test_nd_leaf_equals_explicit_reshape(self, proj_type):
        rng = np.random.default_rng(3)
        grads, dims = {}, {}
        for i, (shape, dn, perm, mat_shape) in enumerate(ND_CASES):
            g = rng.standard_normal(shape).astype(np.float32)
            grads[f"nd{i}"], dims[f"nd{i}"] = g, dn
            grads[f"mat{i}"] = np.transpose(g, perm).reshape(mat_shape)
            dims[f"mat{i}"] = DN(0, 1)
        tx = lowrank.project_lowrank(
            optax.trace(0.0), rank=2, scale=0.7, proj_type=proj_type, dimension_numbers=dims
        )
        upd, st = _step(tx, grads)
        coords = st.inner_state.trace
        for i, (shape, _, perm, mat_shape) in enumerate(ND_CASES):
            g2 = grads[f"mat{i}"]
            self.assertEqual(upd[f"nd{i}"].shape, shape)
            # The independent formula on the explicit 2-D view ...
            side = side_of(proj_type, *mat_shape)
            u, vh = svd_basis(g2, 2)
            expected_2d = 0.7 * back(project(g2, side, u, vh), side, u, vh)
            np.testing.assert_allclose(upd[f"mat{i}"], expected_2d, atol=1e-5)
            # ... and the N-D leaf equals it after undoing the reshape/transpose.
            permuted = tuple(shape[a] for a in perm)
            expected = np.transpose(expected_2d.reshape(permuted), np.argsort(perm))
            np.testing.assert_allclose(upd[f"nd{i}"], expected, atol=1e-5)
            np.testing.assert_allclose(
                np.asarray(coords[f"nd{i}"]), np.asarray(coords[f"mat{i}"]), atol=1e-5
            )

    def test_batch_axes_give_independent_bases(self):
        rng = np.random.default_rng(4)
        rank = 2
        grads = {
            f"k{i}": rng.standard_normal(c[0]).astype(np.float32) for i, c in enumerate(BATCH_CASES)
        }
        dims = {f"k{i}": c[1] for i, c in enumerate(BATCH_CASES)}
        tx = lowrank.project_lowrank(
            optax.trace(0.0), rank=rank, proj_type="std", dimension_numbers=dims
        )
        upd, st = _step(tx, grads)
        for i, (_, (row, col), batch_axes) in enumerate(BATCH_CASES):
            g = grads[f"k{i}"]
            perm = batch_axes + (row, col)
            gp = np.transpose(g, perm)
            batch_shape = gp.shape[: len(batch_axes)]
            m, n = gp.shape[-2:]
            basis = st.bases[f"['k{i}']"]
            self.assertIsNone(basis.left)
            self.assertEqual(basis.right.shape, batch_shape + (rank, n))
            self.assertEqual(st.inner_state.trace[f"k{i}"].shape, batch_shape + (m, rank))
            expected = np.empty_like(gp, dtype=np.float64)
            for idx in np.ndindex(*batch_shape):
                u, vh = svd_basis(gp[idx], rank)
                np.testing.assert_allclose(np.asarray(basis.right[idx]), vh, atol=2e-5)
                expected[idx] = back(project(gp[idx], "right", u, vh), "right", u, vh)
            np.testing.assert_allclose(
                upd[f"k{i}"], np.transpose(expected, np.argsort(perm)), atol=1e-5
            )
            # Bases differ between batch entries (independent decompositions).
            flat = np.asarray(basis.right).reshape((-1, rank, n))
            self.assertFalse(np.allclose(flat[0], flat[1], atol=1e-3))

    @parameterized.named_parameters(
        ("out_of_range", DN(0, 3)),
        ("negative_out_of_range", DN(-4, 1)),
        ("overlapping", DN((0, 1), 1)),
        ("same_axis", DN(2, 2)),
        ("empty_rows", DN((), (1, 2))),
        ("empty_cols", DN(0, ())),
        ("float_axis", DN(0.5, 1)),
        ("float_in_tuple", DN((0, 1.0), 2)),
        ("bool_axis", DN(True, 2)),
    )
    def test_invalid_dimension_numbers_raise_at_init(self, dims):
        tx = lowrank.project_lowrank(rank=2, dimension_numbers=dims)  # constructing is fine
        with pytest.raises(ValueError, match="dimension_numbers"):
            tx.init({"k": jnp.zeros((4, 3, 5))})

    def test_pytree_and_callable_dimension_numbers(self):
        grads = _grads({"a": (4, 3, 5), "b": (6, 4), "c": (4, 5, 2)}, seed=5)
        spec = {"a": DN(0, (1, 2)), "b": None, "c": DN((0, 1), 2)}
        for dims in (spec, lambda params: spec):
            tx = lowrank.project_lowrank(optax.trace(0.0), rank=2, dimension_numbers=dims)
            st = tx.init(grads)
            self.assertEqual(set(st.bases), {"['a']", "['c']"})
            self.assertEqual(st.inner_state.trace["b"].shape, (6, 4))  # full size
            self.assertEqual(st.inner_state.trace["a"].shape, (2, 15))  # 4 < 15: left
            self.assertEqual(st.inner_state.trace["c"].shape, (20, 2))  # 20 >= 2: right

    def test_single_dimension_numbers_skips_1d_leaves(self):
        grads = _grads({"w": (5, 3, 2), "b": (4,)}, seed=6)
        tx = lowrank.project_lowrank(optax.trace(0.0), rank=2, dimension_numbers=DN(0, (1, 2)))
        st = tx.init(grads)
        self.assertEqual(set(st.bases), {"['w']"})
        self.assertEqual(st.inner_state.trace["w"].shape, (2, 6))  # 5 < 6: left
        self.assertEqual(st.inner_state.trace["b"].shape, (4,))


class MaskTest(parameterized.TestCase):
    GRADS = _grads({"a": (6, 4), "b": (5, 3), "c": (4,)}, seed=7)

    @parameterized.named_parameters(
        ("bool_tree", {"a": True, "b": False, "c": True}),
        ("label_tree", {"a": "lowrank", "b": "full", "c": "lowrank"}),
        ("callable", lambda p: jax.tree.map(lambda x: x.shape[0] == 6 or x.ndim == 1, p)),
        ("bool_prefix", {"a": True, "b": False, "c": False}),
    )
    def test_mask_selects_leaves(self, mask):
        tx = lowrank.project_lowrank(optax.trace(0.0), rank=2, scale=3.0, mask=mask)
        st = tx.init(self.GRADS)
        # Only 'a' is projected: 'b' is unselected, 'c' is 1-D (never projected by default).
        self.assertEqual(set(st.bases), {"['a']"})
        self.assertEqual(st.inner_state.trace["a"].shape, (6, 2))
        self.assertEqual(st.inner_state.trace["b"].shape, (5, 3))
        self.assertEqual(st.inner_state.trace["c"].shape, (4,))

    def test_unselected_leaves_pass_through_unscaled(self):
        tx = lowrank.project_lowrank(
            optax.trace(0.0), rank=2, scale=3.0, mask={"a": "lowrank", "b": "full", "c": "x"}
        )
        upd, _ = _step(tx, self.GRADS)
        np.testing.assert_array_equal(upd["b"], self.GRADS["b"])
        np.testing.assert_array_equal(upd["c"], self.GRADS["c"])
        _, vh = svd_basis(self.GRADS["a"], 2)
        np.testing.assert_allclose(upd["a"], 3.0 * self.GRADS["a"] @ vh.T @ vh, atol=1e-5)

    def test_mask_and_dimension_numbers_combine(self):
        grads = _grads({"a": (4, 3, 5), "b": (4, 3, 5)}, seed=8)
        tx = lowrank.project_lowrank(
            optax.trace(0.0), rank=2, dimension_numbers=DN(0, (1, 2)), mask={"a": False, "b": True}
        )
        self.assertEqual(set(tx.init(grads).bases), {"['b']"})

    @parameterized.named_parameters(
        ("bad_leaf", {"a": 1.5, "b": True, "c": True}),
        ("wrong_structure", {"x": True}),
    )
    def test_bad_mask_raises(self, mask):
        tx = lowrank.project_lowrank(rank=2, mask=mask)
        with pytest.raises(ValueError):
            tx.init(jax.tree.map(jnp.asarray, self.GRADS))


if __name__ == "__main__":
    absltest.main()
