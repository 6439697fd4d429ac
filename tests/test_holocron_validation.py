"""Construction-time validation of the holocron family (spec section 4)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lowrank_optax as lowrank

ADAM_LIKE = ["lamb", "ralars", "tadam", "adabelief", "adamp", "adan", "ademamix"]
ALIASES = ["lars", *ADAM_LIKE]
BETAS = {"lamb": 2, "ralars": 2, "tadam": 2, "adabelief": 2, "adamp": 2, "adan": 3, "ademamix": 3}


def make(name, **kwargs):
    return getattr(lowrank, name)(**{"learning_rate": 1e-3, **kwargs})


@pytest.mark.parametrize("name", ALIASES)
@pytest.mark.parametrize("lr", [-1e-3, -1, float("nan")])
def test_invalid_learning_rate(name, lr) -> None:
    with pytest.raises(ValueError, match="Invalid learning rate"):
        make(name, learning_rate=lr)


@pytest.mark.parametrize("name", ALIASES)
def test_negative_weight_decay(name) -> None:
    with pytest.raises(ValueError, match="Invalid weight_decay value"):
        make(name, weight_decay=-1e-4)


@pytest.mark.parametrize("name", ADAM_LIKE)
def test_negative_eps(name) -> None:
    with pytest.raises(ValueError, match="Invalid epsilon value"):
        make(name, eps=-1e-8)


@pytest.mark.parametrize("name", ADAM_LIKE)
@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_betas_outside_unit_interval(name, value) -> None:
    for i in range(1, BETAS[name] + 1):
        with pytest.raises(ValueError, match=f"Invalid b{i} value"):
            make(name, **{f"b{i}": value})


def test_adabelief_negative_eps_root() -> None:
    with pytest.raises(ValueError, match="eps_root"):
        lowrank.adabelief(1e-3, eps_root=-1.0)


def test_lars_momentum_and_nesterov_rules() -> None:
    with pytest.raises(ValueError, match="Invalid momentum value"):
        lowrank.lars(1e-3, momentum=-0.1)
    msg = "Nesterov momentum requires a momentum and zero dampening"
    with pytest.raises(ValueError, match=msg):
        lowrank.lars(1e-3, nesterov=True)
    with pytest.raises(ValueError, match=msg):
        lowrank.lars(1e-3, momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(ValueError, match=msg):
        lowrank.trace_dampened(0.0, nesterov=True)
    with pytest.raises(ValueError, match="trust_coefficient"):
        lowrank.lars(1e-3, trust_coefficient=0.0)


@pytest.mark.parametrize("name", ["lars", "lamb", "ralars"])
@pytest.mark.parametrize("clip", [(-1.0, 10.0), (2.0, 1.0), (1.0,), 3.0])
def test_invalid_scale_clip(name, clip) -> None:
    with pytest.raises(ValueError, match="Invalid scale_clip"):
        make(name, scale_clip=clip)


def test_tadam_specific_checks() -> None:
    with pytest.raises(ValueError, match="Invalid b1 value: 0"):
        lowrank.tadam(1e-3, b1=0.0)
    with pytest.raises(ValueError, match="Invalid b1 value"):
        lowrank.tadam(1e-3, b1=0)  # the int zero too
    for dof in (0.0, -2):
        with pytest.raises(ValueError, match="Invalid dof value"):
            lowrank.tadam(1e-3, dof=dof)
    lowrank.tadam(1e-3, b1=0.3)  # b1 < 1/2 is accepted (documented warning)


def test_adamp_negative_delta() -> None:
    with pytest.raises(ValueError, match="Invalid delta value"):
        lowrank.adamp(1e-3, delta=-0.1)


@pytest.mark.parametrize("wrapper", [lowrank.lookahead, lowrank.scout])
def test_wrapper_checks(wrapper) -> None:
    inner = optax.sgd(0.1)
    for rate in (-0.1, 1.1, float("nan")):
        with pytest.raises(ValueError, match="expected positive float lower than 1 as sync_rate"):
            wrapper(inner, sync_rate=rate)
    for period in (0, -1, 2.0, True, "6"):
        with pytest.raises(ValueError, match="expected positive integer as sync_period"):
            wrapper(inner, sync_period=period)
    wrapper(inner, sync_rate=0, sync_period=np.int64(3))
    wrapper(inner, sync_rate=1, sync_period=1)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        (
            "lars",
            dict(
                learning_rate=1,
                momentum=0,
                dampening=0,
                weight_decay=1,
                trust_coefficient=1,
                scale_clip=(0, 10),
            ),
        ),
        ("lamb", dict(learning_rate=1, b1=0, b2=0, eps=0, weight_decay=0, scale_clip=(0, 10))),
        ("ralars", dict(learning_rate=1, b1=0, b2=0, eps=0, weight_decay=1, scale_clip=(1, 2))),
        ("tadam", dict(learning_rate=1, b2=0, eps=1, weight_decay=0, dof=2)),
        ("adabelief", dict(learning_rate=1, b1=0, b2=0, eps=1, eps_root=0, weight_decay=1)),
        ("adamp", dict(learning_rate=1, b1=0, b2=0, eps=1, weight_decay=1, delta=0)),
        ("adan", dict(learning_rate=1, b1=0, b2=0, b3=0, eps=1, weight_decay=1)),
        ("ademamix", dict(learning_rate=1, b1=0, b2=0, b3=0, alpha=2, eps=1, weight_decay=1)),
    ],
)
def test_int_hyperparameters_are_accepted_and_give_float_updates(name, kwargs) -> None:
    as_float = {
        k: (tuple(map(float, v)) if isinstance(v, tuple) else float(v)) for k, v in kwargs.items()
    }
    params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.1, -0.2])}
    grads = jax.tree.map(lambda p: 0.3 * p + 0.1, params)
    results = []
    for kw in (kwargs, as_float):
        tx = make(name, **kw)
        updates, _ = tx.update(grads, tx.init(params), params)  # eager: no compile
        for leaf in jax.tree.leaves(updates):
            assert leaf.dtype == jnp.float32
            assert np.all(np.isfinite(leaf))
        results.append(updates)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), *results)


def test_schedules_and_injected_values_are_not_validated() -> None:
    # Schedules (callables) are not checked at construction.
    lowrank.lamb(lambda step: -1.0)
    lowrank.ademamix(1e-3, b3=lambda step: 0.99, alpha=lambda step: 5.0)
    # Injected hyperparameters arrive as traced arrays inside update.
    tx = optax.inject_hyperparams(lowrank.adan)(learning_rate=1e-3, weight_decay=0.1)
    params = jnp.ones(3)
    state = tx.init(params)
    updates, _ = jax.jit(tx.update)(jnp.ones(3), state, params)
    assert np.all(np.isfinite(updates))
