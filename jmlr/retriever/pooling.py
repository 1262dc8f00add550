"""The pooling modes a tower may use (no torch here: the config checks a mode without importing a model)."""
from __future__ import annotations

from typing import Sequence

__all__ = ["POOLINGS", "parse_pooling", "pooling_name"]

POOLINGS = ("mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
"""Every pooling mode sentence-transformers ships; ``"cls+mean"`` concatenates several (in this order)."""


def parse_pooling(mode: str | Sequence[str]) -> tuple[str, ...]:
    """``"cls+mean"`` (or ``("cls", "mean")``) -> ``("cls", "mean")``; raises on an unknown mode."""
    modes = tuple(m.strip() for m in mode.split("+")) if isinstance(mode, str) else tuple(mode)
    bad = [m for m in modes if m not in POOLINGS]
    if not modes or bad:
        raise ValueError(f"unknown pooling {mode!r}: expected one of {POOLINGS}, or several joined by '+'")
    return modes


def pooling_name(mode: str | Sequence[str]) -> str:
    """The canonical string of a pooling mode (several modes joined by ``+``)."""
    return "+".join(parse_pooling(mode))
