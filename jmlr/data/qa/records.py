"""What every QA loader shares: the collector of examples and passages (located errors, duplicate ids)
and the field readers."""
from __future__ import annotations

from typing import Any, Mapping

from .._io import DataFormatError
from ..types import Passage, QAExample, normalize_options

Loaded = tuple[list[QAExample], list[Passage]]


class _Collector:
    """Builds examples and passages, turning construction errors into located ones and catching duplicate ids."""

    def __init__(self, source: str):
        self.source = source
        self.examples: list[QAExample] = []
        self.passages: list[Passage] = []
        self._seen: dict[str, str] = {}
        self._seen_p: dict[str, str] = {}
        self.multi = False  # True while reading one file of several (locations then carry the file)

    def error(self, where: str | None, msg: str) -> DataFormatError:
        return DataFormatError(self.source, where, msg)

    def add(self, where: str, **fields: Any) -> QAExample:
        try:
            ex = QAExample(**fields)
        except ValueError as e:
            raise self.error(where, str(e)) from None
        first = self._seen.get(ex.id)
        if first is not None:
            raise self.error(where, f"duplicate id {ex.id!r} (first at {first}); expected unique ids")
        self._seen[ex.id] = f"{self.source}, {where}" if self.multi else where
        self.examples.append(ex)
        return ex

    def add_passage(self, where: str, pid: str, text: str, title: str = "") -> str:
        first = self._seen_p.get(pid)
        if first is not None:
            raise self.error(where, f"duplicate passage id {pid!r} (first at {first}); expected unique ids")
        try:
            self.passages.append(Passage(pid, text, title))
        except ValueError as e:
            raise self.error(where, str(e)) from None
        self._seen_p[pid] = where
        return pid

    def result(self) -> Loaded:
        if not self.examples:
            raise self.error(None, "no examples found")
        return self.examples, self.passages


def _need(c: _Collector, rec: Mapping, key: str, where: str, expected: str) -> Any:
    if key not in rec:
        raise c.error(where, f"missing field {key!r}; expected {expected}")
    return rec[key]


def _need_str(c: _Collector, rec: Mapping, key: str, where: str, expected: str) -> str:
    v = _need(c, rec, key, where, expected)
    if not isinstance(v, str) or not v.strip():
        raise c.error(where, f"field {key!r} is {v!r}; expected a non-empty text ({expected})")
    return v


def _record_id(rec: Mapping, key: str, prefix: str, i: int) -> str:
    v = rec.get(key)
    if v is None or v == "":
        return f"{prefix}-{i}"
    return str(v)


def _options(c: _Collector, value: Any, where: str) -> dict[str, str]:
    try:
        return normalize_options(value)
    except ValueError as e:
        raise c.error(where, str(e)) from None
