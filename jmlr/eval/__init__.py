"""Evaluation: MCQ accuracy (:mod:`.mcq`), retrieval metrics (:mod:`.retrieval`), BLEU/ROUGE
(:mod:`.generation`) and the bias probe (:mod:`.bias`)."""
from __future__ import annotations

import importlib

_LAZY = {"mcq_accuracy": "jmlr.eval.mcq", "evaluate_mcq": "jmlr.eval.mcq",
         "retrieval_metrics": "jmlr.eval.retrieval", "generation_metrics": "jmlr.eval.generation",
         "run_bias_probe": "jmlr.eval.bias"}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jmlr.eval' has no attribute {name!r}")
