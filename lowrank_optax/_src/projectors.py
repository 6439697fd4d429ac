"""Projectors: how a basis refresh turns a gradient into low-rank factors.

A *projector* is a small frozen (hence hashable) object with one method,
:meth:`Projector.factors`, called by :func:`project_lowrank` at every refresh for
every projected leaf::

    left, right, usable = projector.factors(g, plan, key)

* ``g``: the leaf's gradient viewed as ``(batch..., m, n)`` matrices
  (:meth:`LeafPlan.to_matrix`), in the gradient's dtype and, on a mesh, in its
  sharding (nothing is gathered before the projector runs);
* ``plan``: the leaf's static :class:`~lowrank_optax._src.subspace.LeafPlan`
  (``rank``, ``side``: ``'left'``/``'right'``/``'full'``, and under Explicit
  sharding the specs of the gradient, bases and coordinates);
* ``key``: a PRNG key private to this leaf and this refresh (ignored by
  deterministic projectors).

It returns a :class:`ProjectorResult`: ``left`` of shape ``(batch..., m, r)``
(orthonormal columns) when ``plan.side`` is ``'left'`` or ``'full'``, else
``None``; ``right`` of shape ``(batch..., r, n)`` (orthonormal rows) when it is
``'right'`` or ``'full'``, else ``None``; ``usable``, a ``batch``-shaped boolean
that is false where the gradient could not give a basis (all zero, NaN or
infinite). That flag is the one way to say "unusable": factors where it is false
may hold anything finite (the wrapper keeps the previous basis there), and a
projector must never hand LAPACK a non-finite matrix. Factors may come in any
float dtype and sharding: the wrapper casts them to the stored dtype (the
parameter's), reshards them to the basis spec (:mod:`sharding`'s rules) and
selects the old basis where unusable. Signs must be deterministic (the library's
projectors use :func:`canonicalize_signs`).

Storage is not the projector's business: what the wrapper keeps in
``ProjectLowrankState.bases`` is decided in one place of :mod:`project_lowrank`
(``_store``), where a quantized basis format would plug in. A projector that
needs randomness sets ``seed`` (an ``int``); the wrapper then seeds its state
key with it and splits it at every refresh.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, NamedTuple

import jax

from lowrank_optax._src import sharding
from lowrank_optax._src import validation as v
from lowrank_optax._src.linalg import randomized_factors_checked, svd_factors_checked

if TYPE_CHECKING:
    from lowrank_optax._src.subspace import LeafPlan


class ProjectorResult(NamedTuple):
    """What :meth:`Projector.factors` returns for one leaf.

    Attributes:
      left: ``(batch..., m, r)`` orthonormal columns, or ``None`` (no left basis).
      right: ``(batch..., r, n)`` orthonormal rows, or ``None`` (no right basis).
      usable: ``(batch...)`` booleans: false where the gradient gave no basis.
    """

    left: jax.Array | None
    right: jax.Array | None
    usable: jax.Array


_SIDES = {"left": "left", "right": "right", "full": "both"}


def _gathered(g: jax.Array, plan: LeafPlan) -> jax.Array:
    """``g`` with only its batch axes sharded (what a full LAPACK decomposition needs).

    Only the SVD projector gathers: an exact SVD needs the whole matrix on one
    device. The randomized projector works on the sharded gradient with
    sketch-sized collectives (:func:`randomized_factors_checked`).
    """
    return sharding.reshard(g, plan.decomposition_spec, g)


@dataclasses.dataclass(frozen=True)
class Projector:
    """Base class of projectors (see the module docstring for the contract).

    Subclasses are frozen dataclasses (hashable, compared by value) and implement
    :meth:`factors`. They are not callable on purpose: :func:`optax.inject_hyperparams`
    treats callables as schedules, while a projector object passes through it as
    a static argument whether or not it is listed in ``static_args``.
    """

    #: Seed of the wrapper's PRNG key; ``None`` for projectors without randomness.
    seed = None

    def factors(self, g: jax.Array, plan: LeafPlan, key: jax.Array) -> ProjectorResult:
        """Top-``plan.rank`` bases of ``g`` on the sides ``plan.side`` asks for."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class SvdProjector(Projector):
    """Thin SVD (LAPACK), the reference projector (galore-torch's)."""

    def factors(self, g: jax.Array, plan: LeafPlan, key: jax.Array) -> ProjectorResult:
        del key
        u, vh, usable = svd_factors_checked(_gathered(g, plan), plan.rank)
        return ProjectorResult(
            u if plan.left_shape is not None else None,
            vh if plan.right_shape is not None else None,
            usable,
        )


@dataclasses.dataclass(frozen=True)
class RandomizedProjector(Projector):
    """Halko–Martinsson–Tropp range finder (:func:`randomized_factors`).

    On an Explicit mesh it runs on the gradient as it is sharded (rows, columns,
    both, batch axes): every collective is sketch-sized (``K × K``, ``K`` × a
    local side), the bases come out sharded as :func:`state_sharding` says and
    equal the single-device ones up to rounding.

    Attributes:
      oversampling: extra sketch columns ``p >= 0`` (``K = r + p``).
      power_iterations: subspace iterations ``q >= 0``; each adds two passes over
        the gradient at a refresh.
      seed: seed of the PRNG key kept in the wrapper's state.
    """

    oversampling: int = 10
    power_iterations: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        v.check_int("oversampling", self.oversampling, minimum=0)
        v.check_int("power_iterations", self.power_iterations, minimum=0)
        v.check_int("seed", self.seed, minimum=0)

    def factors(self, g: jax.Array, plan: LeafPlan, key: jax.Array) -> ProjectorResult:
        # A one-sided plan sketches only the side it keeps; usability is read from
        # the sketch (no scan of the full gradient). The gradient is not gathered:
        # on an Explicit mesh the range finder works on it where it lies.
        return ProjectorResult(
            *randomized_factors_checked(
                g,
                plan.rank,
                key,
                oversampling=self.oversampling,
                power_iterations=self.power_iterations,
                sides=_SIDES[plan.side],
            )
        )


def svd_projector() -> SvdProjector:
    """The thin-SVD projector (``projector='svd'``, galore-torch's).

    Bases are the top-``r`` singular vectors of the gradient, computed in at least
    float32, with canonical signs (each left vector's largest-magnitude entry
    positive, the right vector flipped with it).

    Returns:
      A :class:`Projector` for the ``projector`` argument of
      :func:`project_lowrank`, :func:`galore`, :func:`galore_adamw` and
      :func:`lorenza`.

    Examples:
      >>> import optax
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.galore(optax.adam(1e-3), rank=4, projector=lowrank.svd_projector())
      >>> lowrank.svd_projector() == lowrank.svd_projector()
      True
    """
    return SvdProjector()


def randomized_projector(
    oversampling: int = 10, power_iterations: int = 1, *, seed: int = 0
) -> RandomizedProjector:
    """The randomized range-finder projector (``projector='randomized'``).

    With ``K = rank + oversampling`` Gaussian sketch columns, ``power_iterations``
    rounds of re-orthonormalised subspace iteration and the top-``rank`` factors
    of the small projected matrix (:func:`randomized_factors`; a one-sided basis
    sketches only the side it keeps). Each refresh costs
    ``2 + 2·power_iterations`` passes over the gradient (``m·n·K`` each) instead
    of an SVD. The PRNG key lives in the wrapper's state, seeded with ``seed`` and
    split at every refresh (folded per leaf).

    Args:
      oversampling: extra sketch columns (``>= 0``).
      power_iterations: subspace iterations (``>= 0``); ``0`` refreshes about
        twice as fast as ``1``, with a cruder basis where the spectrum decays slowly.
      seed: seed of the wrapper's PRNG key (``>= 0``).

    Returns:
      A hashable :class:`Projector` (pass it as ``projector=``).

    Raises:
      ValueError: on a negative or non-integer argument.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import lowrank_optax as lowrank
      >>> proj = lowrank.randomized_projector(oversampling=4, power_iterations=0)
      >>> tx = lowrank.galore_adamw(1e-2, rank=2, projector=proj)
      >>> params = {'w': jnp.cos(jnp.arange(48.0)).reshape(8, 6)}
      >>> loss = lambda p: jnp.sum(p['w'] ** 2)
      >>> state = tx.init(params)
      >>> for _ in range(5):
      ...   grads = jax.grad(loss)(params)
      ...   updates, state = tx.update(grads, state, params)
      ...   params = optax.apply_updates(params, updates)
      >>> print('Objective function: {:.2f}'.format(loss(params)))
      Objective function: 22.67

    References:
      Halko et al, `Finding structure with randomness
      <https://arxiv.org/abs/0909.4061>`_, 2009
    """
    return RandomizedProjector(oversampling, power_iterations, seed)


PROJECTOR_NAMES = {"svd": svd_projector, "randomized": randomized_projector}

ProjectorArg = Any  # str ('svd' | 'randomized') or a Projector


def as_projector(projector: ProjectorArg) -> Projector:
    """Resolves the ``projector`` argument: a :class:`Projector` or a shorthand name.

    ``'svd'`` is :func:`svd_projector` and ``'randomized'`` is
    :func:`randomized_projector` with its defaults.
    """
    if isinstance(projector, Projector):
        return projector
    if isinstance(projector, str) and projector in PROJECTOR_NAMES:
        return PROJECTOR_NAMES[projector]()
    raise ValueError(
        "`projector` must be a lowrank.Projector (e.g. lowrank.svd_projector(), "
        "lowrank.randomized_projector(oversampling=10, power_iterations=1)) or one of "
        f"'svd', 'randomized'; got {projector!r}."
    )
