"""Orbax checkpointing of library states: save → restore → continue is bit-identical."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from orbax_roundtrip import assert_roundtrip_bit_identical

import lowrank_optax as lowrank

RNG = np.random.default_rng(0)
PARAMS = {
    "w": jnp.asarray(RNG.standard_normal((12, 8)), jnp.float32),
    "b": jnp.zeros((8,), jnp.float32),
}
GRADS = [
    jax.tree.map(lambda x: jnp.asarray(RNG.standard_normal(x.shape), x.dtype), PARAMS)
    for _ in range(6)
]

TRANSFORMS = {
    "galore_adamw_svd": lambda: lowrank.galore_adamw(
        1e-2, weight_decay=0.1, rank=3, update_proj_gap=2
    ),
    "galore_randomized_reproject": lambda: lowrank.galore(
        lowrank.scale_by_adam_in_basis(),
        rank=3,
        update_proj_gap=2,
        projector="randomized",
        on_refresh="reproject",
    ),
    "galore_adamw_keras_extras": lambda: lowrank.galore_adamw(
        1e-2,
        rank=2,
        update_proj_gap=2,
        use_ema=True,
        ema_overwrite_frequency=3,
        gradient_accumulation_steps=2,
    ),
    # LRE: GGT history, Adam, cautious, and the norm-EMA clip's PRNG key.
    "lre_default": lambda: lowrank.lre(1e-2, basis=lowrank.bases.ggt(4)),
    # A gradient buffer between basis updates and a stored Nyström test matrix.
    "lre_nystrom_buffered": lambda: lowrank.lre(
        1e-2, basis=lowrank.bases.nystrom(3, omega_update_freq=2), update_freq=2
    ),
    # One basis per leaf.
    "lre_per_leaf_eigen": lambda: lowrank.lre(1e-2, basis=lowrank.bases.eigen(3), per_leaf=True),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_orbax_roundtrip_is_bit_identical(name, tmp_path):
    assert_roundtrip_bit_identical(TRANSFORMS[name](), PARAMS, GRADS, tmp_path)
