"""lowrank_optax: low-rank and classic optimizers as composable optax transformations.

Users write ``import lowrank_optax as lowrank``. Every public name lives in this
flat namespace; implementation modules under ``lowrank_optax._src`` are grouped by
family. Re-exports use the ``name as name`` form so type checkers see them.
"""

__version__ = "0.1.0"

# --- CPU threads (first): one BLAS thread for jaxlib's LAPACK; opt-out LOWRANK_OPTAX_BLAS_THREADS
from lowrank_optax._src import cpu_threads as _cpu_threads  # noqa: F401  (configures on import)

# --- subspace core and GaLore -------------------------------------------------
from lowrank_optax._src.adam_in_basis import ScaleByAdamInBasisState as ScaleByAdamInBasisState
from lowrank_optax._src.adam_in_basis import scale_by_adam_in_basis as scale_by_adam_in_basis
from lowrank_optax._src.basis_rotation import BasisRotation as BasisRotation
from lowrank_optax._src.basis_rotation import (
    register_basis_aware_state as register_basis_aware_state,
)
from lowrank_optax._src.basis_rotation import rotate_diagonal as rotate_diagonal
from lowrank_optax._src.basis_rotation import rotate_linear as rotate_linear
from lowrank_optax._src.galore import galore as galore
from lowrank_optax._src.galore import galore_adamw as galore_adamw
from lowrank_optax._src.keras_extras import ParamEmaState as ParamEmaState
from lowrank_optax._src.keras_extras import clip_by_leaf_norm as clip_by_leaf_norm
from lowrank_optax._src.keras_extras import ema_params as ema_params
from lowrank_optax._src.keras_extras import param_ema as param_ema
from lowrank_optax._src.linalg import canonicalize_signs as canonicalize_signs
from lowrank_optax._src.linalg import randomized_factors as randomized_factors
from lowrank_optax._src.linalg import svd_factors as svd_factors
from lowrank_optax._src.project_lowrank import ProjectLowrankState as ProjectLowrankState
from lowrank_optax._src.project_lowrank import Subspace as Subspace
from lowrank_optax._src.project_lowrank import project_lowrank as project_lowrank
from lowrank_optax._src.projectors import Projector as Projector
from lowrank_optax._src.projectors import ProjectorResult as ProjectorResult
from lowrank_optax._src.projectors import randomized_projector as randomized_projector
from lowrank_optax._src.projectors import svd_projector as svd_projector
from lowrank_optax._src.subspace import DimensionNumbers as DimensionNumbers
from lowrank_optax._src.subspace import LeafBasis as LeafBasis
from lowrank_optax._src.weight_decay import (
    DecayWeightsAfterUpdateState as DecayWeightsAfterUpdateState,
)
from lowrank_optax._src.weight_decay import (
    decay_weights_after_update as decay_weights_after_update,
)

# --- memory -------------------------------------------------------------------
from lowrank_optax._src.memory import MemoryReport as MemoryReport
from lowrank_optax._src.memory import memory_report as memory_report

# --- distributed helpers ------------------------------------------------------
from lowrank_optax._src.sharding import state_partition_specs as state_partition_specs
from lowrank_optax._src.sharding import state_sharding as state_sharding

# --- holocron.optim family ----------------------------------------------------
from lowrank_optax._src.holocron.adabelief import ScaleByAdaBeliefState as ScaleByAdaBeliefState
from lowrank_optax._src.holocron.adabelief import adabelief as adabelief
from lowrank_optax._src.holocron.adabelief import scale_by_adabelief as scale_by_adabelief
from lowrank_optax._src.holocron.adamp import adamp as adamp
from lowrank_optax._src.holocron.adamp import scale_by_adamp as scale_by_adamp
from lowrank_optax._src.holocron.adan import ScaleByAdanState as ScaleByAdanState
from lowrank_optax._src.holocron.adan import adan as adan
from lowrank_optax._src.holocron.adan import scale_by_adan as scale_by_adan
from lowrank_optax._src.holocron.ademamix import ScaleByAdemamixState as ScaleByAdemamixState
from lowrank_optax._src.holocron.ademamix import ademamix as ademamix
from lowrank_optax._src.holocron.ademamix import scale_by_ademamix as scale_by_ademamix
from lowrank_optax._src.holocron.lamb import lamb as lamb
from lowrank_optax._src.holocron.lamb import scale_by_lamb as scale_by_lamb
from lowrank_optax._src.holocron.lars import lars as lars
from lowrank_optax._src.holocron.lars import scale_by_lars_trust_ratio as scale_by_lars_trust_ratio
from lowrank_optax._src.holocron.lookahead import LookaheadState as LookaheadState
from lowrank_optax._src.holocron.lookahead import lookahead as lookahead
from lowrank_optax._src.holocron.momentum import trace_dampened as trace_dampened
from lowrank_optax._src.holocron.proximal import ProximalDecayState as ProximalDecayState
from lowrank_optax._src.holocron.proximal import proximal_decay as proximal_decay
from lowrank_optax._src.holocron.ralars import ralars as ralars
from lowrank_optax._src.holocron.ralars import scale_by_ralars as scale_by_ralars
from lowrank_optax._src.holocron.scout import ScoutState as ScoutState
from lowrank_optax._src.holocron.scout import scout as scout
from lowrank_optax._src.holocron.tadam import ScaleByTadamState as ScaleByTadamState
from lowrank_optax._src.holocron.tadam import scale_by_tadam as scale_by_tadam
from lowrank_optax._src.holocron.tadam import tadam as tadam

# --- LRG-Adam -----------------------------------------------------------------
from lowrank_optax._src.lrg import LrgState as LrgState
from lowrank_optax._src.lrg import lrg as lrg
from lowrank_optax._src.lrg import lrg_adam as lrg_adam
from lowrank_optax._src.lrg import scale_by_torch_amsgrad as scale_by_torch_amsgrad

# --- LORENZA ------------------------------------------------------------------
from lowrank_optax._src.lorenza import ZoSamPerturbState as ZoSamPerturbState
from lowrank_optax._src.lorenza import lorenza as lorenza
from lowrank_optax._src.lorenza import zo_sam_perturb as zo_sam_perturb
from lowrank_optax._src.loss_closures import (
    make_nnx_value_and_grad_fns as make_nnx_value_and_grad_fns,
)
from lowrank_optax._src.loss_closures import (
    make_value_and_grad_fns as make_value_and_grad_fns,
)

# --- LRE ----------------------------------------------------------------------
from lowrank_optax._src.lre import bases as bases
from lowrank_optax._src.lre import curvatures as curvatures
from lowrank_optax._src.lre.driver import EigenbasisBlockState as EigenbasisBlockState
from lowrank_optax._src.lre.driver import EigenbasisState as EigenbasisState
from lowrank_optax._src.lre.driver import eigenbasis_update as eigenbasis_update
from lowrank_optax._src.lre.driver import lre as lre
from lowrank_optax._src.lre.inner import ClipNormByEmaInBasisState as ClipNormByEmaInBasisState
from lowrank_optax._src.lre.inner import CurvatureProbes as CurvatureProbes
from lowrank_optax._src.lre.inner import EmaInBasisState as EmaInBasisState
from lowrank_optax._src.lre.inner import (
    ScaleByCubicAdamInBasisState as ScaleByCubicAdamInBasisState,
)
from lowrank_optax._src.lre.inner import (
    ScaleByFullMatrixAdamInBasisState as ScaleByFullMatrixAdamInBasisState,
)
from lowrank_optax._src.lre.inner import (
    ScaleByFullMatrixBfgsAdamInBasisState as ScaleByFullMatrixBfgsAdamInBasisState,
)
from lowrank_optax._src.lre.inner import (
    ScaleByFullMatrixHutchinsonAdamInBasisState as ScaleByFullMatrixHutchinsonAdamInBasisState,
)
from lowrank_optax._src.lre.inner import (
    ScaleByHutchinsonAdamInBasisState as ScaleByHutchinsonAdamInBasisState,
)
from lowrank_optax._src.lre.inner import ScaleByLionInBasisState as ScaleByLionInBasisState
from lowrank_optax._src.lre.inner import cautious_in_basis as cautious_in_basis
from lowrank_optax._src.lre.inner import clip_norm_by_ema_in_basis as clip_norm_by_ema_in_basis
from lowrank_optax._src.lre.inner import copy_grad_sign_in_basis as copy_grad_sign_in_basis
from lowrank_optax._src.lre.inner import ema_in_basis as ema_in_basis
from lowrank_optax._src.lre.inner import (
    scale_by_cubic_adam_in_basis as scale_by_cubic_adam_in_basis,
)
from lowrank_optax._src.lre.inner import (
    scale_by_full_matrix_adam_in_basis as scale_by_full_matrix_adam_in_basis,
)
from lowrank_optax._src.lre.inner import (
    scale_by_full_matrix_bfgs_adam_in_basis as scale_by_full_matrix_bfgs_adam_in_basis,
)
from lowrank_optax._src.lre.inner import (
    scale_by_full_matrix_hutchinson_adam_in_basis as scale_by_full_matrix_hutchinson_adam_in_basis,
)
from lowrank_optax._src.lre.inner import (
    scale_by_hutchinson_adam_in_basis as scale_by_hutchinson_adam_in_basis,
)
from lowrank_optax._src.lre.inner import (
    scale_by_inverse_eigenvalues as scale_by_inverse_eigenvalues,
)
from lowrank_optax._src.lre.inner import scale_by_lion_in_basis as scale_by_lion_in_basis

# --- fused update -------------------------------------------------------------
from lowrank_optax._src.fused import FusedLayers as FusedLayers
from lowrank_optax._src.fused import FusedLayersState as FusedLayersState
from lowrank_optax._src.fused import FusedTrainState as FusedTrainState
from lowrank_optax._src.fused import FusedTrainStep as FusedTrainStep
from lowrank_optax._src.fused import check_leafwise as check_leafwise
from lowrank_optax._src.fused import fused_gradient_bytes as fused_gradient_bytes
from lowrank_optax._src.fused import fused_layers as fused_layers
from lowrank_optax._src.fused import fused_train_step as fused_train_step
from lowrank_optax._src.fused import fused_value_and_grad as fused_value_and_grad
from lowrank_optax._src.subspace_accumulation import (
    SubspaceAccumulationState as SubspaceAccumulationState,
)
from lowrank_optax._src.subspace_accumulation import (
    subspace_accumulation as subspace_accumulation,
)

# --- quantized state ----------------------------------------------------------
from lowrank_optax._src.blockwise import BlockLayout as BlockLayout
from lowrank_optax._src.blockwise import QuantizedArray as QuantizedArray
from lowrank_optax._src.blockwise import block_layout as block_layout
from lowrank_optax._src.blockwise import dequantize_blockwise as dequantize_blockwise
from lowrank_optax._src.blockwise import dynamic_code_map as dynamic_code_map
from lowrank_optax._src.blockwise import quantize_blockwise as quantize_blockwise
from lowrank_optax._src.quantize import quantize_state as quantize_state
from lowrank_optax._src.quantize import register_nonnegative_fields as register_nonnegative_fields
