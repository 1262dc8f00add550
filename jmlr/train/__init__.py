"""Training: :class:`JointTrainer` (the joint retriever+reader loop), checkpoints, and the stage recipes in
:mod:`jmlr.train.stages` (pretrain, sft, qgen, dpo, progressive cases)."""
from __future__ import annotations

from jmlr.core.lazy import lazy_getattr

_LAZY = {"JointTrainer": "jmlr.train.trainer", "JointModel": "jmlr.train.trainer",
         "RetrievalState": "jmlr.train.retrieval"}
__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr("jmlr.train", _LAZY)
