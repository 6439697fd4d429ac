"""lowrank_optax: low-rank and classic optimizers as composable optax transformations.

Users write ``import lowrank_optax as lowrank``. Every public name lives in this
flat namespace; implementation modules under ``lowrank_optax._src`` are grouped by
family. Re-exports use the ``name as name`` form so type checkers see them.
"""

__version__ = "0.1.0"

# --- subspace core and GaLore -------------------------------------------------
# (filled by the foundation work)

# --- distributed helpers ------------------------------------------------------

# --- holocron.optim family ----------------------------------------------------

# --- LRG-Adam -----------------------------------------------------------------

# --- LORENZA ------------------------------------------------------------------

# --- LRE ----------------------------------------------------------------------
