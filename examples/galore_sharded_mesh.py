"""GaLore on a device mesh: sharded params, sharded low-rank state.

On one CPU, simulate 8 devices (must be set before JAX is imported)::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/galore_sharded_mesh.py

``jax.make_mesh`` creates Explicit axes: parameters carry their sharding in their
types and GaLore builds its bases and low-rank moments with the matching specs
(the projector takes the parameter's spec on the projected axis, the moments the
parameter's spec with the projected axis unsharded). ``lowrank.state_sharding``
returns the same shardings for ``jax.jit(tx.init, out_shardings=...)``, which is
what Auto-axis meshes need. Gradients must be identical on every device (they are
here: the loss is a global mean), or the per-device projectors diverge.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import lowrank_optax as lowrank


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rank", type=int, default=8)
    args = ap.parse_args(argv)

    n = jax.device_count()
    mesh = jax.make_mesh((n,), ("model",))
    keys = jax.random.split(jax.random.key(0), 4)
    params = {
        "w1": jax.random.normal(keys[0], (64, 256)) / 8.0,
        "w2": jax.random.normal(keys[1], (256, 16)) / 16.0,
    }
    specs = {"w1": P(None, "model"), "w2": P("model", None)}
    x = jax.random.normal(keys[2], (128, 64))
    y = jnp.tanh(x @ jax.random.normal(keys[3], (64, 16)) / 8.0)
    tx = lowrank.galore_adamw(3e-3, rank=args.rank, update_proj_gap=25)

    def loss_fn(p):
        h = jax.nn.gelu(x @ p["w1"])
        return jnp.mean((jnp.matmul(h, p["w2"], out_sharding=P()) - y) ** 2)

    @jax.jit
    def step(p, s):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    with jax.set_mesh(mesh):
        sharding = {k: NamedSharding(mesh, s) for k, s in specs.items()}
        params = jax.device_put(params, sharding)
        state = jax.jit(tx.init, out_shardings=lowrank.state_sharding(tx, params, sharding))(params)
        for _ in range(args.steps):
            params, state, loss = step(params, state)
            # Simulated CPU devices share a few threads: finish each step before
            # dispatching the next (unnecessary on real accelerators).
            jax.block_until_ready(loss)
    mu = state[0].inner_state.mu
    print(f"{n} devices; final loss {float(loss):.4f}")
    for k in params:
        print(f"  {k}: param {jax.typeof(params[k])}  low-rank moment {jax.typeof(mu[k])}")
    return float(loss)


if __name__ == "__main__":
    main()
