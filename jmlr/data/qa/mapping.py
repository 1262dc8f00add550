"""Generic QA sources: JSONL records or a Hugging Face dataset, read through a field mapping."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from .._io import check_file, iter_records
from ..hf import load_if_folder, select_split
from ..types import LETTERS
from .records import Loaded, _Collector, _options


# ---------------------------------------------------------------------------------------------- generic mapping
_MAP_KEYS = ("id", "question", "options", "answer", "gold_passage_ids", "answer_text", "metadata")
_DEFAULT_MAPPING = {"id": "id", "question": "question", "options": "options", "answer": "answer"}
_MISSING = object()


def _get(rec: Mapping, dotted: str) -> Any:
    cur: Any = rec
    for part in dotted.split("."):
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        elif isinstance(cur, (list, tuple)) and part.lstrip("-").isdigit() and -len(cur) <= int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return _MISSING
    return cur


def _check_mapping(mapping: Mapping | None) -> tuple[dict[str, Any], bool]:
    if mapping is None:
        return dict(_DEFAULT_MAPPING), False
    if not isinstance(mapping, Mapping):
        raise ValueError(f"mapping must be a dict {{field: source_field}}, got {type(mapping).__name__}")
    unknown = sorted(set(mapping) - set(_MAP_KEYS))
    if unknown:
        raise ValueError(f"mapping has unknown key(s) {unknown}; expected some of {list(_MAP_KEYS)}")
    if "question" not in mapping:
        raise ValueError("mapping needs 'question' (the source field holding the question text)")
    return dict(mapping), True


def _resolve_answer(v: Any, opts: dict[str, str], base: int | None) -> str | None:
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        raise ValueError(f"answer is {v!r}; expected an option letter")
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, int):
        if base is None:
            raise ValueError(f"answer is the integer {v}; pass answer_index_base=0 or 1 to read it as an option index")
        if not 0 <= v - base < len(opts):
            raise ValueError(f"answer index {v} is not an option ({len(opts)} options, answer_index_base={base})")
        return LETTERS[v - base]
    if isinstance(v, str):
        s = v.strip()
        if s.upper() in opts:
            return s.upper()
        if base is not None and s.isdigit() and 0 <= int(s) - base < len(opts):
            return LETTERS[int(s) - base]
        matches = [k for k, t in opts.items() if t.strip() == s]
        if len(matches) == 1:
            return matches[0]
        raise ValueError(f"answer {v!r} is not an option; expected one of {list(opts)} (or one option's text)")
    raise ValueError(f"answer is {type(v).__name__} {v!r}; expected an option letter")


def _from_records(c: _Collector, records: Iterable[tuple[str, Mapping]], mapping: Mapping | None,
                  id_prefix: str, answer_index_base: int | None, limit: int | None) -> Loaded:
    m, explicit = _check_mapping(mapping)
    if answer_index_base not in (None, 0, 1):
        raise ValueError(f"answer_index_base must be 0, 1 or None, got {answer_index_base!r}")

    def field(rec, where, key, required):
        src = m.get(key)
        if src is None:
            return _MISSING
        if isinstance(src, (list, tuple)) and key in ("options", "metadata"):
            vals = [_get(rec, s) for s in src]
            absent = [s for s, v in zip(src, vals) if v is _MISSING]
            if absent and required:
                raise c.error(where, f"missing field(s) {absent} (mapped to {key!r}); record has {sorted(rec)}")
            if key == "metadata":
                return {s: v for s, v in zip(src, vals) if v is not _MISSING}
            return [v for v in vals if v is not _MISSING and v not in (None, "")]
        v = _get(rec, src)
        if v is _MISSING and required:
            raise c.error(where, f"missing field {src!r} (mapped to {key!r}); record has {sorted(rec)}")
        return v

    for i, (where, rec) in enumerate(records):
        q = field(rec, where, "question", True)
        if not isinstance(q, str) or not q.strip():
            raise c.error(where, f"question field {m['question']!r} is {q!r}; expected a non-empty text")
        opts_raw = field(rec, where, "options", explicit)
        opts = {} if opts_raw in (_MISSING, None) else _options(c, opts_raw, where)
        ans_raw = field(rec, where, "answer", explicit)
        ans_text = field(rec, where, "answer_text", explicit)
        answer = None
        if ans_raw is not _MISSING:
            if opts:
                try:
                    answer = _resolve_answer(ans_raw, opts, answer_index_base)
                except ValueError as e:
                    raise c.error(where, str(e)) from None
            elif ans_raw not in (None, "") and ans_text is _MISSING:
                ans_text = ans_raw if isinstance(ans_raw, str) else str(ans_raw)
        gold = field(rec, where, "gold_passage_ids", explicit)
        if gold in (_MISSING, None):
            gold = []
        elif isinstance(gold, (str, int)):
            gold = [str(gold)]
        elif isinstance(gold, (list, tuple)):
            gold = [str(g) for g in gold]
        else:
            raise c.error(where, f"gold_passage_ids is {type(gold).__name__}; expected an id or a list of ids")
        meta = field(rec, where, "metadata", explicit)
        if meta is _MISSING or meta is None:
            meta = {}
        elif not isinstance(meta, dict):
            meta = {m["metadata"]: meta}
        rid = field(rec, where, "id", explicit)
        eid = f"{id_prefix}-{i}" if rid in (_MISSING, None, "") else str(rid)
        c.add(where, id=eid, question=q, options=opts, answer=answer, gold_passage_ids=gold,
              answer_text=None if ans_text in (_MISSING, None) else ans_text, metadata=dict(meta))
        if limit is not None and len(c.examples) >= limit:
            break
    return c.result()


def _load_jsonl(src, *, mapping: Mapping | None = None, id_prefix: str = "q", answer_index_base: int | None = None,
                limit: int | None = None) -> Loaded:
    """Any JSONL (or JSON array) with a field ``mapping``.

    ``mapping`` maps QAExample fields to source fields (dotted paths reach nested ones):
    ``{"question": "q", "options": "choices" | ["opa", "opb", ...], "answer": "label", "id": "uid",
    "gold_passage_ids": ..., "answer_text": ..., "metadata": ["subject", ...]}``. Options may be a dict
    ``{letter: text}``, a list of texts, or a list of fields. The answer may be a letter, an option's exact
    text, or (with ``answer_index_base=0|1``) an index. A mapped field missing from a record is an error.
    Without ``mapping``: ``question`` is required and ``id``/``options``/``answer`` are used when present.
    """
    path = check_file(src, "a JSONL file")
    c = _Collector(str(path))
    return _from_records(c, iter_records(path), mapping, id_prefix, answer_index_base, limit)


def _load_hf(src, *, mapping: Mapping | None = None, split: str | None = None, id_prefix: str = "q",
             answer_index_base: int | None = None, limit: int | None = None) -> Loaded:
    """A Hugging Face ``datasets.Dataset`` (or a ``DatasetDict`` with ``split=``), with the ``jsonl`` mapping.

    A path to a folder written by ``Dataset.save_to_disk`` is loaded with ``datasets.load_from_disk``.
    Nothing is downloaded: load hub data sets yourself with ``datasets.load_dataset`` first.
    """
    src, desc = load_if_folder(src, ValueError, "format 'hf' expects a datasets.Dataset object or a folder "
                               "written by save_to_disk; load hub data sets with datasets.load_dataset(...) first")
    src, desc = select_split(src, split, desc)
    if not hasattr(src, "__iter__"):
        raise ValueError(f"format 'hf' expects a datasets.Dataset (or an iterable of dict records), "
                         f"got {type(src).__name__}")
    c = _Collector(desc)

    def records():
        n = 0
        for i, rec in enumerate(src):
            if not isinstance(rec, Mapping):
                raise c.error(f"record {i}", f"got {type(rec).__name__}; expected a dict record")
            n += 1
            yield f"record {i}", rec
        if n == 0:
            raise c.error(None, "dataset is empty; expected records")

    return _from_records(c, records(), mapping, id_prefix, answer_index_base, limit)
