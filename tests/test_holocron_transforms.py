"""Degenerate inputs, dtypes, sharding metadata, jit/pmap, wrappers' plumbing,
Flax integration and the optax cross-checks of the holocron family."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import lowrank_optax as lowrank
from lowrank_optax._src.sharding import state_partition_specs

ADAM = optax.adam(1e-2)
FACTORIES = {
    "lars": lambda: lowrank.lars(0.1, momentum=0.9, weight_decay=1e-2),
    "lars_nesterov": lambda: lowrank.lars(0.1, momentum=0.9, nesterov=True),
    "lamb": lambda: lowrank.lamb(0.1, weight_decay=1e-2),
    "lamb_eps0": lambda: lowrank.lamb(0.1, eps=0.0),
    "ralars": lambda: lowrank.ralars(0.1, weight_decay=1e-2),
    "ralars_forced": lambda: lowrank.ralars(0.1, eps=0.0, force_adaptive_momentum=True),
    "tadam": lambda: lowrank.tadam(0.1, weight_decay=1e-2, amsgrad=True),
    "tadam_eps0": lambda: lowrank.tadam(0.1, eps=0.0),
    "adabelief": lambda: lowrank.adabelief(0.1, weight_decay=1e-2, amsgrad=True),
    "adabelief_eps0": lambda: lowrank.adabelief(0.1, eps=0.0, eps_root=0.0),
    "adamp": lambda: lowrank.adamp(0.1, weight_decay=1e-2, amsgrad=True),
    "adamp_eps0": lambda: lowrank.adamp(0.1, eps=0.0),
    "adan": lambda: lowrank.adan(0.1, weight_decay=1e-2, amsgrad=True),
    "adan_eps0": lambda: lowrank.adan(0.1, eps=0.0),
    "ademamix": lambda: lowrank.ademamix(0.1, weight_decay=1e-2),
    "lookahead": lambda: lowrank.lookahead(ADAM, 0.5, 2),
    "scout": lambda: lowrank.scout(ADAM, 0.5, 2),
    "scout_k1": lambda: lowrank.scout(ADAM, 0.5, 1),
}
MAIN = [
    "lars",
    "lamb",
    "ralars",
    "tadam",
    "adabelief",
    "adamp",
    "adan",
    "ademamix",
    "lookahead",
    "scout",
]


def _params(dtype=jnp.float32):
    return {"w": jnp.array([[1.0, -2.0, 0.5], [0.3, 0.0, -1.0]], dtype), "b": jnp.zeros(3, dtype)}


def _steps(tx, params, grads_fn, n):
    @jax.jit
    def step(p, s):
        u, s = tx.update(grads_fn(p), s, p)
        return optax.apply_updates(p, u), s, u

    s = tx.init(params)
    out = []
    for _ in range(n):
        params, s, u = step(params, s)
        out.append(u)
    return params, s, out


def test_zero_params_and_zero_grads_are_finite_under_debug_nans() -> None:
    txs = {name: FACTORIES[name]() for name in FACTORIES}

    @jax.jit
    def run_all(params, scale, offset):  # gradients scale * params + offset
        out = {}
        for name, tx in txs.items():
            p, s, ups = params, tx.init(params), []
            for _ in range(3):
                u, s = tx.update(jax.tree.map(lambda x: scale * x + offset, p), s, p)
                p = optax.apply_updates(p, u)
                ups.append(u)
            out[name] = ups
        return out

    zeros = jax.tree.map(jnp.zeros_like, _params())
    with jax.debug_nans(True):
        for params, scale, offset in [
            (zeros, 0.0, 0.0),  # every norm is 0
            (zeros, 1.0, 0.5),  # zero params only
            (_params(), 0.0, 0.0),  # zero gradients only
        ]:
            results = run_all(params, jnp.float32(scale), jnp.float32(offset))
            for name, updates in results.items():
                for leaf in jax.tree.leaves(updates):
                    assert np.all(np.isfinite(leaf)), name


@pytest.mark.parametrize("name", MAIN)
def test_state_arrays_shard_like_params(name) -> None:
    tx = FACTORIES[name]()
    params = {"w": jnp.ones((4, 2)), "b": jnp.ones(2)}
    specs = {"w": P("data", None), "b": P(None)}
    state = jax.eval_shape(tx.init, params)
    state_specs = optax.tree_map_params(
        tx,
        lambda _, spec: spec,
        state,
        specs,
        transform_non_params=lambda _: P(),
        is_leaf=lambda x: isinstance(x, P),
    )
    n_param_specs = 0
    for leaf, spec in zip(
        jax.tree.leaves(state),
        jax.tree.leaves(state_specs, is_leaf=lambda x: isinstance(x, P)),
        strict=True,
    ):
        assert len(spec) in (0, leaf.ndim), (leaf.shape, spec)
        if len(spec):
            n_param_specs += 1
        else:
            assert leaf.ndim <= 1  # counts and per-leaf scalar vectors only
    assert n_param_specs >= 2 or name == "lars"  # lars(momentum): trace buffer
    if name in ("lookahead", "scout"):  # slow weights and statistics are param trees
        assert n_param_specs >= 2 * (5 if name == "scout" else 1) + 4

    # The library's sharding helper (sharding-in-types propagation) agrees.
    def canonical(tree):  # P(None,) and P() both mean replicated
        leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, P))
        return [tuple(spec) if any(a is not None for a in spec) else () for spec in leaves]

    assert canonical(state_partition_specs(tx, params, specs)) == canonical(state_specs)


def test_explicit_mesh_update_keeps_state_sharding_types() -> None:
    mesh = jax.make_mesh((1,), ("data",), axis_types=(AxisType.Explicit,))
    specs = {"w": P("data", None), "b": P(None)}
    txs = {name: FACTORIES[name]() for name in MAIN}
    with jax.set_mesh(mesh):
        params = jax.tree.map(
            lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), _params(jnp.float32), specs
        )
        init = jax.jit(lambda p: {n: tx.init(p) for n, tx in txs.items()})
        update = jax.jit(lambda s, p: {n: tx.update(p, s[n], p) for n, tx in txs.items()})
        states = init(params)
        out = update(states, params)
    for name in MAIN:
        updates, new_state = out[name]
        assert jax.tree.map(jax.typeof, new_state) == jax.tree.map(jax.typeof, states[name]), name
        assert jax.typeof(updates["w"]) == jax.typeof(params["w"]), name


PMAPPED = ["lamb", "tadam", "scout"]  # a trust ratio, per-leaf scalars, a lax.cond wrapper
DTYPES = {"bf16": jnp.bfloat16, "f32": jnp.float32}


def test_jit_donated_pmap_and_dtypes() -> None:
    """One donated jit of all ten (mixed bf16/f32 leaves), pmap of three of them."""
    txs = {name: FACTORIES[name]() for name in MAIN}
    mixed = {key: _params(dtype) for key, dtype in DTYPES.items()}

    def step_all(ps, ss, axis=None):
        new_p, new_s, ups = {}, {}, {}
        for name in ps:
            g = jax.tree.map(lambda x: 0.1 * x + 0.2, ps[name])
            if axis is not None:
                g = jax.lax.pmean(g, axis)
            ups[name], new_s[name] = txs[name].update(g, ss[name], ps[name])
            new_p[name] = optax.apply_updates(ps[name], ups[name])
        return new_p, new_s, ups

    init_all = lambda ps: {n: txs[n].init(ps[n]) for n in ps}  # noqa: E731
    p = {name: jax.tree.map(jnp.copy, mixed) for name in MAIN}  # donated: no shared buffers
    s = init_all(p)
    rep = jax.tree.map(lambda x: x[None], {name: mixed for name in PMAPPED})
    srep = jax.pmap(init_all)(rep)
    donated = jax.jit(step_all, donate_argnums=(0, 1))
    pstep = jax.pmap(lambda p, s: step_all(p, s, "i"), axis_name="i")
    for _ in range(3):
        p, s, ups = donated(p, s)
        rep, srep, _ = pstep(rep, srep)
    for name in PMAPPED:
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(
                np.asarray(a[0], np.float32), np.asarray(b, np.float32), rtol=1e-2, atol=1e-5
            ),
            rep[name],
            p[name],
        )
    specs = {key: jax.tree.map(lambda _, k=key: k, mixed[key]) for key in DTYPES}
    for name in MAIN:
        for key, dtype in DTYPES.items():  # updates keep the param dtypes
            assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(ups[name][key])), name
            assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(p[name][key])), name
        assert all(np.all(np.isfinite(np.asarray(x, np.float32))) for x in jax.tree.leaves(ups))
        # every param-shaped array of the state keeps its parameter's dtype
        kinds = optax.tree_map_params(
            txs[name], lambda _, k: k, s[name], specs, transform_non_params=lambda _: "other"
        )
        checked = 0
        for leaf, kind in zip(jax.tree.leaves(s[name]), jax.tree.leaves(kinds), strict=True):
            if kind != "other":
                assert leaf.dtype == DTYPES[kind], (name, kind, leaf.dtype)
                checked += 1
        assert checked >= 2, name


@pytest.mark.parametrize("wrapper", [lowrank.lookahead, lowrank.scout])
def test_wrappers_forward_extra_args_and_keep_plain_params(wrapper) -> None:
    seen = []

    def update(updates, state, params=None, *, scale, **extra):
        del extra
        seen.append(scale)
        return jax.tree.map(lambda g: -scale * g, updates), state

    inner = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)
    tx = wrapper(inner, sync_rate=0.5, sync_period=2)
    params = _params()
    state = tx.init(params)
    updates, state = tx.update(params, state, params, scale=jnp.float32(0.1), unrelated=1)
    assert len(seen) == 1
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    np.testing.assert_allclose(updates["w"], -0.1 * params["w"])
    # chained, the extra arg still reaches the inner optimizer
    chained = optax.chain(optax.clip_by_global_norm(1.0), tx)
    chained.update(params, chained.init(params), params, scale=jnp.float32(0.1))
    assert len(seen) == 2


def test_lookahead_zero_sync_rate_returns_to_initial_params() -> None:
    tx = lowrank.lookahead(optax.adam(0.1), sync_rate=0.0, sync_period=3)
    params0 = _params()
    params, _, _ = _steps(tx, params0, lambda p: jax.tree.map(lambda x: x - 2.0, p), 6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), params, params0)


def test_scout_zero_gradient_element_and_period_one_keep_moving() -> None:
    def grads(p):
        return {"w": (p["w"] - 2.0).at[0, 0].set(0.0), "b": p["b"] - 1.0}

    for period in (1, 3):
        tx = lowrank.scout(optax.sgd(0.1), sync_rate=0.5, sync_period=period)
        params, _, _ = _steps(tx, _params(), grads, 6)
        assert np.abs(np.asarray(params["b"]) - 0.0).max() > 0.1  # did not revert to 0


def _apply(p, x):
    return x @ p["kernel"] + p["bias"]


def test_nnx_optimizer_and_linen_train_state() -> None:
    from flax import nnx
    from flax.training import train_state

    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, FACTORIES["scout"](), wrt=nnx.Param)

    def loss_fn(m):
        return jnp.sum(m(jnp.ones((4, 3))) ** 2)

    @nnx.jit
    def train_step(model, opt):
        opt.update(model, nnx.grad(loss_fn)(model))

    before = loss_fn(model)
    for _ in range(4):  # two Scout syncs
        train_step(model, opt)
    assert loss_fn(model) < before

    for name in ("lamb", "scout"):
        params = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}
        state = train_state.TrainState.create(apply_fn=_apply, params=params, tx=FACTORIES[name]())
        grads = jax.grad(lambda p: jnp.sum(_apply(p, jnp.ones((4, 3))) ** 2))(state.params)
        state = jax.jit(lambda s, g: s.apply_gradients(grads=g))(state, grads)
        assert jax.tree.structure(state.params) == jax.tree.structure(params)


# --- optax cross-checks (spec section 5) ---------------------------------------------


def _compare(ours, theirs, params=None, n=12, rtol=1e-5, atol=1e-6):
    params = (
        params
        if params is not None
        else {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.2, -0.1])}
    )

    def grads(p):
        return jax.tree.map(lambda x: jnp.sin(3 * x) + 0.3, p)

    p_ours, _, _ = _steps(ours, params, grads, n)
    p_theirs, _, _ = _steps(theirs, params, grads, n)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol), p_ours, p_theirs
    )


def test_matches_optax_lars_without_decay_and_clip() -> None:
    _compare(
        lowrank.lars(0.05, momentum=0.9, nesterov=True),
        optax.lars(0.05, trust_coefficient=1.0, momentum=0.9, nesterov=True),
    )


def test_matches_optax_lamb_with_same_eps() -> None:
    _compare(
        lowrank.lamb(0.05, eps=1e-6, weight_decay=1e-2),
        optax.lamb(0.05, eps=1e-6, weight_decay=1e-2),
    )


def test_matches_optax_adabelief_with_eps_root() -> None:
    _compare(lowrank.adabelief(0.05, eps=1e-16, eps_root=1e-16), optax.adabelief(0.05))


def test_matches_optax_adan_at_b2_half() -> None:
    _compare(lowrank.adan(0.05, b2=0.5), optax.adan(0.05, b2=0.5, eps_root=0.0))
    # elsewhere optax's (1 - b2) scaling of the gradient difference differs
    with pytest.raises(AssertionError):
        _compare(lowrank.adan(0.05), optax.adan(0.05, eps_root=0.0))


def test_matches_optax_contrib_ademamix_when_decoupled() -> None:
    kw = dict(b1=0.8, b2=0.99, b3=0.999, alpha=4.0, eps=1e-8)
    _compare(
        lowrank.ademamix(0.05, weight_decay=0.1, decoupled_weight_decay=True, **kw),
        optax.contrib.ademamix(0.05, weight_decay=0.1, **kw),
    )
    coupled = optax.chain(
        optax.add_decayed_weights(0.1),
        optax.contrib.scale_by_ademamix(**kw),
        optax.scale_by_learning_rate(0.05),
    )
    _compare(lowrank.ademamix(0.05, weight_decay=0.1, **kw), coupled)


def test_matches_optax_lookahead_on_lookahead_params() -> None:
    params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]])}
    grads = lambda p: jax.tree.map(lambda x: jnp.sin(3 * x) + 0.3, p)  # noqa: E731
    ours = lowrank.lookahead(optax.adam(0.05), 0.5, 3)
    theirs = optax.lookahead(optax.adam(0.05), sync_period=3, slow_step_size=0.5)

    @jax.jit
    def step(p, s, lp, ls):
        u, s = ours.update(grads(p), s, p)
        lu, ls = theirs.update(grads(lp.fast), ls, lp)
        return optax.apply_updates(p, u), s, optax.apply_updates(lp, lu), ls

    p, lp = params, optax.LookaheadParams.init_synced(params)
    s, ls = ours.init(p), theirs.init(lp)
    for _ in range(10):
        p, s, lp, ls = step(p, s, lp, ls)
        np.testing.assert_allclose(p["w"], lp.fast["w"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(s.slow["w"], lp.slow["w"], rtol=1e-6, atol=1e-6)


def test_adamp_equals_adam_when_never_projecting() -> None:
    # f = |theta|^2 / 2: the gradient is the weights, cosine 1, no projection.
    params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.2, -0.1])}
    ours, _, _ = _steps(lowrank.adamp(0.05), params, lambda p: p, 20)
    adam, _, _ = _steps(optax.adam(0.05, eps=1e-8), params, lambda p: p, 20)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), ours, adam)


def test_adamp_slows_norm_growth_on_scale_invariant_loss() -> None:
    target = jnp.array([0.6, -0.8, 0.0, 0.0])

    def grads(p):  # loss = -<w/|w|, target>: the gradient is orthogonal to w
        return jax.grad(lambda w: -jnp.dot(w / jnp.linalg.norm(w), target))(p)

    w0 = jnp.array([1.0, 0.5, -0.5, 0.2])
    wp, _, _ = _steps(lowrank.adamp(0.05), w0, grads, 30)
    wa, _, _ = _steps(optax.adam(0.05), w0, grads, 30)
    assert jnp.linalg.norm(wp) < jnp.linalg.norm(wa)
    assert jnp.dot(wp / jnp.linalg.norm(wp), target) > jnp.dot(w0 / jnp.linalg.norm(w0), target)


def test_adamp_inject_hyperparams_matches_plain() -> None:
    params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.2, -0.1])}
    grads = jax.tree.map(lambda x: jnp.sin(3 * x) + 0.3, params)
    kw = dict(learning_rate=1e-2, weight_decay=1e-2, delta=0.5)
    plain = lowrank.adamp(**kw)
    injected = optax.inject_hyperparams(lowrank.adamp)(**kw)
    u1, _ = jax.jit(plain.update)(grads, plain.init(params), params)
    u2, _ = jax.jit(injected.update)(grads, injected.init(params), params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), u1, u2)
