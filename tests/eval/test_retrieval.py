"""Recall@k, MRR@k, nDCG@k against hand-computed values."""
import math

import pytest

from jmlr.eval.retrieval import gold_recall_at_k, mrr_at_k, ndcg_at_k, recall_at_k, retrieval_metrics

RANKED = [["a", "b", "c", "d"], ["x", "y", "z", "w"], ["m", "n", "o", "p"]]
GOLD = [{"b"}, {"w", "y"}, {"q"}]


def test_recall_is_the_hit_rate():
    assert recall_at_k(RANKED, GOLD, 1) == 0
    assert recall_at_k(RANKED, GOLD, 2) == pytest.approx(2 / 3)
    assert recall_at_k(RANKED, GOLD, 4) == pytest.approx(2 / 3)
    assert gold_recall_at_k(RANKED, GOLD, 2) == pytest.approx((1 + 0.5 + 0) / 3)
    assert gold_recall_at_k(RANKED, GOLD, 4) == pytest.approx((1 + 1 + 0) / 3)


def test_mrr_and_ndcg():
    assert mrr_at_k(RANKED, GOLD, 10) == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    assert mrr_at_k(RANKED, GOLD, 1) == 0
    ndcg1 = (1 / math.log2(3)) / 1.0
    ndcg2 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(RANKED, GOLD, 10) == pytest.approx((ndcg1 + ndcg2 + 0) / 3)
    assert ndcg_at_k([["g"]], [{"g"}], 10) == 1.0


def test_metrics_dict_and_errors():
    m = retrieval_metrics(RANKED, GOLD, ks=(1, 2))
    assert set(m) == {"n", "recall@1", "recall@2", "gold_recall@1", "gold_recall@2", "mrr@10", "ndcg@10"}
    assert m["n"] == 3
    with pytest.raises(ValueError, match="query 1 has no gold"):
        recall_at_k(RANKED[:2], [{"a"}, set()], 1)
    with pytest.raises(ValueError, match="3 rankings but 2 gold"):
        mrr_at_k(RANKED, GOLD[:2])
    with pytest.raises(ValueError, match="k must be >= 1"):
        ndcg_at_k(RANKED, GOLD, 0)
