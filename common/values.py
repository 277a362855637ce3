"""Numbers from flags and requests: finite, inside a stated range, or refused in one line.

`float("nan")`, `float("inf")` and `float("1e400")` all parse, and NaN passes every `<` and `>`
test by failing it: `margin < 0` is False for NaN, so an unchecked `--eval-margin nan` switched
deploy's gate off. A `Range` is declared once, beside the setting it checks, and serves both as
an argparse `type=` (one-line error, exit 2) and as the check of a value that arrived already
parsed (a JSON request field, a config file):

    LIMIT = Range(1, 100_000, integer=True)
    parser.add_argument("--limit", type=LIMIT, help=f"conversations to score, {LIMIT} (default 32)")
    temperature = Range(0, 2).check(body.get("temperature"), "temperature")

Nothing here imports anything heavy.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any


class OutOfRange(ValueError):
    """A value that is not a finite number inside its range; the message names it and the range."""


@dataclass(frozen=True)
class Range:
    """Finite numbers from `low` to `high` (either end may be open, or absent); whole numbers with `integer`."""

    low: float | None = None
    high: float | None = None
    integer: bool = False
    low_open: bool = False
    """True: `low` itself is refused (a learning rate > 0)."""
    high_open: bool = False

    def __str__(self) -> str:
        """The range in words, for help texts and errors: `a whole number from 1 to 64`, `a number > 0`."""
        kind = "a whole number" if self.integer else "a number"
        if self.low is not None and self.high is not None and not (self.low_open or self.high_open):
            return f"{kind} from {_number(self.low)} to {_number(self.high)}"
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {_number(self.low)}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '<='} {_number(self.high)}")
        return f"{kind} {' and '.join(bounds)}" if bounds else f"a finite {kind[2:]}"

    def holds(self, value: float) -> bool:
        """Whether an already numeric value is finite and inside the range."""
        if not math.isfinite(value) or (self.integer and not float(value).is_integer()):
            return False
        too_low = self.low is not None and (value < self.low or (self.low_open and value == self.low))
        too_high = self.high is not None and (value > self.high or (self.high_open and value == self.high))
        return not (too_low or too_high)

    def check(self, value: Any, name: str) -> int | float:
        """`value` (already parsed, such as a JSON field) as an int or float, or OutOfRange naming `name`."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OutOfRange(f"{name} must be {self}, got {type(value).__name__}")
        try:
            number = float(value)
        except OverflowError:  # an int beyond the float range
            raise OutOfRange(f"{name} must be {self}, got a number beyond the float range") from None
        if not self.holds(number):
            raise OutOfRange(f"{name} must be {self}, got {_number(value)}")
        return int(value) if self.integer else number

    def __call__(self, text: str) -> int | float:
        """argparse's `type=`: argparse prefixes `argument --flag:` and exits 2 with the one line."""
        try:
            value: int | float = int(text) if self.integer else float(text)
            return self.check(value, "the value")
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"must be {self}, got {text!r}") from None


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"
