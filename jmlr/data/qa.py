"""QA loaders: one function per source format, behind :func:`load_qa` and :func:`load_qa_corpus`.

Each loader returns ``(examples, passages)``: the questions, and the passages the file itself carries
(MedMCQA explanations, PubMedQA abstract sections), whose ids are the examples' ``gold_passage_ids``.
Errors name the file, the line or record, and what was expected.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from ._io import DataFormatError, atomic_write_lines, check_file, iter_jsonl, iter_records, read_json
from .types import LETTERS, Passage, QAExample

logger = logging.getLogger("jmlr.data")

Loaded = tuple[list[QAExample], list[Passage]]


# ---------------------------------------------------------------------------------------------- helpers
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
    from .types import normalize_options

    try:
        return normalize_options(value)
    except ValueError as e:
        raise c.error(where, str(e)) from None


# ---------------------------------------------------------------------------------------------- jmlr (native)
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


# ---------------------------------------------------------------------------------------------- MedQA
_MEDQA = "a MedQA record {question, options{A..}, answer_idx}"


def _load_medqa(src, *, id_prefix: str = "medqa", limit: int | None = None) -> Loaded:
    """MedQA (USMLE) JSONL: ``question``, ``options`` ({A..D} or {A..E}), ``answer_idx`` (a letter)."""
    path = check_file(src, "a MedQA JSONL file")
    c = _Collector(str(path))
    for i, (where, rec) in enumerate(iter_records(path, "one MedQA JSON object per line")):
        q = _need_str(c, rec, "question", where, _MEDQA)
        opts = _options(c, _need(c, rec, "options", where, _MEDQA), where)
        ans = _need(c, rec, "answer_idx", where, _MEDQA)
        meta = {k: rec[k] for k in ("meta_info",) if k in rec}
        c.add(where, id=_record_id(rec, "id", id_prefix, i), question=q, options=opts, answer=ans,
              metadata={"source": "medqa", **meta})
        if limit is not None and len(c.examples) >= limit:
            break
    return c.result()


# ---------------------------------------------------------------------------------------------- AMBOSS-style
_AMBOSS = "an AMBOSS-style record {stem, options{A..F} (or keys A..F), answer}"


def _load_amboss(src, *, id_prefix: str = "amboss", limit: int | None = None) -> Loaded:
    """AMBOSS-style JSONL: a case ``stem`` (optionally a ``lead_in`` or ``question`` line), options A–F, ``answer``.

    Options come either as ``options`` (dict or list) or as top-level keys ``"A"`` .. ``"F"``; empty
    trailing options (null or "") are dropped, so items with 4, 5 or 6 options share one schema.
    """
    path = check_file(src, "an AMBOSS-style JSONL file")
    c = _Collector(str(path))
    for i, (where, rec) in enumerate(iter_records(path, "one AMBOSS-style JSON object per line")):
        if "stem" in rec:
            q = _need_str(c, rec, "stem", where, _AMBOSS)
            lead = rec.get("lead_in") or rec.get("question")
            if isinstance(lead, str) and lead.strip():
                q = f"{q.rstrip()}\n{lead.strip()}"
        elif "question" in rec:
            q = _need_str(c, rec, "question", where, _AMBOSS)
        else:
            raise c.error(where, f"missing field 'stem'; expected {_AMBOSS}")
        if "options" in rec:
            raw = rec["options"]
            if isinstance(raw, dict):
                raw = {k: v for k, v in raw.items() if v not in (None, "")}
        else:
            raw = {k: rec[k] for k in LETTERS if k in rec and rec[k] not in (None, "")}
            if not raw:
                raise c.error(where, f"missing options: neither 'options' nor keys 'A'..'F'; expected {_AMBOSS}")
        opts = _options(c, raw, where)
        if len(opts) > 6:
            raise c.error(where, f"{len(opts)} options; AMBOSS-style items have at most 6 (A-F)")
        ans = _need(c, rec, "answer", where, _AMBOSS)
        meta = {k: rec[k] for k in ("explanation", "specialty", "difficulty") if k in rec}
        c.add(where, id=_record_id(rec, "id", id_prefix, i), question=q, options=opts, answer=ans,
              metadata={"source": "amboss", **meta})
        if limit is not None and len(c.examples) >= limit:
            break
    return c.result()


# ---------------------------------------------------------------------------------------------- MedMCQA
_MEDMCQA = "a MedMCQA record {question, opa, opb, opc, opd, cop, exp, id}"


def _cop_int(c: _Collector, v: Any, where: str) -> int | None:
    if v is None or v == "" or v == -1 or v == "-1":
        return None  # unlabelled (the public test split)
    if isinstance(v, bool):
        raise c.error(where, f"cop is {v!r}; expected an integer 1-4")
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        v = int(v)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int):
        raise c.error(where, f"cop is {v!r}; expected an integer 1-4")
    return v


def _load_medmcqa(src, *, cop_base: int | None = None, id_prefix: str = "medmcqa",
                  limit: int | None = None) -> Loaded:
    """MedMCQA JSONL (also under a ``.json`` name): four options ``opa..opd``, correct option ``cop``.

    ``cop`` is 1-4 in the official release; some re-releases use 0-3. With ``cop_base=None`` the base is
    detected from the whole file (a 0 means 0-based, a 4 means 1-based, both is an error) and logged.
    A non-empty explanation ``exp`` becomes the passage ``medmcqa-exp-{id}``, the example's gold passage.
    """
    path = check_file(src, "a MedMCQA JSONL file")
    c = _Collector(str(path))
    rows: list[tuple[str, dict, int | None]] = []
    for where, rec in iter_records(path, "one MedMCQA JSON object per line"):
        rows.append((where, rec, _cop_int(c, rec.get("cop"), where)))
        if limit is not None and len(rows) >= limit:
            break
    cops = [cop for _, _, cop in rows if cop is not None]
    if cop_base is None:
        has0, has4 = 0 in cops, 4 in cops
        if has0 and has4:
            w0 = next(w for w, _, cop in rows if cop == 0)
            w4 = next(w for w, _, cop in rows if cop == 4)
            raise c.error(None, f"cop values include both 0 ({w0}) and 4 ({w4}); expected 1-4 (official MedMCQA) "
                                "or 0-3 throughout. Pass cop_base=0 or 1 to say which")
        cop_base = 0 if has0 else 1
        if has0:
            logger.warning("%s: MedMCQA cop looks 0-based (0-3, a 0 occurs); reading 0 as A. "
                           "Pass cop_base=1 if that is wrong.", path)
        elif cops and not has4:
            logger.warning("%s: MedMCQA cop has no 0 and no 4; assuming the official 1-4 (1 = A). "
                           "Pass cop_base=0 if the file is 0-based.", path)
        else:
            logger.info("%s: MedMCQA cop is 1-based (1-4, the official release)", path)
    elif cop_base not in (0, 1):
        raise ValueError(f"cop_base must be 0, 1 or None (detect), got {cop_base!r}")

    for i, (where, rec, cop) in enumerate(rows):
        q = _need_str(c, rec, "question", where, _MEDMCQA)
        opts = {}
        for letter, key in zip("ABCD", ("opa", "opb", "opc", "opd")):
            v = _need(c, rec, key, where, _MEDMCQA)
            if v is None:
                raise c.error(where, f"field {key!r} is null; expected the text of option {letter}")
            opts[letter] = v if isinstance(v, str) else str(v)
        answer = None
        if cop is not None:
            k = cop - cop_base
            if not 0 <= k < 4:
                lo = cop_base
                raise c.error(where, f"cop is {cop}, not an option; expected {lo}-{lo + 3} "
                                     f"({'0-based' if cop_base == 0 else '1-based'})")
            answer = "ABCD"[k]
        qid = _record_id(rec, "id", id_prefix, i)
        gold: list[str] = []
        exp = rec.get("exp")
        if isinstance(exp, str) and exp.strip():
            subject, topic = rec.get("subject_name") or "", rec.get("topic_name") or ""
            title = f"{subject}: {topic}" if subject and topic else (subject or topic)
            gold.append(c.add_passage(where, f"medmcqa-exp-{qid}", exp.strip(), title))
        meta = {"source": "medmcqa"}
        for src_key, key in (("subject_name", "subject"), ("topic_name", "topic"), ("choice_type", "choice_type")):
            if rec.get(src_key) is not None:
                meta[key] = rec[src_key]
        c.add(where, id=qid, question=q, options=opts, answer=answer, gold_passage_ids=gold, metadata=meta)
    return c.result()


# ---------------------------------------------------------------------------------------------- MMLU
def _mmlu_subject(p: Path) -> str:
    stem = p.stem
    for suf in ("_test", "_dev", "_val", "_train"):
        if stem.endswith(suf):
            return stem[: -len(suf)]
    return stem


def _load_mmlu_file(c: _Collector, path: Path, id_prefix: str, limit: int | None) -> None:
    subject = _mmlu_subject(path)
    n = 0
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            start = 1
            for row in reader:
                where = f"line {start}"
                start = reader.line_num + 1
                if not row or all(not x.strip() for x in row):
                    continue
                if n == 0 and row[0].strip().lower() == "question" and row[-1].strip().lower() == "answer":
                    continue  # a header some exports add
                if len(row) < 4:
                    raise c.error(where, f"{len(row)} column(s); expected question, 2 or more options, answer "
                                         "(MMLU: question,A,B,C,D,answer without header)")
                opts = {LETTERS[j]: t for j, t in enumerate(row[1:-1])}
                ans = row[-1].strip()
                if ans.upper() not in opts:
                    raise c.error(where, f"answer {ans!r} is not an option; expected one of {list(opts)} "
                                         "in the last column")
                c.add(where, id=f"{id_prefix}-{subject}-{n}", question=row[0], options=opts, answer=ans,
                      metadata={"source": "mmlu", "subject": subject})
                n += 1
                if limit is not None and len(c.examples) >= limit:
                    return
    except UnicodeDecodeError as e:
        raise DataFormatError(path, None, f"not valid UTF-8 ({e.reason}); expected a UTF-8 CSV") from None
    except csv.Error as e:
        raise DataFormatError(path, None, f"malformed CSV ({e}); expected question,A,B,C,D,answer") from None
    if n == 0:
        raise DataFormatError(path, None, "file is empty; expected CSV rows question,A,B,C,D,answer")


def _load_mmlu(src, *, id_prefix: str = "mmlu", limit: int | None = None) -> Loaded:
    """MMLU CSV without header (``question,A,B,C,D,answer``): one file, or a folder of them (sorted by name)."""
    p = Path(src)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder (expected an MMLU CSV file or a folder of CSVs)")
    files = sorted(p.glob("*.csv")) if p.is_dir() else [p]
    if not files:
        raise DataFormatError(p, None, "folder holds no .csv files; expected MMLU CSVs (question,A,B,C,D,answer)")
    c = _Collector(str(p))
    c.multi = p.is_dir()
    for f in files:
        c.source = str(f)
        _load_mmlu_file(c, f, id_prefix, limit)
        if limit is not None and len(c.examples) >= limit:
            break
    c.source = str(p)
    return c.result()


# ---------------------------------------------------------------------------------------------- PubMedQA
_PUBMEDQA = "a PubMedQA record {QUESTION, CONTEXTS[], LABELS[], final_decision}"
PUBMEDQA_OPTIONS = {"A": "yes", "B": "no", "C": "maybe"}
_YNM = {v: k for k, v in PUBMEDQA_OPTIONS.items()}


def _load_pubmedqa(src, *, split_file: str | os.PathLike | None = None, split: str = "test",
                   limit: int | None = None) -> Loaded:
    """PubMedQA (PQA-L ``ori_pqal.json``; PQA-A/U too): a JSON object keyed by PMID.

    Options are ``{"A": "yes", "B": "no", "C": "maybe"}``; the answer is ``final_decision``'s letter
    (``None`` when absent, as in PQA-U). Section ``i`` of ``CONTEXTS`` becomes passage ``pubmed-{pmid}-{i}``
    titled with ``LABELS[i]``; all sections of its own abstract are an example's gold passages.

    ``split_file``: a JSON ``{pmid: answer}`` such as the official PQA-L ``test_ground_truth.json``;
    ``split="test"`` keeps the PMIDs it lists (their answers must agree), ``split="train"`` the others.
    """
    path = check_file(src, "a PubMedQA JSON file")
    data = read_json(path, "a JSON object keyed by PMID")
    if not isinstance(data, dict):
        raise DataFormatError(path, None, f"top level is a JSON {type(data).__name__}; expected an object keyed by PMID")
    if not data:
        raise DataFormatError(path, None, "JSON object is empty; expected records keyed by PMID")
    keep: dict[str, Any] | None = None
    if split_file is not None:
        sf = check_file(split_file, "a JSON {pmid: answer} split file")
        keep = read_json(sf, "a JSON object {pmid: answer}")
        if not isinstance(keep, dict) or not keep:
            raise DataFormatError(sf, None, "expected a non-empty JSON object {pmid: answer}")
        missing = [k for k in keep if k not in data]
        if missing:
            raise DataFormatError(sf, f"record {missing[0]!r}",
                                  f"PMID not in {path} ({len(missing)} missing); expected a split of that file")
        if split not in ("test", "train"):
            raise ValueError(f"split must be 'test' (the PMIDs in split_file) or 'train' (the others), got {split!r}")
    c = _Collector(str(path))
    for pmid, rec in data.items():
        where = f"record {pmid!r}"
        if keep is not None and ((pmid in keep) != (split == "test")):
            continue
        if not isinstance(rec, dict):
            raise c.error(where, f"got a JSON {type(rec).__name__}; expected {_PUBMEDQA}")
        q = _need_str(c, rec, "QUESTION", where, _PUBMEDQA)
        contexts = _need(c, rec, "CONTEXTS", where, _PUBMEDQA)
        if not isinstance(contexts, list) or not all(isinstance(x, str) for x in contexts):
            raise c.error(where, f"CONTEXTS is {type(contexts).__name__}; expected a list of texts")
        labels = rec.get("LABELS") or []
        decision = rec.get("final_decision")
        answer = None
        if decision is not None:
            key = str(decision).strip().lower()
            if key not in _YNM:
                raise c.error(where, f"final_decision is {decision!r}; expected yes, no or maybe")
            answer = _YNM[key]
        if keep is not None and split == "test":
            truth = str(keep[pmid]).strip().lower()
            if truth not in _YNM:
                raise DataFormatError(split_file, where, f"answer {keep[pmid]!r}; expected yes, no or maybe")
            if answer is not None and _YNM[truth] != answer:
                raise c.error(where, f"final_decision {decision!r} disagrees with {split_file} ({keep[pmid]!r})")
            answer = _YNM[truth]
        gold = []
        for i, text in enumerate(contexts):
            if not text.strip():
                continue
            title = labels[i] if i < len(labels) and isinstance(labels[i], str) else ""
            gold.append(c.add_passage(where, f"pubmed-{pmid}-{i}", text, title))
        meta: dict[str, Any] = {"source": "pubmedqa", "pmid": pmid}
        for k_src, k in (("YEAR", "year"), ("MESHES", "meshes"), ("LONG_ANSWER", "long_answer")):
            if rec.get(k_src) is not None:
                meta[k] = rec[k_src]
        c.add(where, id=f"pubmedqa-{pmid}", question=q, options=dict(PUBMEDQA_OPTIONS), answer=answer,
              gold_passage_ids=gold, metadata=meta)
        if limit is not None and len(c.examples) >= limit:
            break
    return c.result()


# ---------------------------------------------------------------------------------------------- Huatuo
_HUATUO = "a Huatuo record {questions, answers} (or {question, answer})"


def _as_text_list(v: Any) -> list:
    if isinstance(v, str):
        return [v]
    if isinstance(v, list):
        return v
    return []


def _load_huatuo(src, *, id_prefix: str = "huatuo", limit: int | None = None) -> Loaded:
    """Huatuo-26M style free-text QA (JSONL).

    ``{"questions": [[q, paraphrase, ...], ...], "answers": [a, ...]}`` pairs question group ``j`` with
    answer ``j`` (one example each; paraphrases go to ``metadata["paraphrases"]``). The Lite layout
    ``{"question": q, "answer": a}`` works too. Examples have ``options == {}`` and ``answer_text`` set.
    """
    path = check_file(src, "a Huatuo JSONL file")
    c = _Collector(str(path))
    for i, (where, rec) in enumerate(iter_records(path, "one Huatuo JSON object per line")):
        rid = _record_id(rec, "id", id_prefix, i)
        if "questions" in rec or "answers" in rec:
            qs = _as_text_list(_need(c, rec, "questions", where, _HUATUO))
            ans = _as_text_list(_need(c, rec, "answers", where, _HUATUO))
            if not qs or len(qs) != len(ans):
                raise c.error(where, f"{len(qs)} question group(s) but {len(ans)} answer(s); "
                                     "expected one answer per question group")
            pairs = list(zip(qs, ans))
        elif "question" in rec:
            pairs = [(_need(c, rec, "question", where, _HUATUO), _need(c, rec, "answer", where, _HUATUO))]
        else:
            raise c.error(where, f"missing field 'questions'; expected {_HUATUO}")
        for j, (group, answer) in enumerate(pairs):
            group = [group] if isinstance(group, str) else group
            if not isinstance(group, list) or not group or not all(isinstance(g, str) and g.strip() for g in group):
                raise c.error(where, f"question group {j} is {group!r}; expected a text or a list of texts")
            if not isinstance(answer, str) or not answer.strip():
                raise c.error(where, f"answer {j} is {answer!r}; expected a non-empty text")
            meta: dict[str, Any] = {"source": "huatuo"}
            if len(group) > 1:
                meta["paraphrases"] = group[1:]
            eid = rid if len(pairs) == 1 else f"{rid}-{j}"
            c.add(where, id=eid, question=group[0], answer_text=answer, metadata=meta)
            if limit is not None and len(c.examples) >= limit:
                return c.result()
    return c.result()


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
    desc = "hf dataset"
    if isinstance(src, (str, os.PathLike)):
        p = Path(src)
        if not p.is_dir():
            raise ValueError(f"{p}: format 'hf' expects a datasets.Dataset object or a folder written by "
                             "save_to_disk; load hub data sets with datasets.load_dataset(...) first")
        import datasets

        src = datasets.load_from_disk(str(p))
        desc = f"hf dataset {p}"
    if isinstance(src, Mapping) and not hasattr(src, "column_names") or _is_dataset_dict(src):
        splits = list(src.keys())
        if split is None:
            if len(splits) != 1:
                raise ValueError(f"{desc}: a DatasetDict with splits {splits}; pass split=<one of them>")
            split = splits[0]
        if split not in src:
            raise ValueError(f"{desc}: no split {split!r}; expected one of {splits}")
        src = src[split]
        desc = f"{desc} (split {split!r})"
    elif split is not None:
        desc = f"{desc} (split {split!r})"
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


def _is_dataset_dict(obj: Any) -> bool:
    t = type(obj)
    return any(k.__name__ in ("DatasetDict", "IterableDatasetDict") for k in t.__mro__)


# ---------------------------------------------------------------------------------------------- public API
QA_FORMATS: dict[str, tuple[Callable[..., Loaded], str]] = {
    "jmlr": (_load_jmlr, "native JSONL, one QAExample per line (see save_qa)"),
    "medqa": (_load_medqa, "MedQA JSONL: question, options {A..D|E}, answer_idx"),
    "amboss": (_load_amboss, "AMBOSS-style JSONL: stem, options A-F, answer"),
    "medmcqa": (_load_medmcqa, "MedMCQA JSONL: question, opa..opd, cop (1-4), exp -> passage"),
    "mmlu": (_load_mmlu, "MMLU CSV without header (question,A,B,C,D,answer), a file or a folder"),
    "pubmedqa": (_load_pubmedqa, "PubMedQA JSON keyed by PMID; yes/no/maybe; CONTEXTS -> passages"),
    "huatuo": (_load_huatuo, "Huatuo-26M free-text QA JSONL: questions, answers"),
    "jsonl": (_load_jsonl, "generic JSONL with mapping={...}"),
    "hf": (_load_hf, "a datasets.Dataset (or DatasetDict + split) with mapping={...}"),
}


def qa_formats() -> list[str]:
    """The names :func:`load_qa` accepts."""
    return list(QA_FORMATS)


def _loader(fmt: str) -> Callable[..., Loaded]:
    key = fmt.strip().lower() if isinstance(fmt, str) else fmt
    if key not in QA_FORMATS:
        known = ", ".join(QA_FORMATS)
        raise ValueError(f"unknown QA format {fmt!r}; expected one of: {known}")
    return QA_FORMATS[key][0]


def load_qa(fmt: str, src: Any, **kw: Any) -> list[QAExample]:
    """Load QA examples in format ``fmt`` from ``src`` (a path, or a ``datasets.Dataset`` for ``hf``).

    Formats: ``jmlr`` (native JSONL), ``medqa``, ``amboss``, ``medmcqa``, ``mmlu`` (a CSV or a folder of
    CSVs), ``pubmedqa``, ``huatuo``, ``jsonl`` (with ``mapping=``), ``hf`` (with ``mapping=``). Keyword
    arguments go to the format's loader (e.g. ``limit``, ``cop_base``, ``split_file``, ``mapping``).

    Raises ``ValueError`` for an unknown format (listing the known ones) and for bad input, naming the
    file, the line or record, and what was expected; ``FileNotFoundError`` for a missing file.

    Example::

        qa = load_qa("medqa", "data/medqa/us_4options_test.jsonl")
        qa[0].options, qa[0].answer   # {'A': ..., 'B': ..., 'C': ..., 'D': ...}, 'B'
    """
    return _loader(fmt)(src, **kw)[0]


def load_qa_corpus(fmt: str, src: Any, **kw: Any):
    """The passages a QA source carries, as a :class:`~jmlr.data.Corpus`.

    MedMCQA explanations (``medmcqa-exp-{id}``) and PubMedQA abstract sections (``pubmed-{pmid}-{i}``);
    their ids equal the examples' ``gold_passage_ids``. A format that carries no passages raises ``ValueError``.
    """
    from .corpus import Corpus

    examples, passages = _loader(fmt)(src, **kw)
    if not passages:
        raise ValueError(f"{src}: format {fmt!r} carried no passages (only MedMCQA 'exp' and PubMedQA 'CONTEXTS' "
                         "do); load a corpus with Corpus.load(path) instead")
    return Corpus(passages)


def load_qa_with_corpus(fmt: str, src: Any, **kw: Any):
    """``(examples, corpus)`` in one read; the corpus is empty when the format carries no passages."""
    from .corpus import Corpus

    examples, passages = _loader(fmt)(src, **kw)
    return examples, Corpus(passages)
