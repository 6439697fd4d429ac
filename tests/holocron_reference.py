"""Independent NumPy (float64) restatements of holocron-family formulas.

Each function runs a teacher-forced trajectory: ``params`` (dict of arrays) and
``grads`` (dict of arrays of shape ``(steps, ...)``) in, parameters after steps
``0..steps`` out. A ``holocron=True`` flag switches to what holocron 0.3.0's
*code* does where it departs from its documentation, so tests can show that the
difference between the library and holocron is exactly the documented one.
Written from the spec formulas, not from the library code.
"""

from collections.abc import Callable

import numpy as np

Tree = dict[str, np.ndarray]


def _trajectory(params: Tree, grads: Tree, step: Callable[[int, Tree, Tree], Tree]) -> Tree:
    theta = {k: np.array(v, np.float64) for k, v in params.items()}
    out = {k: [v.copy()] for k, v in theta.items()}
    steps = len(next(iter(grads.values())))
    for t in range(steps):
        theta = step(t + 1, theta, {k: np.asarray(v[t], np.float64) for k, v in grads.items()})
        for k, v in theta.items():
            out[k].append(v.copy())
    return {k: np.stack(v) for k, v in out.items()}


def _ratio(num: float, den: float, zero_if: float) -> float:
    return 1.0 if zero_if == 0 or den == 0 else num / den


def lars(
    params,
    grads,
    lr,
    momentum=0.0,
    dampening=0.0,
    weight_decay=0.0,
    trust_coefficient=1.0,
    scale_clip=(0.0, 10.0),
    nesterov=False,
    holocron=False,
):
    """Documented LARS: v = mu v + (1 - tau) lr gamma (g + wd theta). holocron: SGD
    buffer of unscaled g + wd theta (first buffer = first update), no clip."""
    buf: Tree = {}

    def step(t, theta, g):
        new = {}
        for k, p in theta.items():
            p_norm = np.linalg.norm(p)
            den = np.linalg.norm(g[k]) + weight_decay * p_norm
            phi = p_norm if holocron else np.clip(p_norm, *scale_clip)
            gamma = _ratio(trust_coefficient * phi, den, p_norm)
            d = g[k] + weight_decay * p
            if holocron:
                if momentum == 0:
                    new[k] = p - lr * gamma * d
                    continue
                buf[k] = d.copy() if k not in buf else momentum * buf[k] + (1 - dampening) * d
                direction = d + momentum * buf[k] if nesterov else buf[k]
                new[k] = p - lr * gamma * direction
            else:
                scaled = lr * gamma * d
                buf[k] = momentum * buf.get(k, 0.0) + (1 - dampening) * scaled
                new[k] = p - (scaled + momentum * buf[k] if nesterov else buf[k])
        return new

    return _trajectory(params, grads, step)


def lamb(
    params,
    grads,
    lr,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    weight_decay=0.0,
    scale_clip=(0.0, 10.0),
    holocron=False,
):
    """Documented LAMB (bias-corrected); holocron: no bias correction."""
    m: Tree = {}
    v: Tree = {}

    def step(t, theta, g):
        new = {}
        for k, p in theta.items():
            m[k] = b1 * m.get(k, 0.0) + (1 - b1) * g[k]
            v[k] = b2 * v.get(k, 0.0) + (1 - b2) * g[k] ** 2
            if holocron:
                r = m[k] / (np.sqrt(v[k]) + eps)
            else:
                r = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            u = r + weight_decay * p
            phi = np.clip(np.linalg.norm(p), *scale_clip)
            new[k] = p - lr * _ratio(phi, np.linalg.norm(u), phi) * u
        return new

    return _trajectory(params, grads, step)


def adabelief(
    params, grads, lr, b1=0.9, b2=0.999, eps=1e-8, eps_root=1e-8, weight_decay=0.0, amsgrad=False
):
    """AdaBelief with s += eps_root each step (holocron's code: eps_root = 0)."""
    m: Tree = {}
    s: Tree = {}
    s_max: Tree = {}

    def step(t, theta, g):
        new = {}
        for k, p in theta.items():
            gk = g[k] + weight_decay * p
            m[k] = b1 * m.get(k, 0.0) + (1 - b1) * gk
            s[k] = b2 * s.get(k, 0.0) + (1 - b2) * (gk - m[k]) ** 2 + eps_root
            den = s[k]
            if amsgrad:
                s_max[k] = np.maximum(s_max.get(k, 0.0), s[k])
                den = s_max[k]
            new[k] = p - lr / (1 - b1**t) * m[k] / (np.sqrt(den) / np.sqrt(1 - b2**t) + eps)
        return new

    return _trajectory(params, grads, step)


def adan(
    params,
    grads,
    lr,
    b1=0.98,
    b2=0.92,
    b3=0.99,
    eps=1e-8,
    weight_decay=0.0,
    amsgrad=False,
    holocron=False,
):
    """Adan (paper / authors' code): tracked gradient difference, proximal decay
    only. holocron: g <- g + wd theta, previous gradient stuck at 0 (delta = g).
    ``lr`` may be a function of the 0-based step."""
    m: Tree = {}
    v: Tree = {}
    n: Tree = {}
    n_max: Tree = {}
    prev: Tree = {}

    def step(t, theta, g):
        new = {}
        for k, p in theta.items():
            gk = g[k] + weight_decay * p if holocron else g[k]
            if holocron:
                diff = gk
            else:
                diff = np.zeros_like(gk) if t == 1 else gk - prev[k]
                prev[k] = gk
            m[k] = b1 * m.get(k, 0.0) + (1 - b1) * gk
            v[k] = b2 * v.get(k, 0.0) + (1 - b2) * diff
            n[k] = b3 * n.get(k, 0.0) + (1 - b3) * (gk + b2 * diff) ** 2
            den = n[k]
            if amsgrad:
                n_max[k] = np.maximum(n_max.get(k, 0.0), n[k])
                den = n_max[k]
            u = (m[k] / (1 - b1**t) + b2 * v[k] / (1 - b2**t)) / (
                np.sqrt(den) / np.sqrt(1 - b3**t) + eps
            )
            lr_t = lr(t - 1) if callable(lr) else lr
            new[k] = (p - lr_t * u) / (1 + weight_decay * lr_t)
        return new

    return _trajectory(params, grads, step)


def sgd_inner(lr: float, momentum: float = 0.0) -> Callable[[Tree, Tree], Tree]:
    """Returns ``inner(grads, params) -> updates`` (plain/momentum SGD, torch buffer)."""
    buf: Tree = {}

    def inner(g: Tree, theta: Tree) -> Tree:
        del theta
        out = {}
        for k, gk in g.items():
            buf[k] = gk.copy() if k not in buf else momentum * buf[k] + gk
            out[k] = -lr * (buf[k] if momentum else gk)
        return out

    return inner


def scout(params, grads, inner, sync_rate, sync_period, holocron=False):
    """Scout with the k inner updates of each window stored explicitly.

    NaN-safe coherence: elements with zero max deviation and leaves without valid
    elements are left out, ``sync_rate`` if nothing is valid. holocron: plain
    means (NaN propagates), Python ``max(NaN, rate)`` is NaN and the sync then
    keeps the slow weights.
    """
    slow = {k: np.array(v, np.float64) for k, v in params.items()}
    window: list[Tree] = []

    def step(t, theta, g):
        nonlocal slow, window
        u = inner(g, theta)
        window.append(u)
        fast = {k: theta[k] + u[k] for k in theta}
        if t % sync_period:
            return fast
        per_leaf = []
        for k in theta:
            stack = np.stack([w[k] for w in window])
            with np.errstate(divide="ignore", invalid="ignore"):
                std = (
                    np.std(stack, axis=0, ddof=1)
                    if len(window) > 1
                    else np.full(stack.shape[1:], np.nan)
                )
                max_dev = np.abs(stack - stack.mean(axis=0)).max(axis=0)
                ratio = std / max_dev
            if holocron:
                per_leaf.append(ratio.mean())
            else:
                valid = max_dev > 0
                if valid.any():
                    per_leaf.append(ratio[valid].mean())
        window = []
        if holocron:
            coherence = sum(per_leaf) / len(per_leaf)
            rate = max(1 - coherence, sync_rate)  # Python max: NaN if coherence is NaN
        else:
            rate = max(1 - np.mean(per_leaf), sync_rate) if per_leaf else sync_rate
        if rate > 0:
            slow = {k: slow[k] + rate * (fast[k] - slow[k]) for k in slow}
        return {k: v.copy() for k, v in slow.items()}

    return _trajectory(params, grads, step)
