"""Checks for numeric options, shared by every config dataclass and the CLI.

Each check returns the value (so `self.lr = finite_positive("lr", self.lr)` reads as one line) or
raises LeanError naming the option as the command line spells it (`--max-length`), with the range it
takes. A value that is non-finite (nan, inf), of the wrong type (a string from a suite's YAML, a
bool) or out of range is refused before any work: `--lr inf` would otherwise train to all-NaN
weights and still report success, and a negative sample limit would slice from the end of a split.

    from lean.checks import positive_int, finite_range
    positive_int("batch_size", self.batch_size)
    finite_range("alpha", self.alpha, 0.0, 1.0)
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

from lean.errors import LeanError

# Seeds reach numpy, whose generators take 0 .. 2**32 - 1.
SEED_MAX = 2**32 - 1


def option(name: str) -> str:
    """`max_length` -> `--max-length`: errors name the option the user typed."""
    return name if name.startswith("-") else "--" + name.replace("_", "-")


def integer(name: str, value: Any) -> int:
    """An int (not a bool, not a float like 2.5): else LeanError naming the option."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise LeanError(f"{option(name)} must be a whole number, got {value!r}")
    return int(value)


def finite(name: str, value: Any) -> float:
    """A real, finite number (nan and inf are refused)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise LeanError(f"{option(name)} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise LeanError(f"{option(name)} must be a finite number, got {value}")
    return value


def int_range(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """A whole number in [low, high] (either bound may be None: open on that side)."""
    value = integer(name, value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise LeanError(f"{option(name)} must be {_range(low, high)}, got {value}")
    return value


def positive_int(name: str, value: Any, high: int | None = None) -> int:
    """A whole number >= 1 (batch sizes, sample limits, epochs of patience, ...)."""
    return int_range(name, value, 1, high)


def optional_positive_int(name: str, value: Any, high: int | None = None) -> int | None:
    """None (no limit) or a whole number >= 1."""
    return None if value is None else positive_int(name, value, high)


def seed(name: str, value: Any) -> int:
    """A seed numpy accepts: 0 .. 2**32 - 1."""
    return int_range(name, value, 0, SEED_MAX)


def finite_range(name: str, value: Any, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> float:
    """A finite number in [low, high]; with low_open, in (low, high] (a rate or temperature > 0)."""
    value = finite(name, value)
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        raise LeanError(f"{option(name)} must be {_range(low, high, low_open)}, got {value}")
    return value


def finite_positive(name: str, value: Any, high: float | None = None) -> float:
    """A finite number > 0 (and <= high when given)."""
    return finite_range(name, value, 0.0, high, low_open=True)


def _range(low, high, low_open: bool = False) -> str:
    if low is not None and high is not None:
        return f"{'more than' if low_open else 'between'} {low}{' and at most' if low_open else ' and'} {high}"
    if low is not None:
        if low_open:
            return f"more than {low}"
        return "at least 1" if low == 1 else f"at least {low}"
    return f"at most {high}"


def check_finite_weights(model, hint: str) -> None:
    """Refuse to save a model whose weights went non-finite in training (a diverged run is not a result)."""
    import torch

    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise LeanError(f"training diverged: weight {name} is not finite (nan or inf), so nothing was written: {hint}")
