"""project_lowrank: refresh clock, moment policies, memory, extra args, jit, dtypes, edge cases.

Expected values are explicit numpy formulas (``core_np``), never the code under
test. Each transformation is jitted once and reused over a short trajectory.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import absltest, parameterized
from core_np import Adam, back, project, side_of, svd_basis
from optax._src import test_utils

import lowrank_optax as lowrank

B1, B2 = 0.9, 0.999
SHAPES = {"tall": (6, 4), "wide": (3, 5)}


def _grad_seq(shapes, steps, seed=0):
    """Independent Gaussian gradients: leading singular vectors change every step."""
    rng = np.random.default_rng(seed)
    return [
        {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
        for _ in range(steps)
    ]


def _trajectory(tx, grads_seq, params=None):
    """Runs a jitted ``tx.update`` (compiled once) and returns all updates and states."""
    if params is None:
        params = jax.tree.map(jnp.zeros_like, grads_seq[0])
    state = tx.init(params)
    step = jax.jit(tx.update)
    updates, states = [], [state]
    for g in grads_seq:
        u, state = step(g, state, params)
        updates.append(jax.tree.map(np.asarray, u))
        states.append(state)
    return updates, states


def _find(state, cls):
    """The first node of type ``cls`` in an optimizer state."""
    found = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, cls))
    return next(x for x in found if isinstance(x, cls))


def _basis_arrays(state, key):
    b = state.bases[key]
    return [np.asarray(x) for x in (b.left, b.right) if x is not None]


class RefreshClockTest(parameterized.TestCase):
    @parameterized.parameters("svd", "randomized")
    def test_basis_changes_exactly_at_multiples_of_the_gap(self, projector):
        gap, steps = 3, 8
        grads = _grad_seq(SHAPES, steps, seed=1)
        proj = lowrank.randomized_projector(oversampling=2) if projector == "randomized" else "svd"
        tx = lowrank.project_lowrank(optax.trace(0.0), rank=2, update_proj_gap=gap, projector=proj)
        _, states = _trajectory(tx, grads)
        for t in range(steps):
            self.assertEqual(int(states[t + 1].count), t + 1)
            for name in SHAPES:
                key = f"['{name}']"
                before, after = _basis_arrays(states[t], key), _basis_arrays(states[t + 1], key)
                changed = any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))
                self.assertEqual(changed, t % gap == 0, f"step {t}, leaf {name}")
                if projector == "svd":
                    # The basis is the SVD of the gradient of the latest refresh step.
                    g = grads[gap * (t // gap)][name]
                    u, vh = svd_basis(g, 2)
                    ref = u if side_of("std", *g.shape) == "left" else vh
                    np.testing.assert_allclose(after[0], ref, atol=2e-5)
        # The PRNG key advances at refreshes only (randomized), never with 'svd'.
        keys = [np.asarray(s.key) for s in states]
        for t in range(steps):
            moved = not np.array_equal(keys[t], keys[t + 1])
            self.assertEqual(moved, projector == "randomized" and t % gap == 0)


class MomentPolicyTest(parameterized.TestCase):
    GAP, STEPS = 3, 7

    def _numpy_galore(self, grads, proj_type, reset, eps):
        """float64 GaLore with optax-convention Adam; returns updates and final moments."""
        out, adams, bases = [], {}, {}
        for t, g in enumerate(grads):
            step_out = {}
            for name, x in g.items():
                side = side_of(proj_type, *x.shape)
                if t % self.GAP == 0:
                    bases[name] = svd_basis(x, 2)
                    if reset or name not in adams:
                        adams[name] = Adam(B1, B2, eps)
                u, vh = bases[name]
                n = adams[name].step(project(x, side, u, vh))
                step_out[name] = back(n, side, u, vh)
            out.append(step_out)
        return out, adams

    # 'full' projects onto near-diagonal r×r coordinates (P_Lᵀ G P_Rᵀ = diag(s) at a
    # refresh): Adam would normalise their ~1e-7 round-off to ±1, so 'full' runs with an
    # eps far above that round-off.
    @parameterized.parameters(("keep", "std", 1e-8), ("keep", "full", 1e-2), ("reset", "std", 1e-8))
    def test_keep_and_reset_trajectories(self, on_refresh, proj_type, eps):
        grads = _grad_seq(SHAPES, self.STEPS, seed=2)
        tx = lowrank.project_lowrank(
            optax.scale_by_adam(B1, B2, eps),
            rank=2,
            update_proj_gap=self.GAP,
            proj_type=proj_type,
            on_refresh=on_refresh,
        )
        updates, states = _trajectory(tx, grads)
        expected, adams = self._numpy_galore(grads, proj_type, on_refresh == "reset", eps)
        for t in range(self.STEPS):
            for name in SHAPES:
                np.testing.assert_allclose(
                    updates[t][name], expected[t][name], rtol=2e-4, atol=2e-5, err_msg=f"t={t}"
                )
        final = states[-1].inner_state
        for name in SHAPES:
            # 'keep': M = b1 M_old + (1 - b1) P_new^T G mixes old- and new-basis coordinates.
            np.testing.assert_allclose(np.asarray(final.mu[name]), adams[name].m, atol=1e-5)
            np.testing.assert_allclose(np.asarray(final.nu[name]), adams[name].v, atol=1e-5)
        expected_count = self.STEPS if on_refresh == "keep" else (self.STEPS - 1) % self.GAP + 1
        self.assertEqual(int(final.count), expected_count)

    def test_keep_mixing_formula_at_the_refresh(self):
        grads = _grad_seq({"tall": (6, 4)}, self.GAP + 1, seed=3)
        tx = lowrank.project_lowrank(
            optax.scale_by_adam(B1, B2), rank=2, update_proj_gap=self.GAP, on_refresh="keep"
        )
        _, states = _trajectory(tx, grads)
        before, after = states[self.GAP], states[self.GAP + 1]
        p_new = np.asarray(after.bases["['tall']"].right, np.float64)
        self.assertFalse(np.allclose(p_new, np.asarray(before.bases["['tall']"].right)))
        r = grads[self.GAP]["tall"] @ p_new.T
        mu_old = np.asarray(before.inner_state.mu["tall"], np.float64)
        nu_old = np.asarray(before.inner_state.nu["tall"], np.float64)
        np.testing.assert_allclose(
            np.asarray(after.inner_state.mu["tall"]), B1 * mu_old + (1 - B1) * r, atol=1e-6
        )
        np.testing.assert_allclose(
            np.asarray(after.inner_state.nu["tall"]), B2 * nu_old + (1 - B2) * r * r, atol=1e-6
        )

    def test_reset_equals_fresh_inner_state(self):
        grads = _grad_seq(SHAPES, self.GAP + 1, seed=4)
        inner = optax.scale_by_adam(B1, B2)
        tx = lowrank.project_lowrank(inner, rank=2, update_proj_gap=self.GAP, on_refresh="reset")
        updates, states = _trajectory(tx, grads)
        after = states[self.GAP + 1]
        coords = {}
        for name, x in grads[self.GAP].items():
            b = after.bases[f"['{name}']"]
            coords[name] = x @ b.right.T if b.right is not None else b.left.T @ x
        fresh_out, fresh_state = inner.update(coords, inner.init(coords))
        test_utils.assert_trees_all_close(after.inner_state, fresh_state, atol=1e-6)
        self.assertEqual(int(after.inner_state.count), 1)
        for name in SHAPES:
            b = after.bases[f"['{name}']"]
            n = np.asarray(fresh_out[name])
            expected = n @ np.asarray(b.right) if b.right is not None else np.asarray(b.left) @ n
            np.testing.assert_allclose(updates[self.GAP][name], expected, atol=1e-5)


class ReprojectTest(parameterized.TestCase):
    GAP = 3

    def _span_grads(self, steps, seed):
        """Leaves whose column/row spaces stay fixed while their singular vectors turn."""
        rng = np.random.default_rng(seed)
        q_tall = np.linalg.qr(rng.standard_normal((4, 2)))[0]  # row space of 'tall_span'
        q_wide = np.linalg.qr(rng.standard_normal((3, 2)))[0]  # column space of 'wide_span'
        q_l = np.linalg.qr(rng.standard_normal((6, 2)))[0]
        q_r = np.linalg.qr(rng.standard_normal((5, 2)))[0]
        seq = _grad_seq(SHAPES, steps, seed=seed + 1)
        for g in seq:
            g["tall_span"] = (rng.standard_normal((6, 2)) @ q_tall.T).astype(np.float32)
            g["wide_span"] = (q_wide @ rng.standard_normal((2, 5))).astype(np.float32)
            g["full_span"] = (q_l @ rng.standard_normal((2, 2)) @ q_r.T).astype(np.float32)
        return seq

    @parameterized.parameters("std", "full")
    def test_rotation_formulas_and_preserved_first_moment(self, proj_type):
        steps = self.GAP + 2
        grads = self._span_grads(steps, seed=5)
        tx = lowrank.project_lowrank(
            lowrank.scale_by_adam_in_basis(B1, B2),
            rank=2,
            update_proj_gap=self.GAP,
            proj_type=proj_type,
            on_refresh="reproject",
        )
        _, states = _trajectory(tx, grads)
        before, after = states[self.GAP], states[self.GAP + 1]
        for name, g in grads[self.GAP].items():
            key = f"['{name}']"
            old, new = before.bases[key], after.bases[key]
            f64 = lambda x: None if x is None else np.asarray(x, np.float64)
            l_old, r_old, l_new, r_new = (
                f64(old.left),
                f64(old.right),
                f64(new.left),
                f64(new.right),
            )
            mu = np.asarray(before.inner_state.mu[name], np.float64)
            nu = np.asarray(before.inner_state.nu[name], np.float64)
            if l_new is not None:
                c_l = l_new.T @ l_old
                mu, nu = c_l @ mu, (c_l * c_l) @ nu
            if r_new is not None:
                c_r = r_new @ r_old.T
                mu, nu = mu @ c_r.T, nu @ (c_r * c_r).T
            r = g.astype(np.float64)
            if l_new is not None:
                r = l_new.T @ r
            if r_new is not None:
                r = r @ r_new.T
            mu_after = np.asarray(after.inner_state.mu[name])
            np.testing.assert_allclose(mu_after, B1 * mu + (1 - B1) * r, atol=1e-5, err_msg=name)
            np.testing.assert_allclose(
                np.asarray(after.inner_state.nu[name]), B2 * nu + (1 - B2) * r * r, atol=1e-5
            )
            self.assertTrue(np.all(np.asarray(after.inner_state.nu[name]) >= 0))
            # Leaves whose projected side(s) keep their span across the refresh.
            if (
                name
                in {"std": ("tall_span", "wide_span", "full_span"), "full": ("full_span",)}[
                    proj_type
                ]
            ):
                # New basis spans the old one: the back-projected first moment is kept,
                # i.e. back(P_new, C M_old) == back(P_old, M_old).
                rotated = (mu_after - (1 - B1) * r) / B1
                before_mu = np.asarray(before.inner_state.mu[name], np.float64)
                np.testing.assert_allclose(
                    back(rotated, side_of(proj_type, *g.shape), l_new, r_new),
                    back(before_mu, side_of(proj_type, *g.shape), l_old, r_old),
                    atol=1e-5,
                )

    def test_identical_to_keep_between_refreshes_bit_for_bit(self):
        steps = self.GAP + 1
        grads = _grad_seq(SHAPES, steps, seed=6)
        runs = {
            policy: _trajectory(
                lowrank.project_lowrank(
                    lowrank.scale_by_adam_in_basis(B1, B2),
                    rank=2,
                    update_proj_gap=self.GAP,
                    on_refresh=policy,
                ),
                grads,
            )
            for policy in ("keep", "reproject")
        }
        (u_keep, s_keep), (u_rep, s_rep) = runs["keep"], runs["reproject"]
        for t in range(self.GAP):  # steps 0 .. T-1: first refresh and no rotation
            test_utils.assert_trees_all_equal(u_keep[t], u_rep[t])
            test_utils.assert_trees_all_equal(s_keep[t + 1], s_rep[t + 1])
        # At the second refresh the two policies part.
        self.assertFalse(
            np.allclose(
                np.asarray(s_keep[-1].inner_state.mu["tall"]),
                np.asarray(s_rep[-1].inner_state.mu["tall"]),
            )
        )

    @parameterized.named_parameters(
        ("adam", optax.scale_by_adam()),
        ("trace", optax.trace(0.9)),
        ("chain_without_basis_aware", optax.chain(optax.scale_by_adam(), optax.scale(-1.0))),
    )
    def test_reproject_needs_basis_aware_inner(self, inner):
        tx = lowrank.project_lowrank(inner, rank=2, on_refresh="reproject")
        with pytest.raises(ValueError, match="reproject"):
            tx.init({"w": jnp.zeros((4, 3))})

    def test_reproject_accepts_basis_aware_inner_inside_a_chain(self):
        inner = optax.chain(lowrank.scale_by_adam_in_basis(), optax.scale(-1.0))
        tx = lowrank.project_lowrank(inner, rank=2, on_refresh="reproject")
        tx.init({"w": jnp.zeros((4, 3))})


def _leaves_with_paths(tree):
    return [
        (jax.tree_util.keystr(p), np.shape(x), np.asarray(x).dtype)
        for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


class MemoryTest(parameterized.TestCase):
    PARAMS = {"w": jnp.zeros((12, 8)), "v": jnp.zeros((5, 10)), "b": jnp.zeros((8,))}

    @parameterized.parameters("std", "reverse_std", "full", "left")
    def test_wrapper_state_arrays_and_bytes(self, proj_type):
        r = 3
        tx = lowrank.galore(optax.adam(1e-3), rank=r, proj_type=proj_type)
        state = tx.init(self.PARAMS)
        leaves = _leaves_with_paths(state)
        shapes = sorted(s for _, s, _ in leaves)
        matrices = {"w": (12, 8), "v": (5, 10)}
        expected = [(), (), (2,), (8,), (8,)]  # wrapper count, adam count, key, bias mu/nu
        per_matrix = 0
        for m, n in matrices.values():
            side = side_of(proj_type, m, n)
            if side in ("left", "full"):
                expected.append((m, r))
            if side in ("right", "full"):
                expected.append((r, n))
            coord = {"left": (r, n), "right": (m, r), "full": (r, r)}[side]
            expected += [coord, coord]
            per_matrix += {
                "left": r * m + 2 * r * n,
                "right": r * n + 2 * m * r,
                "full": r * (m + n) + 2 * r * r,
            }[side]
        self.assertEqual(shapes, sorted(expected))
        # No full-size array for a projected leaf.
        for _, s, _ in leaves:
            self.assertNotIn(s, matrices.values())
        nbytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(state))
        scalars = 4 + 4 + 8  # two int32 counts, one uint32[2] key
        self.assertEqual(nbytes, 4 * (per_matrix + 2 * 8) + scalars)
        if proj_type == "std":
            # r·min(m, n) + 2·r·max(m, n) per matrix (paper, Table 1).
            formula = sum(r * min(m, n) + 2 * r * max(m, n) for m, n in matrices.values())
            self.assertEqual(per_matrix, formula)

    def test_galore_adamw_state_bytes(self):
        r = 2
        tx = lowrank.galore_adamw(1e-3, weight_decay=0.1, rank=r)
        state = tx.init(self.PARAMS)
        formula = sum(r * min(m, n) + 2 * r * max(m, n) for m, n in [(12, 8), (5, 10)])
        # + bias moments, + counts of wrapper, Adam and decay (int32), + key (uint32[2]).
        expected = 4 * (formula + 2 * 8) + 3 * 4 + 8
        self.assertEqual(sum(np.asarray(x).nbytes for x in jax.tree.leaves(state)), expected)

    def test_chain_form_allocates_full_adam_state_and_emits_scaled_projection(self):
        r, scale = 2, 0.25
        chain = optax.chain(lowrank.galore(rank=r, scale=scale), optax.adam(1e-3))
        state = chain.init(self.PARAMS)
        adam_state = state[1][0]
        for name, p in self.PARAMS.items():
            self.assertEqual(adam_state.mu[name].shape, p.shape)
            self.assertEqual(adam_state.nu[name].shape, p.shape)
        grads = _grad_seq({"w": (12, 8), "v": (5, 10), "b": (8,)}, 1, seed=7)[0]
        filt = lowrank.galore(rank=r, scale=scale)
        upd, _ = jax.jit(filt.update)(grads, filt.init(self.PARAMS))
        _, vh = svd_basis(grads["w"], r)
        u, _ = svd_basis(grads["v"], r)
        np.testing.assert_allclose(upd["w"], scale * grads["w"] @ vh.T @ vh, atol=1e-5)
        np.testing.assert_allclose(upd["v"], scale * u @ u.T @ grads["v"], atol=1e-5)
        np.testing.assert_array_equal(upd["b"], grads["b"])

    @pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA CPU scheduling")
    def test_step_temporaries_hold_about_one_leaf_not_all(self):
        # XLA's CPU scheduler is breadth-first: without the sequencing hint in
        # project_lowrank every leaf's full-size back-projection is alive at once
        # (6 leaves here); with it, each leaf's update consumes its buffer first.
        leaf = (128, 512)
        params = {f"w{i}": jnp.zeros(leaf) for i in range(6)}
        tx = lowrank.galore_adamw(1e-3, rank=8, projector="randomized")

        def step(p, s, g):
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        state = jax.eval_shape(tx.init, params)
        compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes
        self.assertLess(temp, 2 * 128 * 512 * 4)

    def test_sequencing_hint_is_exact(self):
        # The hint adds an exact zero: sequenced and unsequenced leaves agree bit for bit
        # with the same leaf updated alone.
        grads = _grad_seq({"a": (7, 5), "b": (7, 5)}, 3, seed=21)
        same = [{"a": g["a"], "b": g["a"]} for g in grads]
        tx = lowrank.galore_adamw(1e-2, rank=2, update_proj_gap=2)
        updates, _ = _trajectory(tx, same)
        for u in updates:
            np.testing.assert_array_equal(u["a"], u["b"])


def _spy(record):
    """Inner transformation that multiplies by the extra arg ``factor`` and records extras."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, *, factor, **extra):
        record.append((params, sorted(extra)))
        return jax.tree.map(lambda x: x * factor, updates), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class ExtraArgsTest(absltest.TestCase):
    def test_forwarded_to_inner_without_recompilation(self):
        record = []
        tx = lowrank.project_lowrank(_spy(record), rank=2, scale=0.5)
        grads = _grad_seq({"w": (6, 4), "b": (4,)}, 1, seed=8)[0]
        params = jax.tree.map(jnp.ones_like, grads)
        state = tx.init(params)
        step = jax.jit(lambda g, s, f, o: tx.update(g, s, params, factor=f, other=o))
        upd, state = step(grads, state, 3.0, 1)
        self.assertEqual(record, [(None, ["other"])])  # params=None, extras forwarded
        _, vh = svd_basis(grads["w"], 2)
        np.testing.assert_allclose(upd["w"], 0.5 * 3.0 * grads["w"] @ vh.T @ vh, atol=1e-5)
        np.testing.assert_allclose(upd["b"], 3.0 * grads["b"], rtol=1e-6)
        with test_utils.log_compilations() as logs:
            upd2, _ = step(grads, state, 2.0, 5)
        self.assertEmpty(logs)
        np.testing.assert_allclose(upd2["b"], 2.0 * grads["b"], rtol=1e-6)

    def test_reserved_extra_args(self):
        tx = lowrank.project_lowrank(optax.scale_by_adam(), rank=2)
        params = {"w": jnp.ones((4, 3))}
        state = tx.init(params)
        for name in ("basis_rotation", "subspace"):
            with pytest.raises(TypeError, match=name):
                tx.update(params, state, **{name: None})


class JitStabilityTest(absltest.TestCase):
    def test_structure_dtypes_stable_and_no_recompile(self):
        tx = lowrank.galore_adamw(1e-2, weight_decay=0.1, rank=2, update_proj_gap=2)
        grads = _grad_seq({"w": (6, 4), "v": (3, 5), "b": (4,)}, 6, seed=9)
        params = jax.tree.map(jnp.asarray, grads[0])
        state = tx.init(params)
        signature = lambda s: (jax.tree.structure(s), _leaves_with_paths(s))
        init_sig = signature(state)

        @jax.jit
        def step(p, s, g):
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        for t, g in enumerate(grads):
            if t == 4:
                with test_utils.log_compilations() as logs:
                    params, state = step(params, state, g)
                self.assertEmpty(logs, "update recompiled")
            else:
                params, state = step(params, state, g)
            self.assertEqual(signature(state), init_sig)
        self.assertTrue(all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params)))


class DtypeTest(absltest.TestCase):
    # The randomized projector on bf16 is covered by test_linalg (decomposition) and the
    # conformance suite's bf16 dtype-preservation body.
    def test_bf16_params(self, projector="svd"):
        grads = jax.tree.map(
            lambda x: jnp.asarray(x, jnp.bfloat16),
            _grad_seq({"w": (6, 4), "v": (3, 5), "b": (4,)}, 1, seed=10)[0],
        )
        params = jax.tree.map(jnp.ones_like, grads)
        tx = lowrank.galore_adamw(
            1e-2, weight_decay=0.1, rank=2, update_proj_gap=2, projector=projector
        )
        state = tx.init(params)
        init_dtypes = [d for _, _, d in _leaves_with_paths(state)]
        step = jax.jit(tx.update)
        for _ in range(3):
            updates, state = step(grads, state, params)
            params = optax.apply_updates(params, updates)
        self.assertEqual([d for _, _, d in _leaves_with_paths(state)], init_dtypes)
        proj_state = _find(state, lowrank.ProjectLowrankState)
        for basis in proj_state.bases.values():
            for x in basis:
                if x is not None:
                    self.assertEqual(x.dtype, jnp.bfloat16)
                    self.assertTrue(np.all(np.isfinite(np.asarray(x, np.float32))))
        for name in ("w", "v", "b"):
            self.assertEqual(updates[name].dtype, jnp.bfloat16)
            self.assertEqual(params[name].dtype, jnp.bfloat16)
            self.assertEqual(proj_state.inner_state.mu[name].dtype, jnp.bfloat16)
            self.assertTrue(np.all(np.isfinite(np.asarray(params[name], np.float32))))


class MixedDtypeTest(absltest.TestCase):
    def test_float32_gradients_for_bf16_params(self):
        # Bases are stored in the param dtype; a refresh (and a 'reset') must not change
        # the state's dtypes when the gradients come in another dtype.
        params = {"w": jnp.ones((6, 4), jnp.bfloat16), "b": jnp.ones((4,), jnp.bfloat16)}
        grads = _grad_seq({"w": (6, 4), "b": (4,)}, 3, seed=15)
        tx = lowrank.project_lowrank(
            lowrank.scale_by_adam_in_basis(), rank=2, update_proj_gap=2, on_refresh="reset"
        )
        updates, states = _trajectory(tx, grads, params)
        dtypes = lambda s: [x.dtype for x in jax.tree.leaves(s)]
        for s in states[1:]:
            self.assertEqual(dtypes(s), dtypes(states[0]))
        self.assertEqual(states[-1].bases["['w']"].right.dtype, jnp.bfloat16)
        self.assertTrue(all(np.all(np.isfinite(u["w"])) for u in updates))


# Static arguments as the galore_adamw docstring lists them.
GALORE_ADAMW_STATIC = (
    "rank",
    "update_proj_gap",
    "proj_type",
    "projector",
    "on_refresh",
    "dimension_numbers",
    "mask",
    "weight_decay_mask",
    "gradient_accumulation_steps",
    "ema_overwrite_frequency",
    "use_ema",
)


# The integer and callable arguments the docstring must list as static; strings,
# booleans and Projector objects pass through inject_hyperparams unlisted.
GALORE_ADAMW_MUST_BE_STATIC = (
    "rank",
    "update_proj_gap",
    "dimension_numbers",
    "mask",
    "weight_decay_mask",
    "gradient_accumulation_steps",
    "ema_overwrite_frequency",
    "state_bits",
    "state_block_size",
    "state_min_size",
)


class InjectHyperparamsTest(parameterized.TestCase):
    def test_docstring_lists_the_static_args(self):
        doc = " ".join(lowrank.galore_adamw.__doc__.split())
        start = doc.index("Static arguments for :func:`optax.inject_hyperparams`")
        listing = doc[start : doc.index("are injectable", start)]
        for name in GALORE_ADAMW_MUST_BE_STATIC:
            self.assertIn(f"``{name}``", listing)

    def test_strings_booleans_and_projectors_need_no_listing(self):
        # What the docstring promises: only the integers and callables are listed.
        grads = _grad_seq({"w": (6, 4), "b": (4,)}, 3, seed=12)
        params = jax.tree.map(jnp.ones_like, grads[0])
        kwargs = dict(
            rank=2,
            update_proj_gap=2,
            proj_type="left",
            on_refresh="reproject",
            projector=lowrank.randomized_projector(2, 1, seed=3),
            use_ema=True,
        )
        injected = optax.inject_hyperparams(
            lowrank.galore_adamw, static_args=("rank", "update_proj_gap")
        )(learning_rate=0.05, **kwargs)
        plain = lowrank.galore_adamw(0.05, **kwargs)
        state, plain_state = injected.init(params), plain.init(params)
        for g in grads:
            u_inj, state = jax.jit(injected.update)(g, state, params)
            u_plain, plain_state = jax.jit(plain.update)(g, plain_state, params)
            # rtol as in test_learning_rate_is_injectable: injected b2 is float32.
            test_utils.assert_trees_all_close(u_inj, u_plain, rtol=1e-4, atol=1e-7)

    @parameterized.parameters(0.0, 0.1)
    def test_learning_rate_is_injectable(self, weight_decay):
        grads = _grad_seq({"w": (6, 4), "b": (4,)}, 3, seed=11)
        params = jax.tree.map(jnp.ones_like, grads[0])
        kwargs = dict(weight_decay=weight_decay, rank=2, update_proj_gap=2)
        injected = optax.inject_hyperparams(lowrank.galore_adamw, static_args=GALORE_ADAMW_STATIC)(
            learning_rate=0.1, **kwargs
        )
        # Eager init and a jitted update: the usual training-loop pattern.
        state = injected.init(params)
        state.hyperparams["learning_rate"] = jnp.asarray(0.05)
        plain = lowrank.galore_adamw(0.05, **kwargs)
        plain_state = plain.init(params)
        step_inj, step_plain = jax.jit(injected.update), jax.jit(plain.update)
        for g in grads:
            u_inj, state = step_inj(g, state, params)
            u_plain, plain_state = step_plain(g, plain_state, params)
            # Injected b1/b2/eps are float32 arrays where the plain alias computes
            # 1 - b2 in float64 first: (1 - 0.999f) differs from 0.001 by 5e-5 relative.
            test_utils.assert_trees_all_close(u_inj, u_plain, rtol=1e-4, atol=1e-7)
        self.assertAlmostEqual(float(state.hyperparams["learning_rate"]), 0.05)


class DegenerateInputTest(parameterized.TestCase):
    # The randomized projector reads usability from its sketch, the SVD from a scan
    # of the gradient: both must keep the previous basis.
    @parameterized.parameters("svd", "randomized")
    def test_zero_gradient(self, projector):
        gap = 2
        seq = _grad_seq({"w": (6, 4), "v": (3, 5)}, 5, seed=12)
        seq[0] = jax.tree.map(np.zeros_like, seq[0])  # zero at the first refresh
        seq[4] = jax.tree.map(np.zeros_like, seq[4])  # zero at a later refresh
        tx = lowrank.project_lowrank(
            optax.scale_by_adam(), rank=2, update_proj_gap=gap, projector=projector
        )
        updates, states = _trajectory(tx, seq)
        # Step 0: no NaN; the basis falls back to the first r canonical unit vectors; zero update.
        np.testing.assert_array_equal(np.asarray(states[1].bases["['w']"].right), np.eye(2, 4))
        np.testing.assert_array_equal(np.asarray(states[1].bases["['v']"].left), np.eye(3, 2))
        for name in ("w", "v"):
            np.testing.assert_array_equal(updates[0][name], 0.0)
        # Step 4 (refresh with a zero gradient) keeps the basis computed at step 2.
        for key in ("['w']", "['v']"):
            for a, b in zip(
                _basis_arrays(states[3], key), _basis_arrays(states[5], key), strict=True
            ):
                np.testing.assert_array_equal(a, b)
        for s in states:
            for x in jax.tree.leaves(s):
                self.assertTrue(np.all(np.isfinite(np.asarray(x, np.float64))))

    @parameterized.parameters("svd", "randomized")
    def test_nan_gradient_keeps_basis_and_apply_if_finite_skips(self, projector):
        gap = 2
        seq = _grad_seq({"w": (6, 4), "b": (4,)}, 4, seed=13)
        seq[2]["w"][1, 2] = np.nan  # at a refresh step
        tx = lowrank.project_lowrank(
            optax.scale_by_adam(), rank=2, update_proj_gap=gap, projector=projector
        )
        updates, states = _trajectory(tx, seq)
        np.testing.assert_array_equal(
            np.asarray(states[3].bases["['w']"].right), np.asarray(states[2].bases["['w']"].right)
        )
        self.assertTrue(np.all(np.isfinite(np.asarray(states[3].bases["['w']"].right))))
        # Documented: NaN in, NaN out in the update (as optax.adam) ...
        self.assertTrue(np.any(np.isnan(updates[2]["w"])))
        # ... and optax.apply_if_finite skips the step.
        safe = optax.apply_if_finite(tx, max_consecutive_errors=3)
        s_updates, s_states = _trajectory(safe, seq)
        for name in ("w", "b"):
            np.testing.assert_array_equal(s_updates[2][name], 0.0)
        test_utils.assert_trees_all_equal(s_states[3].inner_state, s_states[2].inner_state)
        self.assertEqual(int(s_states[3].total_notfinite), 1)
        self.assertTrue(all(np.all(np.isfinite(u[k])) for u in s_updates for k in u))
        test_utils.assert_trees_all_close(s_updates[:2], updates[:2])

    @parameterized.product(
        projector=("svd", "randomized"),
        proj_type=("std", "reverse_std", "full"),
        bad=(np.nan, np.inf, -np.inf),
    )
    def test_non_finite_gradient_keeps_every_basis(self, projector, proj_type, bad):
        seq = _grad_seq({"w": (6, 4), "v": (3, 5)}, 3, seed=15)
        seq[2]["w"][4, 1] = bad  # at the second refresh (gap 2)
        seq[2]["v"][0, 3] = bad
        tx = lowrank.project_lowrank(
            optax.scale_by_adam(),
            rank=2,
            update_proj_gap=2,
            projector=projector,
            proj_type=proj_type,
        )
        _, states = _trajectory(tx, seq)
        for key in ("['w']", "['v']"):
            before, after = _basis_arrays(states[2], key), _basis_arrays(states[3], key)
            self.assertNotEmpty(after)
            for a, b in zip(before, after, strict=True):
                np.testing.assert_array_equal(a, b)
                self.assertTrue(np.all(np.isfinite(b)))

    def test_rank_larger_than_matrix_is_clipped(self):
        grads = _grad_seq({"w": (6, 4), "v": (3, 5)}, 1, seed=14)
        tx = lowrank.project_lowrank(optax.trace(0.0), rank=10, scale=2.0)
        updates, states = _trajectory(tx, grads)
        self.assertEqual(states[1].bases["['w']"].right.shape, (4, 4))
        self.assertEqual(states[1].bases["['v']"].left.shape, (3, 3))
        self.assertEqual(states[1].inner_state.trace["w"].shape, (6, 4))
        self.assertEqual(states[1].inner_state.trace["v"].shape, (3, 5))
        for name in ("w", "v"):  # lossless projection, still scaled
            np.testing.assert_allclose(updates[0][name], 2.0 * grads[0][name], atol=1e-5)


class BadInputTest(parameterized.TestCase):
    @parameterized.parameters(
        ("rank", 0),
        ("rank", -1),
        ("rank", 1.5),
        ("rank", "2"),
        ("rank", True),
        ("update_proj_gap", 0),
        ("update_proj_gap", 2.0),
        ("scale", 0.0),
        ("scale", -1.0),
        ("proj_type", "random"),
        ("projector", "qr"),
        ("on_refresh", "rotate"),
    )
    def test_project_lowrank_and_galore(self, name, value):
        kwargs = {"rank": 2, name: value}
        for factory in (lowrank.project_lowrank, lowrank.galore):
            with pytest.raises(ValueError, match=f"`{name}`"):
                factory(**kwargs)

    @parameterized.parameters(
        ("projector", "qr", ("'svd'", "'randomized'", "lowrank.svd_projector()")),
        ("on_refresh", "rotate", ("keep", "reset", "reproject")),
    )
    def test_choices_are_listed(self, name, value, allowed):
        with pytest.raises(ValueError) as err:
            lowrank.project_lowrank(rank=2, **{name: value})
        for choice in allowed:
            self.assertIn(
                choice if choice.startswith(("'", "lowrank")) else repr(choice), str(err.value)
            )

    @parameterized.parameters(
        ("rank", 0),
        ("update_proj_gap", -3),
        ("scale", 0.0),
        ("proj_type", "random"),
        ("projector", "qr"),
        ("on_refresh", "rotate"),
        ("b1", 1.0),
        ("b1", -0.1),
        ("b2", 1.0),
        ("b2", 1.5),
        ("eps", -1e-8),
        ("weight_decay", -0.1),
        ("learning_rate", -1.0),
    )
    def test_galore_adamw(self, name, value):
        kwargs = {"learning_rate": 1e-3, "rank": 2, name: value}
        with pytest.raises(ValueError, match=f"`{name}`"):
            lowrank.galore_adamw(**kwargs)


class TreeMapParamsTest(absltest.TestCase):
    PARAMS = {"w": jnp.zeros((8, 4)), "v": jnp.zeros((3, 6)), "b": jnp.zeros((4,))}
    # PartitionSpec-like placeholders, one per parameter.
    SPECS = {
        "w": jax.sharding.PartitionSpec("w_rows", "w_cols"),
        "v": jax.sharding.PartitionSpec("v_rows", "v_cols"),
        "b": jax.sharding.PartitionSpec("b_axis"),
    }

    def _assigned(self, tx):
        """(spec, array shape) of every state array after optax.tree_map_params."""
        state = tx.init(self.PARAMS)
        is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
        mapped = optax.tree_map_params(
            tx,
            lambda _, spec: spec,
            state,
            self.SPECS,
            transform_non_params=lambda _: "replicated",
            is_leaf=is_spec,
        )
        # ``mapped`` is a prefix of ``state`` (whole subtrees may map to one value).
        pairs = []
        jax.tree.map(
            lambda spec, sub: pairs.extend((spec, np.shape(x)) for x in jax.tree.leaves(sub)),
            mapped,
            state,
            is_leaf=lambda x: is_spec(x) or isinstance(x, str),
        )
        return pairs

    def _check_no_param_spec_on_other_shapes(self, pairs):
        by_spec = {tuple(spec): self.PARAMS[k].shape for k, spec in self.SPECS.items()}
        for spec, shape in pairs:
            if spec != "replicated":
                self.assertEqual(shape, by_spec[tuple(spec)], f"{spec} given to {shape}")

    def test_galore_wrapper_and_alias(self):
        for tx in (
            lowrank.galore(optax.adam(1e-3), rank=2),
            lowrank.galore_adamw(1e-3, weight_decay=0.1, rank=2),
            lowrank.galore(lowrank.scale_by_adam_in_basis(), rank=2, on_refresh="reproject"),
        ):
            pairs = self._assigned(tx)
            self.assertNotEmpty(pairs)
            self._check_no_param_spec_on_other_shapes(pairs)

    def test_check_detects_optax_contrib_galore(self):
        # The check is not vacuous: optax.contrib.galore's projectors and low-rank
        # moments receive the parameters' specs (galore.md §5).
        with self.assertRaises(AssertionError):
            self._check_no_param_spec_on_other_shapes(
                self._assigned(optax.contrib.galore(1e-3, rank=2))
            )

    def test_chain_form_gives_full_size_adam_state_the_param_spec(self):
        tx = optax.chain(lowrank.galore(rank=2), optax.adam(1e-3))
        pairs = self._assigned(tx)
        self._check_no_param_spec_on_other_shapes(pairs)
        assigned = [shape for spec, shape in pairs if spec != "replicated"]
        # Adam's mu and nu of each of the three params.
        self.assertEqual(sorted(assigned), sorted([(8, 4), (3, 6), (4,)] * 2))


@dataclasses.dataclass(frozen=True)
class _Delegating(lowrank.Projector):
    """A user-defined projector: the SVD's factors, optionally flagged unusable."""

    usable: bool

    def factors(self, g, plan, key):
        found = lowrank.svd_projector().factors(g, plan, key)
        return found._replace(usable=found.usable & self.usable)


class ProjectorInterfaceTest(parameterized.TestCase):
    GRADS = _grad_seq({"w": (6, 4), "v": (3, 5), "f": (5, 5), "b": (4,)}, 3, seed=31)

    def _run(self, **kw):
        tx = lowrank.project_lowrank(optax.scale_by_adam(), rank=2, update_proj_gap=2, **kw)
        return _trajectory(tx, self.GRADS)

    def test_objects_are_hashable_values(self):
        self.assertEqual(lowrank.randomized_projector(3, 0), lowrank.randomized_projector(3, 0))
        self.assertNotEqual(lowrank.randomized_projector(3, 0), lowrank.randomized_projector(3, 1))
        self.assertLen({lowrank.svd_projector(), lowrank.svd_projector()}, 1)
        self.assertFalse(callable(lowrank.randomized_projector()))

    @parameterized.parameters(
        ("svd", lowrank.svd_projector()), ("randomized", lowrank.randomized_projector())
    )
    def test_strings_are_shorthands(self, name, obj):
        by_name, by_obj = self._run(projector=name), self._run(projector=obj)
        test_utils.assert_trees_all_equal(by_name, by_obj)

    def test_seed_lives_in_the_randomized_projector(self):
        # No oversampling: a sketch of 2 columns of a rank-4 gradient depends on Ω.
        a = self._run(projector=lowrank.randomized_projector(0, 0, seed=1))[1][-1]
        b = self._run(projector=lowrank.randomized_projector(0, 0, seed=2))[1][-1]
        self.assertFalse(np.array_equal(a.key, b.key))
        self.assertFalse(np.allclose(a.bases["['w']"].right, b.bases["['w']"].right))

    def test_user_defined_projector(self):
        # 'full' asks the projector for both sides.
        _, svd_states = self._run(projector="svd", proj_type="full")
        _, own_states = self._run(projector=_Delegating(True), proj_type="full")
        test_utils.assert_trees_all_equal(svd_states[-1].bases, own_states[-1].bases)
        # The flag is the one way to say "unusable": the canonical basis stays.
        _, states = self._run(projector=_Delegating(False), proj_type="full")
        test_utils.assert_trees_all_equal(states[-1].bases, states[0].bases)

    def test_projector_passes_inject_hyperparams_unlisted(self):
        proj = lowrank.randomized_projector(oversampling=2, power_iterations=0)
        params = jax.tree.map(jnp.ones_like, self.GRADS[0])
        injected = optax.inject_hyperparams(
            lowrank.galore_adamw, static_args=("rank", "update_proj_gap")
        )(learning_rate=0.1, rank=2, projector=proj)
        plain = lowrank.galore_adamw(0.1, rank=2, projector=proj)
        u_inj, _ = jax.jit(injected.update)(self.GRADS[0], injected.init(params), params)
        u_plain, _ = jax.jit(plain.update)(self.GRADS[0], plain.init(params), params)
        test_utils.assert_trees_all_close(u_inj, u_plain, rtol=1e-4, atol=1e-7)

    @parameterized.parameters(
        ("oversampling", -1), ("power_iterations", -1), ("power_iterations", 1.5), ("seed", -1)
    )
    def test_randomized_projector_validates(self, name, value):
        with pytest.raises(ValueError, match=f"`{name}`"):
            lowrank.randomized_projector(**{name: value})

    def test_old_keywords_are_gone(self):
        for name in ("oversampling", "power_iterations", "seed"):
            with pytest.raises(TypeError):
                lowrank.project_lowrank(rank=2, **{name: 1})
            with pytest.raises(TypeError):
                lowrank.galore_adamw(1e-3, rank=2, **{name: 1})


if __name__ == "__main__":
    absltest.main()
