"""Each loss against a brute-force formula written independently here: values and gradients, float64.

The references loop over questions b and candidates k with scalar torch ops (exp, log, sums of Python
lists), so they share no code path with the vectorised implementations (no logsumexp, no log_softmax,
no masking tricks). Inputs are kept in a range where the naive exp/log is exact enough in float64.
"""
from __future__ import annotations

import math

import pytest
import torch

from jmlr.losses import get_loss

TOL = 1e-6
B, K, T = 3, 5, 4


# ----------------------------------------------------------------------------- brute-force references
def _softmax(vals, tau):
    e = [torch.exp(v / tau) for v in vals]
    z = sum(e)
    return [x / z for x in e]


def _valid(mask, b):
    return [k for k in range(mask.shape[1]) if bool(mask[b, k])]


def ref_rag_sequence(s, ll, mask, tau):
    total = 0
    for b in range(s.shape[0]):
        ks = _valid(mask, b)
        q = _softmax([s[b, k] for k in ks], tau)
        p = sum(qi * torch.exp(ll[b, k]) for qi, k in zip(q, ks))
        total = total - torch.log(p)
    return total / s.shape[0]


def ref_rag_token(s, tok, tmask, mask, tau):
    total = 0
    for b in range(s.shape[0]):
        ks = _valid(mask, b)
        q = _softmax([s[b, k] for k in ks], tau)
        for t in range(tok.shape[2]):
            if not bool(tmask[b, t]):
                continue
            p = sum(qi * torch.exp(tok[b, k, t]) for qi, k in zip(q, ks))
            total = total - torch.log(p)
    return total / s.shape[0]


def _kl(p, q):
    return sum(pi * (torch.log(pi) - torch.log(qi)) for pi, qi in zip(p, q))


def ref_pdist(s, ll, mask, tau, tau_t, reader=None):
    total = 0
    for b in range(s.shape[0]):
        ks = _valid(mask, b)
        target = _softmax([ll[b, k].detach() for k in ks], tau_t)
        retr = _softmax([s[b, k] for k in ks], tau)
        total = total + _kl(target, retr)
    out = total / s.shape[0]
    if reader == "top1":
        nll = 0
        for b in range(s.shape[0]):
            ks = _valid(mask, b)
            best = max(ks, key=lambda k: float(s[b, k]))
            nll = nll - ll[b, best]
        out = out + nll / s.shape[0]
    return out


def ref_lsr(s, ll, mask, tau, tau_t):
    total = 0
    for b in range(s.shape[0]):
        ks = _valid(mask, b)
        p_r = _softmax([s[b, k] for k in ks], tau)
        q_lm = _softmax([ll[b, k].detach() for k in ks], tau_t)
        total = total + _kl(p_r, q_lm)
    return total / s.shape[0]


def ref_loop(s, loo, mask, tau, tau_t):
    total = 0
    for b in range(s.shape[0]):
        ks = _valid(mask, b)
        target = _softmax([-loo[b, k].detach() for k in ks], tau_t)
        retr = _softmax([s[b, k] for k in ks], tau)
        total = total + _kl(target, retr)
    return total / s.shape[0]


def ref_emdr2(s, ll, mask, tau, reader_weight=1.0):
    retr, nll = 0, 0
    for b in range(s.shape[0]):
        ks = _valid(mask, b)
        q = _softmax([s[b, k] for k in ks], tau)
        p = sum(qi * torch.exp(ll[b, k].detach()) for qi, k in zip(q, ks))
        retr = retr - torch.log(p)
        nll = nll - sum(ll[b, k] for k in ks) / len(ks)
    return (retr + reader_weight * nll) / s.shape[0]


def ref_jmlr_rank(s, ll, mask, sample, tau, minmax=False, rank_weight=1.0, nll_weight=1.0):
    row_means = []
    for b in range(s.shape[0]):
        ks = _valid(mask, b)
        if minmax:
            lo = min((s[b, k] for k in ks), key=float)
            hi = max((s[b, k] for k in ks), key=float)
            st = {k: 2 * (s[b, k] - lo) / (hi - lo) - 1 for k in ks}
        else:
            st = {k: s[b, k] for k in ks}
        picked = [k for k in sample[b] if k >= 0]
        terms = []
        for i in picked:
            for j in picked:
                if float(-ll[b, i]) < float(-ll[b, j]):  # doc i gives the reader a lower loss
                    sig = 1 / (1 + torch.exp(-(st[i] - st[j]) / tau))
                    terms.append(-torch.log(sig))
        if terms:
            row_means.append(sum(terms) / len(terms))
    rank = sum(row_means) / len(row_means) if row_means else 0
    nll = 0
    for b in range(s.shape[0]):
        ks = _valid(mask, b)
        best = max(ks, key=lambda k: float(s[b, k]))
        nll = nll - ll[b, best]
    return rank_weight * rank + nll_weight * nll / s.shape[0]


# ----------------------------------------------------------------------------- inputs
def make_inputs(seed, padded):
    g = torch.Generator().manual_seed(seed)
    s = (torch.rand(B, K, generator=g, dtype=torch.float64) * 4 - 2)
    ll = -(torch.rand(B, K, generator=g, dtype=torch.float64) * 5 + 0.1)
    tok = -(torch.rand(B, K, T, generator=g, dtype=torch.float64) * 2 + 0.05)
    loo = -(torch.rand(B, K, generator=g, dtype=torch.float64) * 5 + 0.1)
    tmask = torch.ones(B, T, dtype=torch.bool)
    tmask[1, 3] = False
    tmask[2, 2:] = False
    mask = torch.ones(B, K, dtype=torch.bool)
    if padded:
        mask[0, 4] = False
        mask[1, 1] = False
        mask[1, 3] = False
        # padded entries hold garbage: the implementation must neither use it nor send gradient there
        s = s.masked_fill(~mask, float("nan"))
        ll = ll.masked_fill(~mask, float("inf"))
        loo = loo.masked_fill(~mask, float("nan"))
        tok = tok.masked_fill(~mask[:, :, None], float("nan"))
    return (s.requires_grad_(), ll.requires_grad_(), tok.requires_grad_(), loo, tmask, mask)


def _grads(out, inputs):
    gs = torch.autograd.grad(out, inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(gs, inputs)]


def _compare(impl, ref, inputs, mask=None):
    assert impl.dtype == torch.float64
    assert abs(float(impl) - float(ref)) < TOL, (float(impl), float(ref))
    g_impl = _grads(impl, inputs)
    g_ref = _grads(ref, inputs)
    for gi, gr, x in zip(g_impl, g_ref, inputs):
        assert torch.isfinite(gi).all(), "gradient must be finite everywhere, padded entries included"
        if mask is not None and gi.shape[:2] == mask.shape:
            pad = ~mask
            assert (gi[pad] == 0).all(), "padded candidates must get exactly zero gradient"
            gi = gi.masked_fill(pad if gi.dim() == 2 else pad[:, :, None], 0.0)
            gr = torch.nan_to_num(gr).masked_fill(pad if gr.dim() == 2 else pad[:, :, None], 0.0)
        assert torch.allclose(gi, gr, atol=TOL, rtol=0), (gi, gr)


# ----------------------------------------------------------------------------- tests
PARAMS = pytest.mark.parametrize(
    "padded,seed,tau,tau_t", [(False, 0, 1.0, 1.0), (True, 1, 0.5, 2.0), (True, 2, 2.0, 0.7)]
)


@PARAMS
def test_rag_sequence(padded, seed, tau, tau_t):
    s, ll, _, _, _, mask = make_inputs(seed, padded)
    impl = get_loss("rag_sequence", temperature=tau)(s, ll, mask=mask)
    _compare(impl, ref_rag_sequence(s, ll, mask, tau), [s, ll], mask)


@PARAMS
def test_rag_token(padded, seed, tau, tau_t):
    s, ll, tok, _, tmask, mask = make_inputs(seed, padded)
    impl = get_loss("rag_token", temperature=tau)(s, None, token_logp=tok, token_mask=tmask, mask=mask)
    _compare(impl, ref_rag_token(s, tok, tmask, mask, tau), [s, tok], mask)


def test_rag_token_single_token_equals_rag_sequence():
    s, _, tok, _, _, mask = make_inputs(3, True)
    one = torch.ones(B, 1, dtype=torch.bool)
    a = get_loss("rag_token")(s, None, token_logp=tok[:, :, :1], token_mask=one, mask=mask)
    b = get_loss("rag_sequence")(s, tok[:, :, 0], mask=mask)
    assert abs(float(a) - float(b)) < 1e-12


@PARAMS
def test_pdist(padded, seed, tau, tau_t):
    s, ll, _, _, _, mask = make_inputs(seed, padded)
    impl = get_loss("pdist", temperature=tau, target_temperature=tau_t)(s, ll, mask=mask)
    _compare(impl, ref_pdist(s, ll, mask, tau, tau_t), [s, ll], mask)
    # the target is detached: exactly zero gradient into the reader
    g = torch.autograd.grad(get_loss("pdist")(s, ll, mask=mask), ll, allow_unused=True)[0]
    assert g is None or bool((g == 0).all())


def test_pdist_matches_atlas_kldivloss_direction():
    """Atlas: nn.KLDivLoss()(log_softmax(s/tau), softmax(gold/tau')) with reduction='mean' (= ours / K)."""
    s, ll, *_ = make_inputs(4, False)
    ours = get_loss("pdist", temperature=0.5, target_temperature=0.3)(s, ll)
    atlas_style = torch.nn.KLDivLoss()(torch.log_softmax(s / 0.5, -1), torch.softmax(ll.detach() / 0.3, -1))
    assert abs(float(ours) / K - float(atlas_style)) < 1e-10
    # and it is NOT the reverse KL (which is what lsr computes)
    reverse = get_loss("lsr", temperature=0.5, target_temperature=0.3)(s, ll)
    assert abs(float(ours) - float(reverse)) > 1e-3


def test_pdist_reader_term_top1():
    s, ll, _, _, _, mask = make_inputs(5, True)
    impl = get_loss("pdist", temperature=0.5, target_temperature=2.0, reader="top1")(s, ll, mask=mask)
    _compare(impl, ref_pdist(s, ll, mask, 0.5, 2.0, reader="top1"), [s, ll], mask)


def test_pdist_num_tokens_gives_per_token_target():
    s, ll, *_ = make_inputs(6, False)
    n = torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64)
    a = get_loss("pdist")(s, ll, num_tokens=n)
    b = get_loss("pdist")(s, ll / n[:, None])
    assert abs(float(a) - float(b)) < 1e-12


@PARAMS
def test_lsr(padded, seed, tau, tau_t):
    s, ll, _, _, _, mask = make_inputs(seed, padded)
    impl = get_loss("lsr", temperature=tau, target_temperature=tau_t)(s, ll, mask=mask)
    _compare(impl, ref_lsr(s, ll, mask, tau, tau_t), [s, ll], mask)
    g = torch.autograd.grad(get_loss("lsr")(s, ll, mask=mask), ll, allow_unused=True)[0]
    assert g is None or bool((g == 0).all())


def test_lsr_prob_score_uses_probabilities():
    s, ll, *_ = make_inputs(7, False)
    a = get_loss("lsr", lm_score="prob", target_temperature=0.1)(s, ll)
    b = get_loss("lsr", target_temperature=0.1)(s, ll.exp())
    assert abs(float(a) - float(b)) < 1e-12


@PARAMS
def test_loop(padded, seed, tau, tau_t):
    s, ll, _, loo, _, mask = make_inputs(seed, padded)
    impl = get_loss("loop", temperature=tau, target_temperature=tau_t)(s, None, loo_loglik=loo, mask=mask)
    _compare(impl, ref_loop(s, loo, mask, tau, tau_t), [s], mask)


def test_loop_target_favours_the_document_whose_removal_hurts_most():
    s = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    loo = torch.tensor([[-1.0, -6.0, -2.0]], dtype=torch.float64)  # dropping doc 1 hurts the most
    loss = get_loss("loop")(s, None, loo_loglik=loo)
    (g,) = torch.autograd.grad(loss, s)
    assert int(g.argmin()) == 1  # gradient descent raises doc 1's score the most


@PARAMS
def test_emdr2(padded, seed, tau, tau_t):
    s, ll, _, _, _, mask = make_inputs(seed, padded)
    impl = get_loss("emdr2", temperature=tau, reader_weight=0.3)(s, ll, mask=mask)
    _compare(impl, ref_emdr2(s, ll, mask, tau, reader_weight=0.3), [s, ll], mask)


def test_emdr2_detachment():
    """Retriever term: value and score-gradient of rag_sequence, no reader gradient; reader term: no score gradient."""
    s, ll, _, _, _, mask = make_inputs(8, True)
    retr_only = get_loss("emdr2", reader="none")(s, ll, mask=mask)
    rag = get_loss("rag_sequence")(s, ll, mask=mask)
    assert abs(float(retr_only) - float(rag)) < 1e-12
    g_s, g_ll = _grads(retr_only, [s, ll])
    g_s_rag = torch.autograd.grad(rag, s)[0]
    assert torch.allclose(g_s, g_s_rag, atol=1e-12)
    assert (g_ll == 0).all()
    # the reader term alone sends nothing to the scores
    full = get_loss("emdr2", reader_weight=1.0)(s, ll, mask=mask)
    g_s_full = torch.autograd.grad(full, s)[0]
    assert torch.allclose(g_s_full, g_s, atol=1e-12)


def _explicit_sample(mask):
    # a fixed sample per row with an empty slot (-1) and never a padded candidate
    rows = []
    for b in range(mask.shape[0]):
        ks = _valid(mask, b)
        rows.append((ks[::-1] + [-1] * K)[:4])
    return torch.tensor(rows)


@pytest.mark.parametrize("minmax", [False, True])
@PARAMS
def test_jmlr_rank(padded, seed, tau, tau_t, minmax):
    s, ll, _, _, _, mask = make_inputs(seed, padded)
    sample = _explicit_sample(mask)
    loss_fn = get_loss("jmlr_rank", temperature=tau, score_norm="minmax" if minmax else "none",
                       rank_weight=0.7, nll_weight=0.4)
    impl = loss_fn(s, ll, mask=mask, sample_idx=sample)
    ref = ref_jmlr_rank(s, ll, mask, sample.tolist(), tau, minmax=minmax, rank_weight=0.7, nll_weight=0.4)
    _compare(impl, ref, [s, ll], mask)


def test_jmlr_rank_reader_loss_is_detached_and_sign_is_right():
    s = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    ll = torch.tensor([[-3.0, -0.5, -2.0]], dtype=torch.float64, requires_grad=True)  # doc 1 best, then 2, 0
    loss = get_loss("jmlr_rank", num_samples=3, nll_weight=0.0)(s, ll, sample_idx=torch.tensor([[0, 1, 2]]))
    g_s, g_ll = _grads(loss, [s, ll])
    assert (g_ll == 0).all()
    # descending the gradient raises doc 1 (lowest reader loss) and lowers doc 0 (highest)
    assert float(g_s[0, 1]) < float(g_s[0, 2]) < float(g_s[0, 0])
    # at s = 0 every pair costs log 2
    assert abs(float(loss) - math.log(2)) < 1e-12


def test_jmlr_rank_reader_nll_replaces_top1():
    s, ll, _, _, _, mask = make_inputs(9, True)
    sample = _explicit_sample(mask)
    reader_nll = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64, requires_grad=True)
    loss_fn = get_loss("jmlr_rank", nll_weight=0.5)
    out = loss_fn(s, ll, mask=mask, sample_idx=sample, reader_nll=reader_nll)
    rank_only = get_loss("jmlr_rank", nll_weight=0.0)(s, ll, mask=mask, sample_idx=sample)
    assert abs(float(out) - float(rank_only) - 0.5 * 7.0 / 3) < 1e-12
    g_nll, g_ll = _grads(out, [reader_nll, ll])
    assert torch.allclose(g_nll, torch.full((3,), 0.5 / 3, dtype=torch.float64))
    assert (g_ll == 0).all()  # rank part detached, reader term comes from reader_nll


def test_gradcheck_rag_sequence_lsr_jmlr_rank_rag_token():
    s, ll, tok, _, tmask, mask = make_inputs(10, True)
    s0 = torch.nan_to_num(s.detach(), nan=0.3).requires_grad_()
    ll0 = torch.nan_to_num(ll.detach(), posinf=-1.0).requires_grad_()
    tok0 = torch.nan_to_num(tok.detach(), nan=-1.0).requires_grad_()
    rag = get_loss("rag_sequence", temperature=0.7)
    assert torch.autograd.gradcheck(lambda a, b: rag(a, b, mask=mask), (s0, ll0))
    lsr = get_loss("lsr", temperature=0.7, target_temperature=1.3)
    assert torch.autograd.gradcheck(lambda a: lsr(a, ll0, mask=mask), (s0,))
    rank = get_loss("jmlr_rank", score_norm="minmax", temperature=0.5)
    sample = _explicit_sample(mask)
    assert torch.autograd.gradcheck(lambda a, b: rank(a, b, mask=mask, sample_idx=sample), (s0, ll0))
    tokl = get_loss("rag_token", temperature=0.7)
    assert torch.autograd.gradcheck(lambda a, t: tokl(a, None, token_logp=t, token_mask=tmask, mask=mask), (s0, tok0))


@pytest.mark.parametrize("name", ["rag_sequence", "pdist", "lsr", "emdr2", "loop"])
def test_masked_batch_equals_rows_computed_alone(name):
    """Padding a row with extra (masked) candidates changes nothing: compare with each row sliced alone."""
    s, ll, _, loo, _, mask = make_inputs(11, True)
    loss_fn = get_loss(name, temperature=0.8)
    extra = lambda b=None: {"loo_loglik": loo if b is None else loo[b : b + 1, mask[b]]} if name == "loop" else {}
    full = loss_fn(s, ll, mask=mask, **extra())
    rows = []
    for b in range(B):
        sb = s[b : b + 1, mask[b]]
        lb = ll[b : b + 1, mask[b]]
        rows.append(float(loss_fn(sb, lb, **extra(b))))
    assert abs(float(full) - sum(rows) / B) < 1e-12


def test_half_precision_inputs_are_computed_in_float32():
    s, ll, *_ = make_inputs(12, False)
    ref = float(get_loss("rag_sequence")(s, ll))
    out = get_loss("rag_sequence")(s.detach().bfloat16(), ll.detach().bfloat16())
    assert out.dtype == torch.float32
    assert abs(float(out) - ref) < 0.05
