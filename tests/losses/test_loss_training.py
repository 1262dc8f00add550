"""Every registered loss goes down under plain SGD on a toy problem where scores and log-likelihoods are parameters."""
from __future__ import annotations

import pytest
import torch

from jmlr.losses import LOSSES, get_loss

B, K, T = 4, 6, 3


def _toy(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.nn.Parameter(torch.randn(B, K, generator=g, dtype=torch.float64))
    raw = torch.nn.Parameter(torch.randn(B, K, generator=g, dtype=torch.float64))  # reader logits
    raw_tok = torch.nn.Parameter(torch.randn(B, K, T, generator=g, dtype=torch.float64))
    loo = -torch.rand(B, K, generator=g, dtype=torch.float64) * 4
    mask = torch.ones(B, K, dtype=torch.bool)
    mask[1, 5] = False
    mask[3, 0] = False
    return scores, raw, raw_tok, loo, mask


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_decreases_under_sgd(name):
    scores, raw, raw_tok, loo, mask = _toy(0)
    kwargs = {"num_samples": K} if name == "jmlr_rank" else {}  # sample every candidate: deterministic
    loss_fn = get_loss(name, **kwargs)
    opt = torch.optim.SGD([scores, raw, raw_tok], lr=0.5)

    def step():
        loglik = torch.nn.functional.logsigmoid(raw) * 3  # (B, K) <= 0, like a summed answer log-prob
        extra = {"mask": mask}
        if name == "rag_token":
            extra["token_logp"] = torch.nn.functional.logsigmoid(raw_tok)  # (B, K, T)
            extra["token_mask"] = torch.ones(B, T, dtype=torch.bool)
        if name == "loop":
            extra["loo_loglik"] = loo
        if name == "jmlr_rank":
            extra["generator"] = torch.Generator().manual_seed(0)
        return loss_fn(scores, loglik, **extra)

    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = step()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    final = float(step())
    assert final < losses[0] - 0.05 * abs(losses[0]) - 1e-3, (name, losses[0], final)
    if name in ("pdist", "lsr", "loop"):
        # the retriever distribution moves onto the (fixed) reader target: the KL falls by more than half
        assert final < 0.5 * losses[0], (name, losses[0], final)


def test_jmlr_rank_training_orders_the_retriever_like_the_reader():
    """After training on the rank term alone, the retriever's order of the candidates matches the reader's."""
    g = torch.Generator().manual_seed(1)
    scores = torch.nn.Parameter(torch.randn(2, 8, generator=g))
    loglik = -torch.rand(2, 8, generator=g) * 5
    loss_fn = get_loss("jmlr_rank", num_samples=4, nll_weight=0.0)
    opt = torch.optim.SGD([scores], lr=1.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):  # sampled pairs: every pair is seen many times
        opt.zero_grad()
        loss_fn(scores, loglik, generator=gen).backward()
        opt.step()
    loss_fn = get_loss("jmlr_rank", num_samples=8, nll_weight=0.0)
    loss_fn(scores, loglik)
    assert float(loss_fn.last_stats["pair_accuracy"]) == 1.0
