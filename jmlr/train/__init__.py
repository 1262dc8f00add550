"""Training: :class:`JointTrainer` (the joint retriever+reader loop), checkpoints, and the stage recipes in
:mod:`jmlr.train.stages` (pretrain, sft, qgen, dpo, progressive cases)."""
from __future__ import annotations

import importlib

_LAZY = {"JointTrainer": "jmlr.train.trainer", "JointModel": "jmlr.train.trainer",
         "RetrievalState": "jmlr.train.retrieval"}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jmlr.train' has no attribute {name!r}")
