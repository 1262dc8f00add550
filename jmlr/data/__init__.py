"""jmlr.data: QA examples, corpora, leakage checks.

- :class:`QAExample`, :class:`Passage`: the records.
- :func:`load_qa` / :func:`save_qa`: QA sets in many formats (medqa, amboss, medmcqa, mmlu, pubmedqa, huatuo,
  generic jsonl, Hugging Face datasets) and the native ``jmlr`` JSONL.
- :func:`load_qa_corpus`: the passages a QA file carries (MedMCQA explanations, PubMedQA abstracts).
- :class:`Corpus`: memory-light passages with id lookup, chunking and dedup.
- :func:`contamination`: eval questions whose text overlaps the corpus.
- :func:`iter_records`: the records of a JSONL file or of a JSON array, with file and line in every error.
- :func:`inspect_summary` / :func:`format_summary`: what ``jmlr data inspect`` prints.
- ``demo_corpus()`` / ``demo_qa(split)``: the bundled demo data (from :mod:`jmlr.data.demo`).
"""
from __future__ import annotations

import importlib

from ._io import DataFormatError, iter_records
from .contamination import ContaminationReport, QuestionOverlap, contamination
from .corpus import Corpus, DedupReport
from .summary import format_summary, inspect_summary
from .qa import QA_FORMATS, load_qa, load_qa_corpus, load_qa_with_corpus, qa_formats, save_qa
from .text import normalize_for_dedup, word_ngrams
from .types import Passage, QAExample

_DEMO = ("demo_corpus", "demo_qa", "load_demo")

__all__ = [
    "QAExample", "Passage", "Corpus", "DedupReport", "load_qa", "load_qa_corpus", "load_qa_with_corpus", "save_qa",
    "qa_formats", "QA_FORMATS", "contamination", "ContaminationReport", "QuestionOverlap", "inspect_summary",
    "format_summary", "normalize_for_dedup", "word_ngrams", "DataFormatError", "iter_records",
]


def __getattr__(name: str):
    # the demo data lives in its own module; a missing or broken one must not break `import jmlr.data`
    if name in _DEMO:
        try:
            mod = importlib.import_module("jmlr.data.demo")
        except ImportError as e:  # pragma: no cover - depends on the demo module being present
            raise AttributeError(f"jmlr.data.{name} is unavailable: jmlr.data.demo failed to import ({e})") from e
        if not hasattr(mod, name):
            raise AttributeError(f"jmlr.data.demo does not define {name!r}")
        return getattr(mod, name)
    raise AttributeError(f"module 'jmlr.data' has no attribute {name!r}")
