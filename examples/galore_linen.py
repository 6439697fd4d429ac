"""Train a Flax Linen MLP with ``galore_adamw`` through ``TrainState``.

Linen's ``TrainState.apply_gradients`` passes no extra arguments, which GaLore
does not need. Run::

    python examples/galore_linen.py --steps 200
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.training import train_state

import lowrank_optax as lowrank


class MLP(nn.Module):
    hidden: int = 64
    out: int = 8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.gelu(nn.Dense(self.hidden)(x))
        x = nn.gelu(nn.Dense(self.hidden)(x))
        return nn.Dense(self.out)(x)


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rank", type=int, default=8)
    args = ap.parse_args(argv)

    kx, kw, kp = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (512, 32))
    y = jnp.tanh(x @ jax.random.normal(kw, (32, 8)) / jnp.sqrt(32.0))
    model = MLP()
    tx = lowrank.galore_adamw(3e-3, weight_decay=1e-4, rank=args.rank, update_proj_gap=50)
    state = train_state.TrainState.create(
        apply_fn=model.apply, params=model.init(kp, x)["params"], tx=tx
    )

    @jax.jit
    def train_step(state: train_state.TrainState, x: jax.Array, y: jax.Array):
        def loss_fn(params):
            return jnp.mean((state.apply_fn({"params": params}, x) - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    state, first = train_step(state, x, y)
    for _ in range(args.steps - 1):
        state, loss = train_step(state, x, y)
    print(f"loss {float(first):.4f} -> {float(loss):.4f}")
    return float(loss)


if __name__ == "__main__":
    main()
