"""Argument validation shared by every constructor in the library.

Every check raises :class:`ValueError` whose message names the argument and the
allowed values (:func:`check_transformation`, a wrong kind of object, raises
:class:`TypeError`). Numeric checks only apply to concrete scalars: schedules
(callables) and traced values (for example under :func:`optax.inject_hyperparams`
inside ``jit``) are passed through unchecked, as ``optax_conventions.md``
prescribes. A concrete 0-d array is checked, and if it is bfloat16/float16 the
message explains :func:`optax.inject_hyperparams`' cast to the parameters' dtype
(``b2=0.999`` becomes 1.0 in bfloat16) and its fix, ``hyperparam_dtype=jnp.float32``.

Structural integers of constructors default to ``None`` and are resolved with
:func:`check_optional_int`'s ``default``: :func:`optax.inject_hyperparams` turns
every numeric argument not listed in ``static_args``, defaults included, into an
array, so only the structural arguments a caller passes need listing.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
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


def check_optional_int(
    name: str, value: Any, *, minimum: int = 1, default: int | None = None
) -> int | None:
    """Like :func:`check_int` but ``None`` is allowed and returns ``default``.

    Structural integers default to ``None`` in constructors (meaning
    ``default``) because :func:`optax.inject_hyperparams` turns every numeric
    argument it is not told is static, defaults included, into an array.
    """
    if value is None:
        return default
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
        hint = _low_precision_hint(value)
        raise ValueError(f"`{name}` must be in {interval}, got {value!r}.{hint}")


def _low_precision_hint(value: Any) -> str:
    """Why a hyperparameter may arrive rounded: optax.inject_hyperparams' casts."""
    dtype = getattr(value, "dtype", None)
    if dtype is None or jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return ""
    return (
        f" This {jnp.dtype(dtype).name} value was probably rounded by optax.inject_hyperparams, "
        "which casts hyperparameters to the parameters' dtype (0.999 rounds to 1.0 in "
        "bfloat16): pass hyperparam_dtype=jnp.float32 to optax.inject_hyperparams."
    )


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


@contextlib.contextmanager
def params_withheld(who: str, fix: str) -> Iterator[None]:
    """Explains optax's no-params error raised by an inner transformation run without params.

    Wrappers that run ``inner`` on transformed coordinates pass it
    ``params=None``; an inner that needs parameters then raises optax's generic
    ``NO_PARAMS_MSG`` although the user did pass them. Inside this block that
    error becomes a ``ValueError`` saying why and what to do (``fix``).
    """
    try:
        yield
    except ValueError as err:
        if optax_base.NO_PARAMS_MSG not in str(err):
            raise
        raise ValueError(
            f"{who} runs `inner` on projected coordinates and passes it params=None (the "
            "parameters have other shapes there), but the inner transformation needs the "
            "parameters (e.g. the weight decay of optax.adamw or optax.add_decayed_weights, "
            f"a trust ratio). {fix}"
        ) from err


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


def check_transformation(name: str, value: Any, *, example: str = "optax.adam(1e-3)") -> None:
    """Raises ``TypeError`` unless ``value`` has callable ``init`` and ``update``.

    The message names the argument, says that an optax transformation is
    expected (``example`` shows one) and, when ``value`` is itself callable
    (``optax.adam`` instead of ``optax.adam(1e-3)``), that it must be called.
    """
    if callable(getattr(value, "init", None)) and callable(getattr(value, "update", None)):
        return
    hint = (
        " (a factory? call it: e.g. optax.adam(1e-3), not optax.adam)"
        if callable(value) and not isinstance(value, type)
        else ""
    )
    raise TypeError(
        f"`{name}` must be an optax.GradientTransformation (with `init` and `update`), "
        f"e.g. {example}; got {value!r}{hint}."
    )


def check_float_dtype(name: str, value: Any) -> Any:
    """Checks that ``value`` is ``None`` or a real floating-point dtype; returns it canonical."""
    if value is None:
        return None
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"`{name}` must be None or a real floating-point dtype (e.g. jnp.float32, "
            f"jnp.bfloat16), got {value!r}."
        )
    return jax.dtypes.canonicalize_dtype(dtype)  # float64 -> float32 unless x64


def check_floating(tree: Any, what: str, who: str) -> None:
    """Raises ``ValueError`` if a leaf of ``tree`` is not a real floating-point array.

    Integer or boolean parameters would be truncated by
    :func:`optax.apply_updates`, complex ones are not supported. ``what`` names
    the tree (``'parameters'``), ``who`` the transformation.
    """
    for x in jax.tree.leaves(tree):
        dtype = jnp.result_type(x)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"{who} needs real floating-point {what}, got a leaf of dtype {dtype}; "
                "cast integer, boolean or complex parameters to a float dtype (float32, "
                "bfloat16, float16)."
            )
