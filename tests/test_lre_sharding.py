"""LRE on an 8-device CPU mesh: the flattened basis sharded along n equals one device.

Runs in a subprocess because the device count must be set before jax is imported.
"""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    import lowrank_optax as lowrank

    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Auto,))
    rng = np.random.default_rng(0)
    target = {"w": jnp.asarray(rng.normal(size=(64, 8)), jnp.float32),
              "b": jnp.asarray(rng.normal(size=8), jnp.float32)}
    scales = {"w": jnp.asarray(np.geomspace(1, 20, 8), jnp.float32), "b": jnp.ones(8)}

    def loss(p):
        return sum(jnp.sum(scales[k] * (p[k] - target[k]) ** 2) for k in p)

    params = jax.tree.map(jnp.zeros_like, target)
    n = sum(x.size for x in jax.tree.leaves(params))
    configs = {
        "ggt_default": lowrank.lre(0.05, basis=lowrank.bases.ggt(6)),
        "eigen_full_matrix_adam": lowrank.lre(
            0.05, basis=lowrank.bases.eigen(5),
            inner=[lowrank.scale_by_full_matrix_adam_in_basis()]),
    }
    for name, tx in configs.items():
        def step(p, s):
            u, s = tx.update(jax.grad(loss)(p), s, p)
            return optax.apply_updates(p, u), s

        p1, s1 = params, tx.init(params)
        single = jax.jit(step)
        for _ in range(6):
            p1, s1 = single(p1, s1)

        abstract = jax.eval_shape(tx.init, params)
        specs = (lowrank.eigenbasis_partition_specs(abstract[0], n, "x"),
                 jax.tree.map(lambda _: P(), abstract[1]))
        state_sh = jax.tree.map(lambda sp: NamedSharding(mesh, sp), specs,
                                is_leaf=lambda x: isinstance(x, P))
        param_sh = {"w": NamedSharding(mesh, P("x", None)), "b": NamedSharding(mesh, P())}
        sharded = jax.jit(step, in_shardings=(param_sh, state_sh),
                          out_shardings=(param_sh, state_sh))
        p2 = jax.device_put(params, param_sh)
        s2 = jax.device_put(tx.init(params), state_sh)
        for _ in range(6):
            p2, s2 = sharded(p2, s2)

        q = jax.tree.leaves(s2[0].basis_state)
        big = [x for x in q if x.ndim == 2 and x.shape[0] == n]
        assert big, name
        for x in big:
            assert x.sharding.spec == P("x"), (name, x.sharding)
            assert x.addressable_shards[0].data.shape[0] == n // 8, name
        for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)
        assert float(loss(p2)) < float(loss(params)), name
        print(name, "ok", float(loss(p1)), float(loss(p2)))
    """
)


def test_sharded_updates_equal_single_device() -> None:
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" ok ") == 2, result.stdout
