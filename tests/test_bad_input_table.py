"""Every public constructor on bad arguments and under ``optax.inject_hyperparams``.

Issue 14, "what must be shown": for every public alias, the named primitives
(``project_lowrank``, ``scale_by_adam_in_basis``, ``zo_sam_perturb``,
``eigenbasis_update``) and the newer public pieces (``quantize_state``, the
projectors, ``subspace_accumulation``, ``fused_layers``), a bad value of each
numeric argument raises ``ValueError``/``TypeError`` naming the argument, and
``optax.inject_hyperparams`` with only the structural arguments the caller
passes listed as static inits and updates under ``jax.jit``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized

import lowrank_optax as lowrank

NAN = float("nan")
ADAM = optax.adam(1e-2)
LR = dict(learning_rate=[-1.0, NAN])
BETAS = dict(b1=[1.0, -0.1], b2=[1.0, NAN])
EPS = dict(eps=[-1e-8])
WD = dict(weight_decay=[-1e-4])
LOWRANK = dict(rank=[0, 1.5, True], update_proj_gap=[0, 2.5], scale=[0.0, -1.0])


def _galore_with(factory):
    return lambda **kw: factory(ADAM, **kw)


def _loss(p):
    return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(p))


# name -> (factory, arguments always passed, bad values per argument)
TABLE = {
    "galore": (_galore_with(lowrank.galore), dict(rank=2), {**LOWRANK, "accumulation_steps": [0]}),
    "project_lowrank": (
        _galore_with(lowrank.project_lowrank),
        dict(rank=2),
        {**LOWRANK, "accumulation_steps": [0, 1.0]},
    ),
    "galore_adamw": (
        lowrank.galore_adamw,
        dict(learning_rate=1e-2, rank=2),
        {
            **LR,
            **BETAS,
            **EPS,
            **WD,
            **LOWRANK,
            "clipnorm": [0.0],
            "clipvalue": [-1.0],
            "global_clipnorm": [0.0],
            "ema_momentum": [1.5],
            "ema_overwrite_frequency": [0],
            "loss_scale_factor": [0.0],
            "gradient_accumulation_steps": [1, 2.0],
        },
    ),
    "lorenza": (
        lowrank.lorenza,
        dict(learning_rate=1e-2, rank=2),
        {
            **LR,
            **BETAS,
            **EPS,
            **WD,
            **LOWRANK,
            "rho": [-0.1, NAN],
            "mu": [0.0],
            "num_probes": [0, 1.5],
            "seed": [-1, 0.5],
        },
    ),
    "zo_sam_perturb": (
        lowrank.zo_sam_perturb,
        {},
        {"rho": [-0.1], "mu": [0.0, NAN], "num_probes": [0], "seed": [-1]},
    ),
    "scale_by_adam_in_basis": (
        lowrank.scale_by_adam_in_basis,
        {},
        {
            **BETAS,
            **EPS,
            "eps_root": [-1.0],
            "amsgrad_decay": [1.5, NAN],
            "mu_dtype": ["foo", jnp.int32],
        },
    ),
    "lre": (
        lowrank.lre,
        dict(learning_rate=1e-2),
        {**LR, "update_freq": [0], "init_steps": [-1], "seed": [-1]},
    ),
    "eigenbasis_update": (
        lambda **kw: lowrank.eigenbasis_update(
            [lowrank.scale_by_adam_in_basis()],
            curvature=lowrank.curvatures.covariance(),
            basis=lowrank.bases.ggt(3),
            **kw,
        ),
        {},
        {"update_freq": [0], "init_steps": [-1], "seed": [-1]},
    ),
    "lrg": (lowrank.lrg, dict(rank=2), {"rank": [0, 1.5]}),
    "lrg_adam": (
        lowrank.lrg_adam,
        dict(learning_rate=1e-2, rank=2),
        {**LR, **BETAS, **EPS, "rank": [0]},
    ),
    "adabelief": (
        lowrank.adabelief,
        dict(learning_rate=1e-2),
        {**LR, **BETAS, **EPS, **WD, "eps_root": [-1.0]},
    ),
    "adamp": (
        lowrank.adamp,
        dict(learning_rate=1e-2),
        {**LR, **BETAS, **EPS, **WD, "delta": [-0.1]},
    ),
    "adan": (lowrank.adan, dict(learning_rate=1e-2), {**LR, **BETAS, **EPS, **WD, "b3": [1.0]}),
    "ademamix": (
        lowrank.ademamix,
        dict(learning_rate=1e-2),
        {**LR, **BETAS, **EPS, **WD, "b3": [1.0], "alpha": [NAN, -1.0]},
    ),
    "lamb": (
        lowrank.lamb,
        dict(learning_rate=1e-2),
        {**LR, **BETAS, **EPS, **WD, "scale_clip": [(2.0, 1.0), (-1.0, 1.0)]},
    ),
    "lars": (
        lowrank.lars,
        dict(learning_rate=1e-2),
        {
            **LR,
            **WD,
            "momentum": [-0.1],
            "dampening": [2.0, -0.5],
            "trust_coefficient": [0.0],
            "scale_clip": [(2.0, 1.0)],
        },
    ),
    "ralars": (lowrank.ralars, dict(learning_rate=1e-2), {**LR, **BETAS, **EPS, **WD}),
    "tadam": (lowrank.tadam, dict(learning_rate=1e-2), {**LR, **BETAS, **EPS, **WD, "dof": [0.0]}),
    "lookahead": (
        _galore_with(lowrank.lookahead),
        {},
        {"sync_rate": [1.5, NAN], "sync_period": [0, 2.0]},
    ),
    "scout": (_galore_with(lowrank.scout), {}, {"sync_rate": [-0.5], "sync_period": [0]}),
    "param_ema": (
        _galore_with(lowrank.param_ema),
        {},
        {"momentum": [1.5, NAN], "overwrite_frequency": [0]},
    ),
    "quantize_state": (
        _galore_with(lowrank.quantize_state),
        {},
        {"bits": [4, 8.5], "block_size": [0], "min_size": [-1]},
    ),
    "subspace_accumulation": (
        lambda **kw: lowrank.subspace_accumulation(
            lowrank.galore(ADAM, rank=2, accumulation_steps=2), **kw
        ),
        {},
        {},
    ),
    "randomized_projector": (
        lowrank.randomized_projector,
        {},
        {"oversampling": [-1, 1.5], "power_iterations": [-1], "seed": [-1]},
    ),
    "svd_projector": (lowrank.svd_projector, {}, {}),
    "fused_layers": (
        lambda **kw: lowrank.fused_layers(lambda p, x: x, ADAM, **kw),
        {},
        {"accumulation_steps": [0, 1.5]},
    ),
    # Primitives and pieces of the aliases.
    "clip_by_leaf_norm": (lowrank.clip_by_leaf_norm, dict(max_norm=1.0), {"max_norm": [0.0, NAN]}),
    "decay_weights_after_update": (
        lowrank.decay_weights_after_update,
        dict(weight_decay=0.1, learning_rate=1e-2),
        {"weight_decay": [-1.0], "learning_rate": [NAN]},
    ),
    "trace_dampened": (
        lowrank.trace_dampened,
        dict(momentum=0.9),
        {"momentum": [-0.1], "dampening": [2.0]},
    ),
    "proximal_decay": (
        lowrank.proximal_decay,
        dict(weight_decay=0.1, learning_rate=1e-2),
        {**WD, **LR},
    ),
    "scale_by_adabelief": (lowrank.scale_by_adabelief, {}, {**BETAS, **EPS}),
    "scale_by_adamp": (lowrank.scale_by_adamp, {}, {**BETAS, **EPS, "delta": [-1.0]}),
    "scale_by_adan": (lowrank.scale_by_adan, {}, {**BETAS, **EPS, "b3": [1.0]}),
    "scale_by_ademamix": (lowrank.scale_by_ademamix, {}, {**BETAS, "alpha": [-1.0]}),
    "scale_by_lamb": (lowrank.scale_by_lamb, {}, {**BETAS, **EPS, **WD}),
    "scale_by_lars_trust_ratio": (
        lowrank.scale_by_lars_trust_ratio,
        {},
        {**WD, "trust_coefficient": [0.0]},
    ),
    "scale_by_ralars": (lowrank.scale_by_ralars, {}, {**BETAS, **EPS, **WD}),
    "scale_by_tadam": (lowrank.scale_by_tadam, {}, {**BETAS, **EPS, "dof": [-1.0]}),
    "scale_by_torch_amsgrad": (lowrank.scale_by_torch_amsgrad, {}, {**BETAS, **EPS}),
}

BAD_CASES = [
    (f"{name}_{arg}_{i}", name, arg, value)
    for name, (_, _, bad) in TABLE.items()
    for arg, values in bad.items()
    for i, value in enumerate(values)
]


class BadValueTest(parameterized.TestCase):
    def test_table_covers_every_public_constructor(self):
        # (LRE's in-basis inner primitives have their own table in test_lre_inputs.py.)
        public = {
            n
            for n in dir(lowrank)
            if (
                n.startswith("scale_by_")
                and not n.endswith("_in_basis")
                and n != "scale_by_inverse_eigenvalues"
            )
            or n.endswith("_projector")
            or n in ALIASES
        }
        self.assertEmpty(public - set(TABLE))

    @parameterized.named_parameters(*BAD_CASES)
    def test_bad_value_names_the_argument(self, name, arg, value):
        factory, passed, _ = TABLE[name]
        with self.assertRaises((ValueError, TypeError)) as ctx:
            factory(**{**passed, arg: value})
        self.assertRegex(str(ctx.exception), f"`{arg}[`\\[]")  # `arg` or `arg[i]`

    def test_schedules_are_not_validated(self):
        schedule = optax.linear_schedule(1e-2, 0.0, 10)
        for name in ("galore_adamw", "lorenza", "lre", "lrg_adam", "adan", "lars", "ademamix"):
            factory, passed, _ = TABLE[name]
            factory(**{**passed, "learning_rate": schedule})


ALIASES = {
    "galore",
    "galore_adamw",
    "lorenza",
    "lre",
    "lrg",
    "lrg_adam",
    "adabelief",
    "adamp",
    "adan",
    "ademamix",
    "lamb",
    "lars",
    "ralars",
    "tadam",
    "lookahead",
    "scout",
    "project_lowrank",
    "zo_sam_perturb",
    "eigenbasis_update",
    "quantize_state",
    "subspace_accumulation",
    "param_ema",
}

PARAMS = {"w": jnp.arange(12.0).reshape(4, 3) / 10 - 0.5, "b": jnp.array([0.1, -0.2, 0.3])}

# name -> (factory, passed arguments, the structural ones among them). Every
# other argument keeps its default and is not listed as static.
INJECT = {
    "galore": (lowrank.galore, dict(inner=ADAM, rank=2), ("rank",)),
    "galore_gap": (
        lowrank.galore,
        dict(inner=ADAM, rank=2, update_proj_gap=3, accumulation_steps=2),
        ("rank", "update_proj_gap", "accumulation_steps"),
    ),
    "project_lowrank": (lowrank.project_lowrank, dict(inner=ADAM, rank=2), ("rank",)),
    "galore_adamw": (lowrank.galore_adamw, dict(learning_rate=1e-2, rank=2), ("rank",)),
    "galore_adamw_keras": (
        lowrank.galore_adamw,
        dict(
            learning_rate=1e-2,
            weight_decay=0.1,
            rank=2,
            update_proj_gap=5,
            clipnorm=1.0,
            use_ema=True,
            ema_overwrite_frequency=2,
            gradient_accumulation_steps=2,
            projector=lowrank.randomized_projector(2, 0, seed=1),
        ),
        ("rank", "update_proj_gap", "ema_overwrite_frequency", "gradient_accumulation_steps"),
    ),
    "lorenza": (lowrank.lorenza, dict(learning_rate=1e-2, rank=2), ("rank",)),
    "lorenza_probes": (
        lowrank.lorenza,
        dict(learning_rate=1e-2, rank=2, num_probes=2, seed=3, perturb_unprojected=True),
        ("rank", "num_probes", "seed"),
    ),
    "zo_sam_perturb": (lowrank.zo_sam_perturb, {}, ()),
    "scale_by_adam_in_basis": (
        lowrank.scale_by_adam_in_basis,
        dict(amsgrad_decay=0.5, eps_mode="galore", mu_dtype=jnp.bfloat16),
        ("mu_dtype",),
    ),
    "lre": (lowrank.lre, dict(learning_rate=1e-2, basis=lowrank.bases.ggt(3)), ()),
    "eigenbasis_update": (
        lowrank.eigenbasis_update,
        dict(
            inner=[lowrank.scale_by_adam_in_basis()],
            curvature=lowrank.curvatures.covariance(),
            basis=lowrank.bases.ggt(3),
            update_freq=2,
        ),
        ("update_freq",),
    ),
    "lrg": (lowrank.lrg, dict(rank=2), ("rank",)),
    "lrg_adam": (lowrank.lrg_adam, dict(learning_rate=1e-2, rank=2), ("rank",)),
    **{
        name: (getattr(lowrank, name), dict(learning_rate=1e-2), ())
        for name in ("adabelief", "adamp", "adan", "ademamix", "lamb", "lars", "ralars", "tadam")
    },
    "lookahead": (lowrank.lookahead, dict(inner=ADAM), ()),
    "scout": (lowrank.scout, dict(inner=ADAM, sync_period=3), ("sync_period",)),
    "quantize_state": (lowrank.quantize_state, dict(inner=ADAM, min_size=0), ("min_size",)),
    "param_ema": (lowrank.param_ema, dict(inner=ADAM), ()),
}


@functools.cache
def _jitted(name):
    factory, passed, static = INJECT[name]
    tx = optax.inject_hyperparams(factory, static_args=static)(**passed)
    return tx, jax.jit(tx.init), jax.jit(functools.partial(tx.update, value_fn=_loss))


class InjectHyperparamsTest(parameterized.TestCase):
    @parameterized.named_parameters(*[(name, name) for name in INJECT])
    def test_only_passed_structural_args_static(self, name):
        tx, init, update = _jitted(name)
        state = init(PARAMS)
        params = PARAMS
        for _ in range(2):
            u, state = update(jax.grad(_loss)(params), state, params)
            params = optax.apply_updates(params, u)
        self.assertTrue(all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params)))
        self.assertNotEqual(float(_loss(params)), float(_loss(PARAMS)))


class BFloat16HyperparamsTest(absltest.TestCase):
    """Item 8's known bug: bf16 params round an injected ``b2=0.999`` to 1.0."""

    def test_rounded_beta_explains_the_fix_and_the_fix_trains(self):
        params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), PARAMS)
        inject = functools.partial(optax.inject_hyperparams, static_args=("rank",))
        with self.assertRaisesRegex(ValueError, r"`b2`.*hyperparam_dtype=jnp.float32"):
            inject(lowrank.galore_adamw)(1e-2, rank=2).init(params)
        tx = inject(lowrank.galore_adamw, hyperparam_dtype=jnp.float32)(1e-2, rank=2)
        state = tx.init(params)
        self.assertEqual(state.hyperparams["b2"], np.float32(0.999))
        u, _ = jax.jit(tx.update)(params, state, params)
        new = optax.apply_updates(params, u)  # float32 hyperparameters promote the update
        self.assertTrue(all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(new)))
        self.assertTrue(all(np.all(np.isfinite(x)) and np.any(x != 0) for x in jax.tree.leaves(u)))


if __name__ == "__main__":
    absltest.main()
