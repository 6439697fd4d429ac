"""LRE: the low-rank eigenbasis optimizer as composable pieces.

Modules: ``linalg`` (masked eigendecomposition updates), ``curvatures``
(low-rank corrections), ``bases`` (how the truncated eigendecomposition is kept),
``inner`` (basis-aware inner optimizers) and ``driver`` (``eigenbasis_update`` and
the ``lre`` alias).
"""
