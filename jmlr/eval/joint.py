"""Evaluation of a joint retriever + reader: MCQ accuracy with the retrieved passages (or closed-book) and
Recall@k of the gold passages. Used by the joint trainer during training and by ``jmlr eval``."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from jmlr.core.precision import Precision, resolve_precision

from .mcq import mcq_accuracy
from .retrieval import retrieval_metrics

__all__ = ["evaluate_joint"]


@torch.no_grad()
def evaluate_joint(retriever, reader, state, doc_texts, corpus, examples, top_k: int = 4,
                   use_retrieval: bool = True, precision: Precision | str | None = None, progress: bool = True,
                   batch_size: int = 8, recall_ks=(1, 5, 20), rank: int = 0, world: int = 1,
                   return_predictions: bool = False) -> dict:
    """Accuracy of ``reader`` on ``examples`` with the top-``top_k`` passages from ``state`` (a
    RetrievalState), or closed-book when ``use_retrieval`` is False, plus Recall@k of the gold passages.

    ``precision``: a resolved :class:`~jmlr.core.precision.Precision` or ``auto | fp32 | bf16 | fp16`` (default
    ``auto`` on the reader's device). Examples are batched by length (similar prompts together: less padding).
    With ``world > 1`` (torchrun) each rank scores every ``world``-th example and the results are gathered, so
    every rank returns the same, full result; every rank must call this (the sharded search is collective).
    ``return_predictions`` adds ``predictions`` (letter per example) and ``ranked`` (top corpus ids per example).
    """
    amp = precision if isinstance(precision, Precision) else resolve_precision(precision or "auto", reader.device)
    n = len(examples)
    mine = list(range(rank, n, world))  # this rank's share
    mine.sort(key=lambda i: _length_key(examples[i]))
    n_batches = math.ceil(math.ceil(n / world) / batch_size)  # the same on every rank: search is collective
    kmax = min(max(max(recall_ks), top_k), len(doc_texts))
    preds: dict[int, Any] = {}
    ranked: dict[int, list] = {}
    for s in tqdm(range(n_batches), desc="eval", disable=not progress, leave=False):
        idx = mine[s * batch_size:(s + 1) * batch_size]
        batch = [examples[i] for i in idx]
        with amp.autocast(reader.device):
            q = retriever.encode_queries([ex.question for ex in batch], batch_size=max(len(batch), 1),
                                         progress=False) if batch else None
        if q is None:  # this rank has run out of examples but still joins the collective search
            q = torch.zeros((0, state.dim), dtype=torch.float32, device=getattr(state, "device", "cpu"))
        _, cand = state.search(q.float(), kmax, report=False)  # (b, kmax); eval pools do not steer refresh
        rows = cand.tolist()
        for i, row in zip(idx, rows):
            ranked[i] = [corpus.ids[j] for j in row]
        if not batch:
            continue
        passages = [[doc_texts[j] for j in row[:top_k]] for row in rows] if use_retrieval else None
        with amp.autocast(reader.device):
            for i, p in zip(idx, reader.predict(batch, passages)):
                preds[i] = p
    if world > 1:
        parts: list = [None] * world
        dist.all_gather_object(parts, (preds, ranked))  # once per evaluation, off the training hot path
        for p, r in parts:
            preds.update(p)
            ranked.update(r)
    res = mcq_accuracy([preds[i] for i in range(n)], [ex.answer for ex in examples])
    golds = [list(ex.gold_passage_ids) for ex in examples]
    if any(golds):
        res.update(retrieval_metrics([ranked[i] for i in range(n)], golds, ks=recall_ks))
    res["retrieval"] = use_retrieval
    res["precision"] = amp.name
    if return_predictions:
        res["predictions"] = [preds[i] for i in range(n)]
        res["ranked"] = [ranked[i] for i in range(n)]
    return res


def _length_key(ex) -> int:
    """A cheap proxy of an example's prompt length, for batching by length."""
    return len(ex.question) + sum(len(str(o)) for o in (getattr(ex, "options", None) or {}).values())
