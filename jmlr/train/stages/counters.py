"""Counters that report every key they were created with (rejection reasons, skipped examples)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Counts"]


@dataclass
class Counts:
    """A small ordered counter that always reports every key it was created with (zeros included)."""

    keys: Sequence[str]
    values: dict = field(default_factory=dict)

    def __post_init__(self):
        self.values = {k: 0 for k in self.keys}

    def add(self, key: str, n: int = 1) -> None:
        self.values[key] = self.values.get(key, 0) + n

    def as_dict(self) -> dict:
        return dict(self.values)


