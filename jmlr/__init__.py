"""jmlr: joint training of a dense retriever and an LLM reader for medical QA.

The public names are imported lazily so that ``import jmlr`` stays cheap (no torch import until used).
"""
from __future__ import annotations

from jmlr.core.lazy import lazy_getattr

__version__ = "0.1.0"

_LAZY = {
    "QAExample": "jmlr.data",
    "load_qa": "jmlr.data",
    "Corpus": "jmlr.data",
    "Passage": "jmlr.data",
    "contamination": "jmlr.data",
    "DualEncoder": "jmlr.retriever",
    "Reader": "jmlr.reader",
    "JointTrainer": "jmlr.train",
    "TrainConfig": "jmlr.config",
    "resolve": "jmlr.models",
}

__all__ = sorted(_LAZY) + ["__version__"]


__getattr__ = lazy_getattr("jmlr", _LAZY)
