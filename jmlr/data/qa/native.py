"""The native ``jmlr`` QA format: one :class:`~jmlr.data.QAExample` per JSON line (:func:`save_qa` writes it)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from .._io import atomic_write_lines, check_file, iter_jsonl
from ..types import QAExample
from .records import Loaded, _Collector


def _load_jmlr(src, *, limit: int | None = None) -> Loaded:
    path = check_file(src, "a jmlr QA JSONL file")
    c = _Collector(str(path))
    for where, rec in iter_jsonl(path, "one QAExample JSON object per line (id, question, options, answer, ...)"):
        try:
            unknown = sorted(set(rec) - {"id", "question", "options", "answer", "gold_passage_ids", "answer_text", "metadata"})
            if unknown:
                raise ValueError(f"unknown field(s) {unknown}; expected only the QAExample fields "
                                 "id, question, options, answer, gold_passage_ids, answer_text, metadata")
            for k in ("id", "question"):
                if k not in rec:
                    raise ValueError(f"missing field {k!r}; expected at least 'id' and 'question'")
        except ValueError as e:
            raise c.error(where, str(e)) from None
        c.add(where, **rec)
        if limit is not None and len(c.examples) >= limit:
            break
    return c.result()


def save_qa(examples: Iterable[QAExample], path: str | os.PathLike) -> Path:
    """Write examples as native ``jmlr`` JSONL (one :meth:`QAExample.to_dict` per line), atomically.

    ``load_qa("jmlr", path)`` reads the file back to equal examples.
    """
    def lines() -> Iterator[str]:
        seen: set[str] = set()
        for ex in examples:
            if not isinstance(ex, QAExample):
                raise TypeError(f"save_qa expects QAExample objects, got {type(ex).__name__}")
            if ex.id in seen:
                raise ValueError(f"{path}: duplicate example id {ex.id!r}; expected unique ids")
            seen.add(ex.id)
            yield json.dumps(ex.to_dict(), ensure_ascii=False)

    return atomic_write_lines(path, lines())
