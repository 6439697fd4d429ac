"""GaLore: the ``galore`` wrapper/filter and the galore-torch ``galore_adamw`` alias."""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np
import optax

from lowrank_optax._src import validation as v
from lowrank_optax._src.adam_in_basis import scale_by_adam_in_basis
from lowrank_optax._src.keras_extras import keras_preprocessing, keras_wrappers
from lowrank_optax._src.numerics import float16_in_float32
from lowrank_optax._src.project_lowrank import project_lowrank
from lowrank_optax._src.projectors import ProjectorArg
from lowrank_optax._src.quantize import quantize_state_arg
from lowrank_optax._src.subspace import DimsArg, MaskArg
from lowrank_optax._src.weight_decay import decay_weights_after_update

galore = functools.partial(project_lowrank)
galore.__doc__ = r"""GaLore (Zhao et al., 2024): :func:`project_lowrank` under the paper's name.

    Same function, same arguments, same defaults (SVD basis refreshed from the
    current gradient every 200 steps, moments kept across refreshes, as
    galore-torch); see :func:`project_lowrank` for the wrapper and filter forms.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.galore(optax.adam(1e-1), rank=2, update_proj_gap=10)
      >>> params = {'w': jnp.arange(24.0).reshape(6, 4) % 5 - 2.0}
      >>> loss = lambda p: jnp.sum(p['w'] ** 2)
      >>> state = tx.init(params)
      >>> for _ in range(5):
      ...   grads = jax.grad(loss)(params)
      ...   updates, state = tx.update(grads, state, params)
      ...   params = optax.apply_updates(params, updates)
      >>> print('Objective function: {:.2f}'.format(loss(params)))
      Objective function: 31.74

    References:
      Zhao et al, `GaLore: Memory-Efficient LLM Training by Gradient Low-Rank
      Projection <https://arxiv.org/abs/2403.03507>`_, 2024
    """
# doctest does not collect partial objects: run galore's example explicitly.
__test__ = {"galore": galore.__doc__}


def galore_adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-6,
    weight_decay: jax.typing.ArrayLike = 0.0,
    *,
    rank: int,
    update_proj_gap: int | None = None,
    scale: jax.typing.ArrayLike = 1.0,
    proj_type: str = "std",
    on_refresh: str = "keep",
    projector: ProjectorArg = "svd",
    dimension_numbers: DimsArg = None,
    mask: MaskArg = None,
    weight_decay_mask: Any | None = None,
    clipnorm: jax.typing.ArrayLike | None = None,
    clipvalue: jax.typing.ArrayLike | None = None,
    global_clipnorm: jax.typing.ArrayLike | None = None,
    use_ema: bool = False,
    ema_momentum: jax.typing.ArrayLike = 0.99,
    ema_overwrite_frequency: int | None = None,
    loss_scale_factor: jax.typing.ArrayLike | None = None,
    gradient_accumulation_steps: int | None = None,
    state_bits: int | None = None,
    state_block_size: int | None = None,
    state_min_size: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""GaLore-AdamW, step for step as galore-torch 1.0's ``GaLoreAdamW``.

    For a projected leaf (Adam with galore-torch's eps placement, decoupled weight
    decay applied after the update to the updated weights):

    .. math::

      \begin{align*}
        R_t &= \mathrm{project}(P_t, G_t), \quad
        M_t = \beta_1 M_{t-1} + (1-\beta_1) R_t, \quad
        V_t = \beta_2 V_{t-1} + (1-\beta_2) R_t^2 \\
        N_t &= \frac{M_t}{\sqrt{V_t} + \epsilon}\cdot
               \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t} \\
        W_t &= \bigl(W_{t-1} - \eta_t\, \alpha\, \mathrm{back}(P_t, N_t)\bigr)
               (1 - \eta_t \lambda)
      \end{align*}

    Unprojected leaves (1-D biases, or those excluded by ``mask``) get the same
    AdamW without projection or ``scale``. The basis :math:`P_t` is refreshed from
    the current gradient at steps 0, T, 2T, ... and the moments are kept across
    refreshes (``on_refresh='keep'``, galore-torch).

    **8-bit GaLore** (``state_bits=8``, galore-torch's ``GaLoreAdamW8bit``): the
    moments are stored block-wise quantized between steps,

    .. math::

      M_t \leftarrow \mathcal D\bigl(\mathcal Q(M_t)\bigr), \qquad
      V_t \leftarrow \mathcal D\bigl(\mathcal Q(V_t)\bigr),

    where :math:`\mathcal Q` codes each block of ``state_block_size`` elements
    in 8 bits relative to the block's largest magnitude and :math:`\mathcal D`
    decodes it (:func:`quantize_state` around the
    :func:`scale_by_adam_in_basis` that :func:`project_lowrank` runs; moment
    leaves with fewer than ``state_min_size`` elements stay in full precision).
    The arithmetic of a step is unchanged and done in the moments' dtype; the
    bases, the step count and everything outside the projection (weight decay,
    clipping, EMA, accumulation) stay in full precision.

    The chain is ``[MultiSteps] ∘ [param_ema] ∘ chain([scale(1/loss_scale_factor)],
    [clip], project_lowrank(scale_by_adam_in_basis(eps_mode='galore')),
    [decay_weights_after_update], scale_by_learning_rate)``; bracketed pieces are
    present only when requested. The Keras GaLore options map as: ``clipnorm`` →
    :func:`clip_by_leaf_norm`, ``clipvalue`` → :func:`optax.clip`,
    ``global_clipnorm`` → :func:`optax.clip_by_global_norm`, ``use_ema`` /
    ``ema_momentum`` / ``ema_overwrite_frequency`` → :func:`param_ema`,
    ``loss_scale_factor`` → :func:`optax.scale` by its inverse,
    ``gradient_accumulation_steps`` → :class:`optax.MultiSteps`.

    Static arguments for :func:`optax.inject_hyperparams`: ``rank`` and, when
    passed, the integers ``update_proj_gap``, ``gradient_accumulation_steps``,
    ``ema_overwrite_frequency``, ``state_bits``, ``state_block_size``,
    ``state_min_size`` (their ``None`` defaults need no listing) and
    ``dimension_numbers``, ``mask``, ``weight_decay_mask`` when they are
    callables. Strings, booleans and :class:`Projector` objects pass through as
    static values whether listed or not. ``learning_rate``, ``b1``, ``b2``,
    ``eps``, ``weight_decay``, ``scale`` and the Keras scalars are injectable.
    With bfloat16 parameters pass ``hyperparam_dtype=jnp.float32`` to
    :func:`optax.inject_hyperparams` (it casts hyperparameters to the parameters'
    dtype, where ``b2=0.999`` rounds to 1.0; the constructor rejects that).

    Edge cases: float16 parameters are computed in float32 (state, moments and
    the update; the update is cast back to float16), because float16 cannot hold
    Adam's second moment (:math:`(1-\beta_2)g^2` underflows for small
    gradients); integer or boolean parameters raise. A NaN/Inf gradient gives a
    NaN update (as :func:`optax.adamw`; wrap in :func:`optax.apply_if_finite` to
    skip such steps). A huge *finite* gradient (e.g. ``1e30``) overflows the
    second moment to ``inf``; every later update is then exactly 0 and
    :func:`optax.apply_if_finite` does not notice (the update is finite). Clip
    the gradient first: ``global_clipnorm=1.0`` (or
    ``optax.chain(optax.clip_by_global_norm(1.0), tx)``) turns such a step into
    a zero gradient and training continues.

    Memory: per projected :math:`m\times n` leaf, ``proj_type='std'`` keeps
    :math:`r\min(m,n) + 2r\max(m,n)` numbers instead of AdamW's :math:`2mn`.
    With ``state_bits=8`` the :math:`2r\max(m,n)` moment numbers take
    :math:`1 + 4/\text{state\_block\_size}` bytes each instead of 4 (float32:
    0.254x at the default block size); the :math:`r\min(m,n)` basis numbers
    keep the parameters' dtype.

    Args:
      learning_rate: learning rate :math:`\eta` or schedule.
      b1: first-moment decay :math:`\beta_1`.
      b2: second-moment decay :math:`\beta_2`.
      eps: :math:`\epsilon` (galore-torch default 1e-6; the paper states 1e-8).
      weight_decay: decoupled weight decay :math:`\lambda \geq 0`.
      rank: projection rank :math:`r \geq 1`.
      update_proj_gap: refresh period :math:`T \geq 1` (``None``: 200).
      scale: GaLore scale :math:`\alpha > 0`.
      proj_type: projection side (see :func:`galore`).
      on_refresh: ``'keep'`` (galore-torch), ``'reset'`` or ``'reproject'``.
      projector: ``'svd'`` / :func:`svd_projector` (galore-torch) or
        ``'randomized'`` / :func:`randomized_projector` (with its
        ``oversampling``, ``power_iterations`` and ``seed``).
      dimension_numbers: leaf selection / N-D views (see :func:`project_lowrank`).
      mask: extra leaf selection for projection.
      weight_decay_mask: pytree/callable of booleans selecting decayed leaves.
      clipnorm: clip each leaf's gradient norm to this value (Keras).
      clipvalue: clip gradient values to ``[-clipvalue, clipvalue]`` (Keras).
      global_clipnorm: clip the global gradient norm (Keras).
      use_ema: keep an EMA of the parameters (Keras).
      ema_momentum: EMA momentum in ``[0, 1]``.
      ema_overwrite_frequency: overwrite params with the EMA every k steps.
      loss_scale_factor: gradients are divided by this (> 0) first (Keras).
      gradient_accumulation_steps: accumulate this many (>= 2) micro-batches.
      state_bits: ``None`` (full-precision moments) or 8 (moments stored in 8
        bits, block-wise: :func:`quantize_state`).
      state_block_size: elements per quantization block, ``>= 1`` (``None``:
        256); used with ``state_bits=8``.
      state_min_size: moment leaves with fewer elements stay in full precision,
        ``>= 0`` (``None``: 4096); used with ``state_bits=8``.

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs`.

    Examples:
      The original Keras GaLore README example, in optax form:

      >>> import jax, jax.numpy as jnp, optax
      >>> import lowrank_optax as lowrank
      >>> tx = lowrank.galore_adamw(1e-2, weight_decay=1e-4, rank=10,
      ...                           update_proj_gap=50, scale=0.5,
      ...                           proj_type='symmetric')
      >>> w = jnp.cos(jnp.arange(192.0) ** 2 / 7).reshape(16, 12)  # full rank
      >>> params = {'w': w, 'b': jnp.ones(12)}
      >>> loss = lambda p: jnp.sum(p['w'] ** 2) + jnp.sum(p['b'] ** 2)
      >>> state = tx.init(params)
      >>> for _ in range(5):
      ...   grads = jax.grad(loss)(params)
      ...   updates, state = tx.update(grads, state, params)
      ...   params = optax.apply_updates(params, updates)
      >>> print('Objective function: {:.2f}'.format(loss(params)))
      Objective function: 105.43

      8-bit GaLore: the low-rank moments are stored in 8 bits (here every moment
      leaf of at least 16 elements):

      >>> tx8 = lowrank.galore_adamw(1e-2, rank=4, state_bits=8, state_min_size=16)
      >>> moments = tx8.init({'w': w})[0].inner_state
      >>> moments.mu['w'].codes.dtype, moments.nu['w'].codes.dtype
      (dtype('int8'), dtype('uint8'))

    References:
      Zhao et al, `GaLore: Memory-Efficient LLM Training by Gradient Low-Rank
      Projection <https://arxiv.org/abs/2403.03507>`_, 2024

      Loshchilov et al, `Decoupled Weight Decay Regularization
      <https://arxiv.org/abs/1711.05101>`_, 2019
    """
    v.check_nonnegative("learning_rate", learning_rate)
    v.check_nonnegative("weight_decay", weight_decay)
    pieces = keras_preprocessing(
        loss_scale_factor=loss_scale_factor,
        clipnorm=clipnorm,
        clipvalue=clipvalue,
        global_clipnorm=global_clipnorm,
    )
    inner = quantize_state_arg(
        scale_by_adam_in_basis(b1, b2, eps, eps_mode="galore"),
        state_bits=state_bits,
        state_block_size=state_block_size,
        state_min_size=state_min_size,
    )
    pieces.append(
        project_lowrank(
            inner,
            rank=rank,
            update_proj_gap=update_proj_gap,
            scale=scale,
            proj_type=proj_type,
            projector=projector,
            on_refresh=on_refresh,
            dimension_numbers=dimension_numbers,
            mask=mask,
        )
    )
    # Only a plain Python/NumPy zero drops the piece: under inject_hyperparams the
    # value is a concrete array at eager init and a tracer under jit, and both must
    # build the same chain (same state structure).
    if not (isinstance(weight_decay, (int, float, np.number)) and weight_decay == 0):
        pieces.append(decay_weights_after_update(weight_decay, learning_rate, weight_decay_mask))
    pieces.append(optax.scale_by_learning_rate(learning_rate))
    tx = keras_wrappers(
        optax.chain(*pieces),
        use_ema=use_ema,
        ema_momentum=ema_momentum,
        ema_overwrite_frequency=ema_overwrite_frequency,
        gradient_accumulation_steps=gradient_accumulation_steps,
    )
    return float16_in_float32(tx, "lowrank.galore_adamw")
