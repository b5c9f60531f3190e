"""Argument checks shared by the public functions: a ValueError naming the argument, the value and what is
allowed, raised before any work (strings, booleans and NaN are not numbers here)."""

from __future__ import annotations

import numbers

import numpy as np


def _shown(value):
    """A NumPy scalar as its Python value, so messages read 'nan' rather than 'np.float64(nan)'."""
    return value.item() if isinstance(value, np.generic) else value


def is_number(value) -> bool:
    """A finite real number (not a boolean, a string or NaN)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and bool(np.isfinite(value))


def number(name: str, value, low: float | None = None, strict: bool = False) -> float:
    """`value` as a float: a finite real number, above `low` (or at least `low` unless strict)."""
    ok = is_number(value)
    if ok and low is not None:
        ok = value > low if strict else value >= low
    if not ok:
        bound = "" if low is None else f" {'>' if strict else '>='} {low:g}"
        raise ValueError(f"{name} must be a finite number{bound}, got {_shown(value)!r}")
    return float(value)


def positive_int(name: str, value, maximum: int | None = None) -> int:
    """`value` as an int >= 1 (and <= maximum when given); booleans are not integers here."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)) and value >= 1
    if not ok or (maximum is not None and value > maximum):
        limit = "" if maximum is None else f" up to {maximum:.0e}"
        raise ValueError(f"{name} must be a positive integer{limit}, got {_shown(value)!r}")
    return int(value)


def generator(name: str, value) -> np.random.Generator:
    """np.random.default_rng(value) for None, an int seed >= 0, a SeedSequence, a BitGenerator or a Generator."""
    seeds = (np.random.SeedSequence, np.random.BitGenerator, np.random.Generator)
    if value is None or isinstance(value, seeds) or (isinstance(value, numbers.Integral) and
                                                      not isinstance(value, (bool, np.bool_)) and value >= 0):
        return np.random.default_rng(value)
    raise ValueError(f"{name} must be None, a non-negative int seed, a SeedSequence or a Generator, got {value!r}")
