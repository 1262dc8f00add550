"""Evaluation: MCQ accuracy (:mod:`.mcq`), retrieval metrics (:mod:`.retrieval`), the joint retriever + reader
evaluation (:mod:`.joint`), BLEU/ROUGE (:mod:`.generation`) and the bias probe (:mod:`.bias`)."""
from __future__ import annotations

from jmlr.core.lazy import lazy_getattr

_LAZY = {"mcq_accuracy": "jmlr.eval.mcq", "evaluate_mcq": "jmlr.eval.mcq",
         "retrieval_metrics": "jmlr.eval.retrieval", "generation_metrics": "jmlr.eval.generation",
         "run_bias_probe": "jmlr.eval.bias", "evaluate_joint": "jmlr.eval.joint"}
__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr("jmlr.eval", _LAZY)
