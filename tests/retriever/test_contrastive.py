"""InfoNCE against a brute-force formula, and the contrastive trainer on tiny data."""
import math

import pytest
import torch

from jmlr.retriever.contrastive import (ContrastiveConfig, ContrastiveExample, ContrastiveTrainer, info_nce,
                                        mine_hard_negatives)


def test_info_nce_matches_brute_force_with_grad():
    torch.manual_seed(0)
    q = torch.randn(3, 5, requires_grad=True)
    d = torch.randn(5, 5, requires_grad=True)  # 3 positives + 2 hard negatives
    tau = 0.1
    loss = info_nce(q, d, tau)
    brute = 0.0
    for i in range(3):
        logits = [float(q[i].detach() @ d[j].detach()) / tau for j in range(5)]
        brute += -(logits[i] - math.log(sum(math.exp(x) for x in logits)))
    assert loss.item() == pytest.approx(brute / 3, rel=1e-5)
    loss.backward()
    qq, dd = q.detach().clone().requires_grad_(), d.detach().clone().requires_grad_()
    s = qq @ dd.T / tau
    (-(s.diag() - s.logsumexp(1)).mean()).backward()
    torch.testing.assert_close(q.grad, qq.grad)
    torch.testing.assert_close(d.grad, dd.grad)
    with pytest.raises(ValueError, match="positive"):
        info_nce(q, d[:2], tau)


def _pairs(n, seed=0):
    from jmlr.retriever.testing import random_texts

    docs = random_texts(n, seed=seed, min_words=10, max_words=16)
    return [ContrastiveExample(" ".join(t.split()[:4]), t) for t in docs]


def test_trainer_lowers_the_loss(dual):
    examples = _pairs(16)
    trainer = ContrastiveTrainer(dual, ContrastiveConfig(lr=3e-3, batch_size=8, epochs=5, warmup_ratio=0.0,
                                                         temperature=0.05))
    with torch.no_grad():
        before = trainer.loss(examples[:8]).item()
    losses = trainer.train(examples, progress=False)
    assert len(losses) == 10 and trainer.step_count == 10
    with torch.no_grad():
        after = trainer.loss(examples[:8]).item()
    assert after < 0.5 * before, (before, after)


def test_hard_negatives_enter_the_loss(dual):
    ex = _pairs(4)
    with_neg = [ContrastiveExample(e.query, e.positive, [ex[(i + 1) % 4].positive]) for i, e in enumerate(ex)]
    t0 = ContrastiveTrainer(dual, ContrastiveConfig(hard_negatives=0))
    t1 = ContrastiveTrainer(dual, ContrastiveConfig(hard_negatives=1))
    with torch.no_grad():
        assert t0.loss(with_neg).item() != pytest.approx(t1.loss(with_neg).item())


def test_trainer_rejects_bad_examples(dual):
    t = ContrastiveTrainer(dual)
    with pytest.raises(ValueError, match="at least 2"):
        t.train(_pairs(1), progress=False)
    with pytest.raises(ValueError, match="example 1"):
        t.train([ContrastiveExample("a", "b"), ("q", "p")], progress=False)


def test_mine_hard_negatives_skips_the_positive(dual):
    from jmlr.index import ExactIndex

    ex = _pairs(12, seed=5)
    ids = [f"p{i}" for i in range(12)]
    index = ExactIndex(dual.dim)
    index.add(ids, dual.encode_docs([e.positive for e in ex], progress=False))
    text_of = dict(zip(ids, [e.positive for e in ex]))
    negs = mine_hard_negatives(dual, index, [e.query for e in ex], ids, text_of, n=2, depth=5)
    assert len(negs) == 12
    for e, n in zip(ex, negs):
        assert len(n) == 2 and e.positive not in n
