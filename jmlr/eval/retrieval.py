"""Retrieval metrics against gold passage ids: Recall@k, MRR@k, nDCG@k.

* ``recall@k`` -- the fraction of queries with at least one gold passage in the top k (the hit rate of
  DPR-style QA retrieval). ``gold_recall@k`` is the fraction of each query's gold passages found in the
  top k, averaged (they differ when a query has several gold passages, e.g. PubMedQA sections).
* ``mrr@k`` -- mean of 1 / rank of the first gold passage within the top k (0 when none).
* ``ndcg@k`` -- binary-relevance nDCG: sum over hits of 1 / log2(rank + 1), divided by the ideal
  DCG of min(|gold|, k) hits at the top.
"""
from __future__ import annotations

import math
from typing import Any, Collection, Sequence


def _check(ranked: Sequence[Sequence], gold: Sequence[Collection]) -> list[set]:
    if len(ranked) != len(gold):
        raise ValueError(f"{len(ranked)} rankings but {len(gold)} gold sets")
    out = []
    for i, g in enumerate(gold):
        g = {g} if isinstance(g, (str, int)) else set(g)
        if not g:
            raise ValueError(f"query {i} has no gold passage ids; drop it before scoring")
        out.append(g)
    return out


def _k_check(k: int) -> int:
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return int(k)


def recall_at_k(ranked: Sequence[Sequence], gold: Sequence[Collection], k: int) -> float:
    """Fraction of queries with a gold id among their first ``k`` ranked ids."""
    k, gs = _k_check(k), _check(ranked, gold)
    return sum(any(r in g for r in list(rank)[:k]) for rank, g in zip(ranked, gs)) / max(1, len(gs))


def gold_recall_at_k(ranked: Sequence[Sequence], gold: Sequence[Collection], k: int) -> float:
    """Mean over queries of |gold in top k| / |gold|."""
    k, gs = _k_check(k), _check(ranked, gold)
    return sum(len(set(list(rank)[:k]) & g) / len(g) for rank, g in zip(ranked, gs)) / max(1, len(gs))


def mrr_at_k(ranked: Sequence[Sequence], gold: Sequence[Collection], k: int = 10) -> float:
    """Mean reciprocal rank of the first gold id within the top ``k``."""
    k, gs = _k_check(k), _check(ranked, gold)
    total = 0.0
    for rank, g in zip(ranked, gs):
        for j, r in enumerate(list(rank)[:k]):
            if r in g:
                total += 1.0 / (j + 1)
                break
    return total / max(1, len(gs))


def ndcg_at_k(ranked: Sequence[Sequence], gold: Sequence[Collection], k: int = 10) -> float:
    """Binary-relevance nDCG@k (ideal: min(|gold|, k) hits at the top)."""
    k, gs = _k_check(k), _check(ranked, gold)
    total = 0.0
    for rank, g in zip(ranked, gs):
        dcg = sum(1.0 / math.log2(j + 2) for j, r in enumerate(list(rank)[:k]) if r in g)
        idcg = sum(1.0 / math.log2(j + 2) for j in range(min(len(g), k)))
        total += dcg / idcg
    return total / max(1, len(gs))


def retrieval_metrics(ranked: Sequence[Sequence], gold: Sequence[Collection],
                      ks: Sequence[int] = (1, 5, 20)) -> dict[str, Any]:
    """``recall@k`` and ``gold_recall@k`` for each k in ``ks``, plus ``mrr@10``, ``ndcg@10`` and ``n``."""
    out: dict[str, Any] = {"n": len(ranked)}
    for k in ks:
        out[f"recall@{k}"] = recall_at_k(ranked, gold, k)
    for k in ks:
        out[f"gold_recall@{k}"] = gold_recall_at_k(ranked, gold, k)
    out["mrr@10"] = mrr_at_k(ranked, gold, 10)
    out["ndcg@10"] = ndcg_at_k(ranked, gold, 10)
    return out


def evaluate_index(index, queries, gold: Sequence[Collection], *, ks: Sequence[int] = (1, 5, 20),
                   batch_size: int = 256) -> dict[str, Any]:
    """Search ``index`` for ``queries`` (query embeddings ``(Q, d)``, or texts for BM25) and score the rankings.

    Searches in batches of ``batch_size`` down to ``max(max(ks), 10)``.
    """
    depth = max(max(ks), 10)
    ranked: list[list] = []
    for s in range(0, len(queries), batch_size):
        _, ids = index.search(queries[s:s + batch_size], depth)  # (b, depth)
        ranked.extend([list(r) for r in ids])
    return retrieval_metrics(ranked, gold, ks)
