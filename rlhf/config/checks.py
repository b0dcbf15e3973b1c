"""Ranges and choices declared next to each schema field, checked by one validator.

    total_steps: int = positive(10)            # > 0
    top_p: float = in_range(1.0, 0, 1, low_open=True)   # (0, 1]
    placement: str = one_of("colocated", "split")       # the first choice is the default

Each helper is a `dataclasses.field` carrying the check in its metadata (a callable
default, e.g. `list`, is the field's default_factory); `check_fields`
walks a loaded config (nested sections, lists of sections) and raises ConfigError
naming the dotted key of the first value out of range. None passes every check:
Optional fields use None for "off" / "default", documented on the field.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A recipe or override that cannot run; the message names the key."""


@dataclass(frozen=True)
class Range:
    low: float | None = None
    high: float | None = None
    low_open: bool = False             # True: low itself is out of range
    high_open: bool = False

    def ok(self, value) -> bool:
        if isinstance(value, list):  # a list field: every item
            return all(self.ok(item) for item in value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


@dataclass(frozen=True)
class Choice:
    values: tuple

    def ok(self, value) -> bool:
        values = value if isinstance(value, list) else [value]  # a list field: every item
        return all(v in self.values for v in values)

    def describe(self) -> str:
        return f"one of {list(self.values)}"


def _checked(default: Any, check) -> Any:
    make = {"default_factory": default} if callable(default) else {"default": default}
    return field(**make, metadata={"check": check})


def positive(default: Any) -> Any:
    """> 0 (sizes, counts, rates that cannot be zero)."""
    return _checked(default, Range(0, low_open=True))


def non_negative(default: Any) -> Any:
    """>= 0 (0 often means "off": the field's comment says so); a list field: every item."""
    return _checked(default, Range(0))


def in_range(default: Any, low: float | None, high: float | None, *, low_open: bool = False,
             high_open: bool = False) -> Any:
    return _checked(default, Range(low, high, low_open, high_open))


def one_of(*choices: Any, default: Any = None) -> Any:
    """A value (or, for a list field, every item) among `choices`; default: the first
    choice (a list field passes a factory as `default`)."""
    return _checked(choices[0] if default is None else default, Choice(tuple(choices)))


def check_fields(cfg: Any, prefix: str = "") -> None:
    """ConfigError for the first field of `cfg` (recursively) outside its declared check."""
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), f"{prefix}{f.name}"
        check = f.metadata.get("check")
        if check is not None and value is not None and not check.ok(value):
            finite = "a finite number " if isinstance(value, float) and not math.isfinite(value) else ""
            raise ConfigError(f"config key '{key}' must be {finite}{check.describe()} (got {value!r})")
        for sub_key, item in _sections(key, value):
            check_fields(item, sub_key + ".")


def _sections(key: str, value: Any):
    if dataclasses.is_dataclass(value):
        yield key, value
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if dataclasses.is_dataclass(item):
                yield f"{key}[{i}]", item

