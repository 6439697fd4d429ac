"""Implementation modules of lowrank_optax (private; import from ``lowrank_optax``)."""
