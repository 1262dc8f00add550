"""Retrievers: the :class:`DualEncoder` (query and doc towers) and its contrastive trainer.

BM25 lives in :mod:`jmlr.index.bm25` (``jmlr.index.BM25Index``).

Names are imported lazily (``import jmlr.retriever`` does not import torch).
"""
from __future__ import annotations

from jmlr.core.lazy import lazy_getattr

_LAZY = {
    "DualEncoder": "jmlr.retriever.dual_encoder",
    "ContrastiveTrainer": "jmlr.retriever.contrastive",
    "ContrastiveConfig": "jmlr.retriever.contrastive",
    "ContrastiveExample": "jmlr.retriever.contrastive",
    "info_nce": "jmlr.retriever.contrastive",
    "mine_hard_negatives": "jmlr.retriever.contrastive",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr("jmlr.retriever", _LAZY)
