"""The measuring code of benchmarks/demo_baselines.py: retrieval metrics worked by hand, and the cloze scorer
against an unpadded per-option log-likelihood."""
from __future__ import annotations

import pytest

LETTERS = ["A", "B", "C", "D"]


def test_retrieval_metrics_by_hand():
    from benchmarks.demo_baselines import retrieval_metrics

    ranked = [["a", "b", "c"], ["x", "y", "g"], ["p", "q", "r"]]
    gold = [["a"], ["g"], ["z"]]
    m = retrieval_metrics(ranked, gold, ks=(1, 3), mrr_k=2)
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@3"] == pytest.approx(2 / 3)
    assert m["mrr@2"] == pytest.approx((1 + 0 + 0) / 3)  # "g" at rank 3 is beyond MRR@2
    with pytest.raises(ValueError, match="2 rankings for 3 questions"):
        retrieval_metrics(ranked[:2], gold)


class _CharTokenizer:
    """One id per character (ids 1..), enough to drive the cloze scorer with a tiny random Llama."""

    pad_token_id = 0
    eos_token_id = 0

    def encode(self, text, add_special_tokens=False):
        return [1 + (ord(ch) % 60) for ch in text]


def test_cloze_scores_match_unpadded_loglik():
    torch = pytest.importorskip("torch")
    from tiny_models import tiny_llama

    from benchmarks.demo_baselines import cloze_predictions, cloze_scores

    model = tiny_llama(64)  # vocabulary of _CharTokenizer's ids
    tok = _CharTokenizer()
    prompts = ["Question: which?", "Context: x is y.\nQuestion: what is x?"]
    options = [{"A": "ab", "B": "abcdef", "C": "q", "D": "zz"}, {"A": "y", "B": "yy", "C": "hepatic", "D": "w"}]
    got = cloze_scores(model, tok, prompts, options, batch_size=1)  # (2, 4), batches of 4 padded sequences
    assert got.shape == (2, 4)
    for q, (p, opts) in enumerate(zip(prompts, options)):
        for j, letter in enumerate(LETTERS):
            p_ids, c_ids = tok.encode(p), tok.encode(opts[letter])
            with torch.no_grad():
                logp = model(torch.tensor([p_ids + c_ids])).logits[0].log_softmax(-1)  # (T, V)
            want = sum(logp[len(p_ids) - 1 + i, t].item() for i, t in enumerate(c_ids))
            assert got[q, j].item() == pytest.approx(want, abs=1e-4), (q, letter)
    preds = cloze_predictions(model, tok, prompts, options, batch_size=2)
    assert preds == [LETTERS[j] for j in got.argmax(dim=1).tolist()]
