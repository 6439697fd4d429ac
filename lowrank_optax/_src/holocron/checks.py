"""Construction-time validation for the holocron family.

Thin wrappers around :mod:`lowrank_optax._src.validation` that prefix the shared
messages with holocron's wording (``"Invalid learning rate: ..."``), so users
porting from ``holocron.optim`` recognise the errors. Only concrete scalars are
checked; schedules and traced values (``optax.inject_hyperparams``) pass through.
"""

from collections.abc import Callable
from typing import Any

from lowrank_optax._src import validation


def _prefixed(prefix: str, check: Callable[..., Any], name: str, value: Any, **kw: Any) -> None:
    try:
        check(name, value, **kw)
    except ValueError as err:
        raise ValueError(f"{prefix}: {value!r}. {err}") from None


def learning_rate(value: Any) -> None:
    """``learning_rate >= 0`` (NaN rejected, ints accepted)."""
    _prefixed("Invalid learning rate", validation.check_nonnegative, "learning_rate", value)


def eps(value: Any, name: str = "eps") -> None:
    """``eps >= 0``."""
    _prefixed("Invalid epsilon value", validation.check_nonnegative, name, value)


def beta(name: str, value: Any) -> None:
    """``0 <= b_i < 1``."""
    _prefixed(f"Invalid {name} value", validation.check_beta, name, value)


def weight_decay(value: Any) -> None:
    """``weight_decay >= 0`` (holocron misses this check for most optimizers)."""
    _prefixed("Invalid weight_decay value", validation.check_nonnegative, "weight_decay", value)


def nonnegative(name: str, value: Any) -> None:
    """``value >= 0`` with holocron's ``Invalid <name> value`` wording."""
    _prefixed(f"Invalid {name} value", validation.check_nonnegative, name, value)


def positive(name: str, value: Any) -> None:
    """``value > 0`` with holocron's ``Invalid <name> value`` wording."""
    _prefixed(f"Invalid {name} value", validation.check_positive, name, value)


def unit_interval(name: str, value: Any) -> None:
    """``0 <= value <= 1`` with holocron's ``Invalid <name> value`` wording."""
    _prefixed(f"Invalid {name} value", validation.check_range, name, value, low=0.0, high=1.0)


def scale_clip(value: Any) -> tuple[Any, Any]:
    """Returns ``(lo, hi)``; ``None`` means holocron's default ``(0.0, 10.0)``."""
    if value is None:
        return (0.0, 10.0)
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise ValueError(
            f"Invalid scale_clip: {value!r}. `scale_clip` must be a pair (lo, hi) "
            "with 0 <= lo <= hi."
        ) from None
    _prefixed("Invalid scale_clip", validation.check_nonnegative, "scale_clip[0]", lo)
    lo_c, hi_c = validation.concrete_scalar(lo), validation.concrete_scalar(hi)
    if lo_c is not None and hi_c is not None and not lo_c <= hi_c:
        raise ValueError(
            f"Invalid scale_clip: {value!r}. `scale_clip` must be a pair (lo, hi) "
            "with 0 <= lo <= hi."
        )
    return lo, hi


def nesterov(flag: bool, momentum: Any, dampening: Any) -> None:
    """Nesterov needs a positive momentum and zero dampening (holocron's rule)."""
    if not flag:
        return
    mom = validation.concrete_scalar(momentum)
    damp = validation.concrete_scalar(dampening)
    if (mom is not None and mom <= 0) or (damp is not None and damp != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")


def sync_rate(value: Any) -> None:
    """``0 <= sync_rate <= 1`` with holocron's message."""
    try:
        validation.check_range("sync_rate", value, low=0.0, high=1.0)
    except ValueError as err:
        raise ValueError(
            f"expected positive float lower than 1 as sync_rate, received: {value}. {err}"
        ) from None


def sync_period(value: Any) -> int:
    """``sync_period`` is an int ``>= 1`` (bools rejected) with holocron's message."""
    try:
        return validation.check_int("sync_period", value, minimum=1)
    except ValueError as err:
        raise ValueError(
            f"expected positive integer as sync_period, received: {value}. {err}"
        ) from None
