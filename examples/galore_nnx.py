"""Train a Flax NNX MLP with GaLore through ``nnx.Optimizer``.

The wrapper form keeps Adam's moments in the low-rank subspace; ``nnx.Optimizer``
needs nothing special. Run::

    python examples/galore_nnx.py --steps 200
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import lowrank_optax as lowrank


class MLP(nnx.Module):
    def __init__(self, din: int, hidden: int, dout: int, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(din, hidden, rngs=rngs)
        self.l2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.l3 = nnx.Linear(hidden, dout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.l3(jax.nn.gelu(self.l2(jax.nn.gelu(self.l1(x)))))


def make_data(key: jax.Array, n: int = 512, din: int = 32, dout: int = 8):
    kx, kw = jax.random.split(key)
    x = jax.random.normal(kx, (n, din))
    w = jax.random.normal(kw, (din, dout)) / jnp.sqrt(din)
    return x, jnp.tanh(x @ w)


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rank", type=int, default=8)
    args = ap.parse_args(argv)

    x, y = make_data(jax.random.key(0))
    model = MLP(32, 64, 8, nnx.Rngs(0))
    # The inner optimizer gets params=None: keep param-dependent pieces (weight decay)
    # outside the wrapper, or use lowrank.galore_adamw.
    tx = lowrank.galore(optax.adam(3e-3), rank=args.rank, update_proj_gap=50)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model: MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    first = float(train_step(model, optimizer, x, y))
    for _ in range(args.steps - 1):
        loss = train_step(model, optimizer, x, y)
    state_bytes = sum(a.nbytes for a in jax.tree.leaves(optimizer.opt_state))
    print(f"loss {first:.4f} -> {float(loss):.4f}; optimizer state {state_bytes} bytes")
    return float(loss)


if __name__ == "__main__":
    main()
