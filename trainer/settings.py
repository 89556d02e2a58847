"""Typed, ranged settings: the frozen dataclasses that hold a head's or a run's knobs validate
themselves on construction, so a value that cannot train (steps 0, a width of -1, "10" for 10)
is refused in one line before any work."""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from cache_schemas import VlcacheError


class SettingError(VlcacheError, ValueError):
    """A setting of the wrong type or out of its range."""


def setting(default: Any, low: float | None = None, high: float | None = None, *, open_low: bool = False) -> Any:
    """A dataclass field with a default and the range it must lie in ([low, high], or (low, high]
    with open_low)."""
    return field(default=default, metadata={"low": low, "high": high, "open_low": open_low})


@dataclass(frozen=True)
class Settings:
    """Base of every settings dataclass: checks each field's type (that of its default) and range."""

    KIND = "setting"  # how messages name the settings: "train setting", "tflocal setting"

    def __post_init__(self) -> None:
        for f in fields(self):
            _check(self.KIND, f.name, getattr(self, f.name), f.default, f.metadata)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> Settings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SettingError(f"unknown {cls.KIND}s {unknown}; known: {sorted(known)}")
        return cls(**values)


def _check(kind: str, name: str, value: Any, default: Any, meta: Any) -> None:
    expected = type(default) if default is not MISSING else None
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    else:
        ok = True
    if not ok:
        raise SettingError(f"{kind} {name} must be {'a number' if expected is float else expected.__name__}, "
                           f"got {value!r}")
    low, high, open_low = meta.get("low"), meta.get("high"), meta.get("open_low", False)
    too_low = low is not None and (value <= low if open_low else value < low)
    if too_low or (high is not None and value > high):
        bound = f"{'>' if open_low else '>='} {low}" if high is None else \
            f"in {'(' if open_low else '['}{low}, {high}]" if low is not None else f"<= {high}"
        raise SettingError(f"{kind} {name} must be {bound}, got {value!r}")
