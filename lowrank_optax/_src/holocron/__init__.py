"""The ``holocron.optim`` family as optax transformations.

One small module per optimizer (``lars``, ``lamb``, ``ralars``, ``tadam``,
``adabelief``, ``adamp``, ``adan``, ``ademamix``, ``lookahead``, ``scout``) plus
shared pieces: ``trust_ratio`` (LARS/LAMB/RaLars trust ratios), ``momentum``
(``trace_dampened``), ``proximal`` (``proximal_decay``), ``common`` (numerics)
and ``checks`` (validation with holocron's messages).
"""
