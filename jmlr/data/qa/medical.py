"""Loaders of the medical QA data sets: MedQA, AMBOSS-style, MedMCQA, MMLU, PubMedQA, Huatuo."""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

from .._io import DataFormatError, check_file, iter_records, read_json
from ..types import LETTERS
from .records import Loaded, _Collector, _need, _need_str, _options, _record_id

logger = logging.getLogger("jmlr.data")


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
