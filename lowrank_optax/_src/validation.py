"""Argument validation shared by every constructor in the library.

Every check raises :class:`ValueError` whose message names the argument and the
allowed values. Numeric checks only apply to concrete Python / NumPy scalars:
schedules (callables) and traced values (for example under
:func:`optax.inject_hyperparams`) are passed through unchecked, as
``optax_conventions.md`` prescribes.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np
from optax._src import base as optax_base  # NO_PARAMS_MSG: no public equivalent


def concrete_scalar(value: Any) -> float | None:
    """Returns ``value`` as a Python float if it is a concrete real scalar, else None."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (np.ndarray, np.generic)) and np.ndim(value) == 0:
        if np.issubdtype(np.asarray(value).dtype, np.number):
            return float(value)
        return None
    if isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer):
        if value.ndim == 0:
            try:
                return float(value)
            except Exception:  # pragma: no cover - non-concrete
                return None
    return None


def check_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """Checks that ``value`` is an integer (not a bool) with ``value >= minimum``."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    if int(value) < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_optional_int(name: str, value: Any, *, minimum: int = 1) -> int | None:
    """Like :func:`check_int` but ``None`` is allowed."""
    if value is None:
        return None
    return check_int(name, value, minimum=minimum)


def check_range(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """Checks a concrete scalar against an interval; schedules/tracers pass."""
    if callable(value):
        return
    x = concrete_scalar(value)
    if x is None:
        return
    lo_bracket = "[" if low_inclusive else "("
    hi_bracket = "]" if high_inclusive else ")"
    interval = (
        f"{lo_bracket}{'-inf' if low is None else low}, "
        f"{'inf' if high is None else high}{hi_bracket}"
    )
    ok = not np.isnan(x)
    if ok and low is not None:
        ok = x >= low if low_inclusive else x > low
    if ok and high is not None:
        ok = x <= high if high_inclusive else x < high
    if not ok:
        raise ValueError(f"`{name}` must be in {interval}, got {value!r}.")


def check_nonnegative(name: str, value: Any) -> None:
    """Checks ``value >= 0`` for concrete scalars."""
    check_range(name, value, low=0.0)


def check_positive(name: str, value: Any) -> None:
    """Checks ``value > 0`` for concrete scalars."""
    check_range(name, value, low=0.0, low_inclusive=False)


def check_beta(name: str, value: Any) -> None:
    """Checks a decay rate ``0 <= value < 1`` for concrete scalars."""
    check_range(name, value, low=0.0, high=1.0, high_inclusive=False)


def require_params(params: Any, who: str | None = None) -> None:
    """Raises optax's ``ValueError(NO_PARAMS_MSG)`` if ``params`` is ``None``.

    ``who`` (e.g. ``'lowrank.curvatures.ggn'``) prefixes the message.
    """
    if params is None:
        prefix = "" if who is None else f"{who}: "
        raise ValueError(prefix + optax_base.NO_PARAMS_MSG)


def check_reserved_extra_args(extra_args: Any, reserved: Iterable[str], owner: str) -> None:
    """Raises ``TypeError`` if the user passed an extra argument ``owner`` reserves."""
    for name in reserved:
        if name in extra_args:
            raise TypeError(
                f"`{name}` is reserved by {owner} and cannot be passed as an extra argument."
            )


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Checks that ``value`` is one of ``choices`` (strings)."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"`{name}` must be one of {allowed}; got {value!r}.")
    return value
