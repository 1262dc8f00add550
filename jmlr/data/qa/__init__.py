"""QA loaders: one function per source format, behind :func:`load_qa` and :func:`load_qa_corpus`.

Each loader returns ``(examples, passages)``: the questions, and the passages the file itself carries
(MedMCQA explanations, PubMedQA abstract sections), whose ids are the examples' ``gold_passage_ids``.
Errors name the file, the line or record, and what was expected. The loaders: :mod:`.native` (``jmlr``),
:mod:`.medical` (MedQA, AMBOSS, MedMCQA, MMLU, PubMedQA, Huatuo), :mod:`.mapping` (``jsonl``, ``hf``).
"""
from __future__ import annotations

from typing import Any, Callable

from ..corpus import Corpus
from ..types import QAExample
from .mapping import _load_hf, _load_jsonl
from .medical import PUBMEDQA_OPTIONS, _load_amboss, _load_huatuo, _load_medmcqa, _load_medqa, _load_mmlu, _load_pubmedqa
from .native import _load_jmlr, save_qa
from .records import Loaded

__all__ = ["QA_FORMATS", "PUBMEDQA_OPTIONS", "qa_formats", "load_qa", "load_qa_corpus", "load_qa_with_corpus", "save_qa"]


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
    examples, passages = _loader(fmt)(src, **kw)
    if not passages:
        raise ValueError(f"{src}: format {fmt!r} carried no passages (only MedMCQA 'exp' and PubMedQA 'CONTEXTS' "
                         "do); load a corpus with Corpus.load(path) instead")
    return Corpus(passages)


def load_qa_with_corpus(fmt: str, src: Any, **kw: Any):
    """``(examples, corpus)`` in one read; the corpus is empty when the format carries no passages."""
    examples, passages = _loader(fmt)(src, **kw)
    return examples, Corpus(passages)
