"""Argument checks shared by every configuration and golden model, with one
exception policy: a value of the wrong type raises TypeError, a value of the
right type outside its range raises ValueError. Each message names the value,
the cause and the fix.

Standard library only (configurations import it; `hdl` reads those without torch).
"""
from __future__ import annotations

from typing import Iterable, TypeVar

__all__ = ["check_int", "check_counts", "check_multiple", "check_bool", "check_choice",
           "check_pow2", "expect_type"]

_V = TypeVar("_V")


def check_int(name: str, value: object, lo: int | None = None, hi: int | None = None,
              *, hint: str = "") -> int:
    """`value` as an int in [lo, hi] (either bound optional). bool is refused:
    True is not a count."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})"
                        f"{'; ' + hint if hint else ''}")
    if lo is not None and value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}{'; ' + hint if hint else ''}")
    if hi is not None and value > hi:
        raise ValueError(f"{name} must be <= {hi}, got {value}{'; ' + hint if hint else ''}")
    return value


def check_counts(obj: object, *names: str) -> None:
    """Each field `names` of `obj` (a configuration's sizes and counts) an int
    >= 1 (check_int), checked in the order given."""
    for name in names:
        check_int(name, getattr(obj, name), 1)


def check_multiple(name: str, value: int, of: str, divisor: int, *, hint: str = "") -> int:
    """`value` (an int, checked by the caller) a whole multiple of `divisor`, the
    value named `of`: ValueError "<name>=<value> is not a multiple of <of>=<divisor>"
    and the hint otherwise."""
    if value % divisor:
        raise ValueError(f"{name}={value} is not a multiple of {of}={divisor}"
                         f"{'; ' + hint if hint else ''}")
    return value


def check_bool(name: str, value: object) -> bool:
    """`value` itself when it is a bool; TypeError otherwise (1 and 0 are not bools)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool (True or False), got {value!r}")
    return value


def check_choice(name: str, value: _V, choices: Iterable, *, hint: str = "") -> _V:
    """`value` is one of `choices`: TypeError when no choice has its type (bool
    counts apart from int: True is not the 1 of (1, 2, 4)), ValueError naming
    the choices when it has the type but is none of them."""
    choices = tuple(choices)
    tail = f"; {hint}" if hint else ""
    if not any(_same_type(value, c) for c in choices):
        raise TypeError(f"{name} must be one of {choices}, got {value!r} "
                        f"({type(value).__name__}){tail}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}{tail}")
    return value


def _same_type(value, choice) -> bool:
    if isinstance(value, bool) or isinstance(choice, bool):
        return isinstance(value, bool) and isinstance(choice, bool)
    return isinstance(value, type(choice))


def check_pow2(name: str, value: object, lo: int = 1, hi: int | None = None, *,
               hint: str = "") -> int:
    """An int in [lo, hi] that is a power of two."""
    check_int(name, value, lo, hi, hint=hint)
    if value & (value - 1):
        raise ValueError(f"{name} must be a power of two, got {value}"
                         f"{'; ' + hint if hint else ''}")
    return value


def expect_type(name: str, value: _V, cls: type | tuple[type, ...]) -> _V:
    """`value` is an instance of `cls` (TypeError naming what to pass otherwise)."""
    if not isinstance(value, cls):
        names = " or ".join(c.__name__ for c in (cls if isinstance(cls, tuple) else (cls,)))
        raise TypeError(f"{name} must be a {names}, got {type(value).__name__}; "
                        f"build one with {names}(...)")
    return value
