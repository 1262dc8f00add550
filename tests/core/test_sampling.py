"""jmlr.core.sampling.gumbel_top_k: the one Gumbel-top-k sampler of the trainer and the jmlr_rank loss."""
import math

import pytest
import torch

from jmlr.core.sampling import gumbel_top_k


def test_first_draw_follows_softmax():
    # p = (0.5, 0.3, 0.2): the first key's argmax is a draw from p (the Gumbel-max trick)
    p = torch.tensor([0.5, 0.3, 0.2])
    n = 20000
    logits = p.log().expand(n, 3)
    _, idx = gumbel_top_k(logits, 1, torch.Generator().manual_seed(0))
    freq = torch.bincount(idx[:, 0], minlength=3).float() / n
    assert torch.allclose(freq, p, atol=0.015), freq


def test_pairs_follow_sampling_without_replacement():
    # P(first=0, second=1) = p0 * p1 / (1 - p0) = 0.5 * 0.3 / 0.5 = 0.3 (hand-worked)
    p = torch.tensor([0.5, 0.3, 0.2])
    n = 20000
    _, idx = gumbel_top_k(p.log().expand(n, 3), 2, torch.Generator().manual_seed(1))
    assert (idx[:, 0] != idx[:, 1]).all()  # without replacement
    frac = ((idx[:, 0] == 0) & (idx[:, 1] == 1)).float().mean().item()
    assert math.isclose(frac, 0.3, abs_tol=0.015), frac


def test_masked_items_never_drawn_and_keys_mark_empty_slots():
    logits = torch.tensor([[0.0, float("-inf"), 1.0, float("-inf")]]).expand(500, 4)
    keys, idx = gumbel_top_k(logits, 3, torch.Generator().manual_seed(2))
    assert set(idx[:, :2].flatten().tolist()) == {0, 2}
    assert torch.isinf(keys[:, 2]).all() and torch.isfinite(keys[:, :2]).all()


def test_same_generator_seed_same_sample():
    logits = torch.randn(4, 10)
    a = gumbel_top_k(logits, 3, torch.Generator().manual_seed(5))[1]
    b = gumbel_top_k(logits, 3, torch.Generator().manual_seed(5))[1]
    assert torch.equal(a, b)


@pytest.mark.parametrize("m", [0, 11, 2.0, True])
def test_bad_m(m):
    with pytest.raises(ValueError, match="m must be an int in 1..10"):
        gumbel_top_k(torch.zeros(2, 10), m)
