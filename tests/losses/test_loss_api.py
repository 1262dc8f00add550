"""Registry, input validation, extras (rag_token masks, jmlr_rank sampling) and logging stats."""
from __future__ import annotations

import itertools

import pytest
import torch

from jmlr.losses import LOSSES, JointLoss, ReaderNeeds, get_loss

ALL = sorted(LOSSES)


def _inputs(B=2, K=4, T=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, K, generator=g, requires_grad=True)
    ll = (-torch.rand(B, K, generator=g) * 4).requires_grad_()
    tok = (-torch.rand(B, K, T, generator=g)).requires_grad_()
    return s, ll, tok


def _extras(name, s, tok):
    B, K = s.shape
    if name == "rag_token":
        return {"token_logp": tok, "token_mask": torch.ones(B, tok.shape[2], dtype=torch.bool)}
    if name == "loop":
        return {"loo_loglik": -torch.rand(B, K, generator=torch.Generator().manual_seed(7)) * 4}
    if name == "jmlr_rank":
        return {"generator": torch.Generator().manual_seed(0)}
    return {}


# ----------------------------------------------------------------------------- registry
def test_registry_lists_the_seven_losses():
    assert set(LOSSES) == {"rag_sequence", "rag_token", "jmlr_rank", "pdist", "emdr2", "lsr", "loop"}
    for name, cls in LOSSES.items():
        assert issubclass(cls, JointLoss) and cls.name == name
        doc = cls.__doc__ or ""
        assert "Paper:" in doc and "Example::" in doc and ".. math::" in doc, name
        assert isinstance(get_loss(name), cls)


def test_get_loss_normalises_names():
    assert isinstance(get_loss("RAG-Sequence"), LOSSES["rag_sequence"])
    assert isinstance(get_loss(" jmlr-rank "), LOSSES["jmlr_rank"])


@pytest.mark.parametrize("typo,suggestion", [("rag_sequnce", "rag_sequence"), ("pdistil", "pdist"), ("emdr", "emdr2")])
def test_unknown_name_raises_with_suggestion_and_known_list(typo, suggestion):
    with pytest.raises(ValueError) as e:
        get_loss(typo)
    msg = str(e.value)
    assert f"Did you mean {suggestion!r}" in msg
    for name in LOSSES:
        assert name in msg


def test_unknown_name_without_close_match_still_lists_known():
    with pytest.raises(ValueError, match="Known losses: emdr2, jmlr_rank"):
        get_loss("zzzzzzzz")


def test_unknown_kwarg_raises_with_accepted_parameters():
    with pytest.raises(ValueError, match=r"'temprature' \(did you mean 'temperature'\?\).*target_temperature"):
        get_loss("pdist", temprature=0.1)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), "hot"])
def test_bad_temperature_raises(name, bad):
    with pytest.raises(ValueError, match="temperature"):
        get_loss(name, temperature=bad)


@pytest.mark.parametrize(
    "name,kwargs",
    [("jmlr_rank", {"num_samples": 1}), ("jmlr_rank", {"score_norm": "zscore"}), ("pdist", {"reader": "all"}),
     ("lsr", {"lm_score": "logit"}), ("emdr2", {"reader_weight": -1})],
)
def test_bad_options_raise(name, kwargs):
    with pytest.raises(ValueError):
        get_loss(name, **kwargs)


# ----------------------------------------------------------------------------- common behaviour
@pytest.mark.parametrize("name", ALL)
def test_returns_scalar_and_stats(name):
    s, ll, tok = _inputs()
    loss_fn = get_loss(name)
    out = loss_fn(s, ll, **_extras(name, s, tok))
    assert out.dim() == 0 and torch.isfinite(out)
    assert set(loss_fn.last_stats) >= {"loss"}
    assert float(loss_fn.last_stats["loss"]) == pytest.approx(float(out))
    for v in loss_fn.last_stats.values():
        assert isinstance(v, torch.Tensor) and not v.requires_grad and v.dim() == 0
    out.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()


# What each loss reads from the reader, from its paper's definition (written out here, not read from the code):
# RAG-Sequence, EMDR2, PDist and LSR score one passage per prompt; RAG-Token marginalises per answer token; LOOP
# compares the reader without each passage; JMLR ranks sampled candidates and trains the reader on all K at once.
PAPER_NEEDS = {
    "rag_sequence": ("loglik",), "emdr2": ("loglik",), "pdist": ("loglik",), "lsr": ("loglik",),
    "rag_token": ("token_logp", "token_mask"), "loop": ("loo_loglik",),
    "jmlr_rank": ("loglik", "reader_nll", "generator"),
}


@pytest.mark.parametrize("name", ALL)
def test_needs_match_the_papers(name):
    needs = get_loss(name).needs
    expected = PAPER_NEEDS[name]
    assert needs.loglik == ("loglik" in expected)
    assert set(needs.inputs()) == set(expected) - {"loglik"}


@pytest.mark.parametrize("name", ["rag_token", "loop"])
def test_missing_needed_input_is_refused(name):
    s, ll, tok = _inputs()
    key = PAPER_NEEDS[name][0]
    ex = {k: v for k, v in _extras(name, s, tok).items() if k != key}
    with pytest.raises(TypeError, match=key):  # a required keyword of forward(), named by Python
        get_loss(name)(s, ll, **ex)


@pytest.mark.parametrize("name", ALL)
def test_input_validation(name):
    s, ll, tok = _inputs()
    ex = _extras(name, s, tok)
    loss_fn = get_loss(name)
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        loss_fn(s[0], ll, **ex)
    if loss_fn.needs.loglik:
        with pytest.raises(ValueError, match="loglik has shape"):
            loss_fn(s, ll[:, :3], **ex)
    with pytest.raises(ValueError, match="no valid candidate in batch row"):
        loss_fn(s, ll, mask=torch.tensor([[True, False, True, True], [False] * 4]), **ex)
    with pytest.raises(ValueError, match="mask has shape"):
        loss_fn(s, ll, mask=torch.ones(2, 3, dtype=torch.bool), **ex)
    bad = s.detach().clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"scores has a non-finite value at index \(1, 2\)"):
        loss_fn(bad, ll, **ex)
    # an integer 0/1 mask is accepted and means the same as the bool mask
    m = torch.tensor([[1, 1, 0, 1], [1, 1, 1, 1]])
    a = loss_fn(s, ll, mask=m, **_extras(name, s, tok))
    b = loss_fn(s, ll, mask=m.bool(), **_extras(name, s, tok))
    assert float(a) == pytest.approx(float(b), abs=1e-6)


@pytest.mark.parametrize("name", ["pdist", "lsr", "loop"])
def test_distillation_losses_reject_reader_nll_without_reader_term(name):
    s, ll, tok = _inputs()
    with pytest.raises(ValueError, match="reader='none'"):
        get_loss(name)(s, ll, reader_nll=torch.tensor(1.0), **_extras(name, s, tok))
    with_reader = get_loss(name, reader="top1", reader_weight=2.0)
    out = with_reader(s, ll, reader_nll=torch.tensor([1.0, 3.0]), **_extras(name, s, tok))
    base = get_loss(name)(s, ll, **_extras(name, s, tok))
    assert float(out) == pytest.approx(float(base) + 2.0 * 2.0, abs=1e-5)


@pytest.mark.parametrize("mode", ["top1", "mean", "weighted"])
def test_reader_modes_gradient_targets(mode):
    """The reader term only ever sends gradient to loglik, never to the scores."""
    s, ll, _ = _inputs(B=3, K=5, seed=3)
    f0 = get_loss("pdist")
    f1 = get_loss("pdist", reader=mode, reader_weight=1.0)
    g0 = torch.autograd.grad(f0(s, ll), s)[0]
    g1s, g1l = torch.autograd.grad(f1(s, ll), [s, ll])
    assert torch.allclose(g0, g1s, atol=1e-7)
    q = torch.softmax(s.detach(), -1)
    expected = {
        "top1": -torch.nn.functional.one_hot(s.detach().argmax(-1), 5).float() / 3,
        "mean": torch.full((3, 5), -1 / 15),
        "weighted": -q / 3,
    }[mode]
    assert torch.allclose(g1l, expected, atol=1e-6)


# ----------------------------------------------------------------------------- rag_token extras
def test_rag_token_mask_forms_and_errors():
    s, ll, tok = _inputs(B=2, K=4, T=3)
    loss_fn = get_loss("rag_token")
    tm = torch.tensor([[True, True, False], [True, True, True]])
    a = loss_fn(s, None, token_logp=tok, token_mask=tm)
    b = loss_fn(s, None, token_logp=tok, token_mask=tm[:, None, :].expand(2, 4, 3).clone())
    assert float(a) == pytest.approx(float(b))
    diff = tm[:, None, :].expand(2, 4, 3).clone()
    diff[1, 2, 0] = False
    with pytest.raises(ValueError, match=r"token_mask\[1, 2\] differs"):
        loss_fn(s, None, token_logp=tok, token_mask=diff)
    # a differing mask on a padded candidate is fine
    cand = torch.ones(2, 4, dtype=torch.bool)
    cand[1, 2] = False
    loss_fn(s, None, token_logp=tok, token_mask=diff, mask=cand)
    with pytest.raises(ValueError, match=r"token_logp must have shape \(B, K, T\)"):
        loss_fn(s, None, token_logp=tok[:, :3], token_mask=tm)
    with pytest.raises(ValueError, match="no answer token"):
        loss_fn(s, None, token_logp=tok, token_mask=torch.tensor([[False] * 3, [True] * 3]))
    with pytest.raises(TypeError):
        loss_fn(s, None, token_mask=tm)  # token_logp is required


def test_rag_token_check_loglik():
    s, _, tok = _inputs(B=2, K=4, T=3)
    tm = torch.tensor([[True, True, False], [True, True, True]])
    summed = (tok * tm[:, None, :]).sum(-1).detach()
    strict = get_loss("rag_token", check_loglik=True)
    strict(s, summed, token_logp=tok, token_mask=tm)
    wrong = summed.clone()
    wrong[0, 1] += 0.5
    with pytest.raises(ValueError, match=r"loglik\[0, 1\]"):
        strict(s, wrong, token_logp=tok, token_mask=tm)
    get_loss("rag_token")(s, wrong, token_logp=tok, token_mask=tm)  # not checked by default


# ----------------------------------------------------------------------------- jmlr_rank sampling
def test_jmlr_rank_sampling_is_seeded_masked_and_without_replacement():
    loss_fn = get_loss("jmlr_rank", num_samples=5)
    s = torch.randn(6, 12)
    mask = torch.ones(6, 12, dtype=torch.bool)
    mask[0, :9] = False  # row 0 has only 3 valid candidates
    mask[3, ::2] = False
    a = loss_fn.sample(s, mask, torch.Generator().manual_seed(1))
    b = loss_fn.sample(s, mask, torch.Generator().manual_seed(1))
    c = loss_fn.sample(s, mask, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (6, 5)
    assert sorted(a[0].tolist()) == [-1, -1, 9, 10, 11]
    for row, m in zip(a.tolist(), mask):
        used = [k for k in row if k >= 0]
        assert len(used) == len(set(used))
        assert all(bool(m[k]) for k in used)


def test_jmlr_rank_sampling_follows_softmax_without_replacement():
    """Inclusion frequencies of a 2-of-4 draw match the exact without-replacement probabilities."""
    tau = 0.5
    s = torch.tensor([1.0, 0.2, -0.5, 0.6], dtype=torch.float64)
    p = torch.softmax(s / tau, -1).tolist()
    exact = [p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(4) if j != i) for i in range(4)]
    exact_first = p
    N = 20000
    idx = get_loss("jmlr_rank", num_samples=2, temperature=tau).sample(
        s.expand(N, 4), generator=torch.Generator().manual_seed(0)
    )
    freq = [float((idx == i).any(-1).double().mean()) for i in range(4)]
    first = [float((idx[:, 0] == i).double().mean()) for i in range(4)]
    for f, e in itertools.chain(zip(freq, exact), zip(first, exact_first)):
        assert abs(f - e) < 0.02, (freq, exact, first, exact_first)


def test_jmlr_rank_sample_idx_validation_and_use():
    s, ll, _ = _inputs(B=2, K=4)
    loss_fn = get_loss("jmlr_rank")
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    for bad, msg in [
        (torch.tensor([[0, 4], [0, 1]]), "outside"),
        (torch.tensor([[0, 3], [0, 1]]), "padded candidate"),
        (torch.tensor([[1, 1], [0, 1]]), "twice"),
        (torch.tensor([[0, 1]]), "shape"),
        (torch.tensor([[0.0, 1.0], [0.0, 1.0]]), "integer"),
    ]:
        with pytest.raises(ValueError, match=msg):
            loss_fn(s, ll, mask=mask, sample_idx=bad)
    idx = torch.tensor([[2, 0, -1], [3, 1, 0]])
    out1 = loss_fn(s, ll, mask=mask, sample_idx=idx, generator=torch.Generator().manual_seed(1))
    out2 = loss_fn(s, ll, mask=mask, sample_idx=idx, generator=torch.Generator().manual_seed(2))
    assert float(out1) == float(out2)
    assert torch.equal(loss_fn.last_sample_idx, idx)


def test_jmlr_rank_loglik_only_needed_at_sampled_docs_when_reader_nll_given():
    s, ll, _ = _inputs(B=2, K=6)
    loss_fn = get_loss("jmlr_rank", num_samples=3)
    idx = s.detach().argsort(-1)[:, :3]  # the 3 lowest-scoring documents: the top-1 is not among them
    partial = torch.full((2, 6), float("nan"))
    partial.scatter_(1, idx, ll.detach().gather(1, idx))
    out = loss_fn(s, partial, sample_idx=idx, reader_nll=torch.tensor(0.0))
    ref = loss_fn(s, ll, sample_idx=idx, reader_nll=torch.tensor(0.0))
    assert torch.isfinite(out) and float(out) == pytest.approx(float(ref))
    with pytest.raises(ValueError, match="loglik \\(reader term\\)"):
        loss_fn(s, partial, sample_idx=idx)  # the top-1 fallback would read a nan


def test_jmlr_rank_stats_and_no_pairs():
    s = torch.tensor([[2.0, 1.0, 0.0]], requires_grad=True)
    ll = torch.tensor([[-1.0, -2.0, -3.0]])  # retriever already orders them like the reader
    loss_fn = get_loss("jmlr_rank", num_samples=3, nll_weight=0.0)
    loss_fn(s, ll, sample_idx=torch.tensor([[0, 1, 2]]))
    assert float(loss_fn.last_stats["pair_accuracy"]) == 1.0
    assert float(loss_fn.last_stats["pairs"]) == 3.0
    # equal reader losses: no pair, the rank term is 0 and still differentiable
    out = loss_fn(s, torch.full((1, 3), -1.0), sample_idx=torch.tensor([[0, 1, 2]]))
    assert float(out) == 0.0
    out.backward()
    assert (s.grad == 0).all()


@pytest.mark.parametrize("module", ["jmlr.losses"] + sorted(cls.__module__ for cls in LOSSES.values()))
def test_docstring_examples_run(module):
    import doctest
    import importlib

    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    if module != "jmlr.losses":
        assert result.attempted > 0, f"{module} has no runnable example"


def test_needs_tell_the_trainer_what_to_compute():
    assert get_loss("loop").needs == ReaderNeeds(loglik=False, loo_loglik=True)
    assert get_loss("loop", reader="mean").needs == ReaderNeeds(loglik=True, loo_loglik=True)
    assert get_loss("rag_token").needs == ReaderNeeds(loglik=False, token_logp=True)
    assert get_loss("rag_token").needs.inputs() == ("token_logp", "token_mask")
    assert get_loss("jmlr_rank").needs == ReaderNeeds(reader_nll=True, generator=True)
    assert get_loss("jmlr_rank", nll_weight=0.0).needs == ReaderNeeds(generator=True)  # no NLL term: not computed
    for n in ("rag_sequence", "pdist", "emdr2", "lsr"):
        assert get_loss(n).needs == ReaderNeeds() and ReaderNeeds().inputs() == ()
    s, _, _ = _inputs()
    with pytest.raises(ValueError, match="loglik"):
        get_loss("loop", reader="mean")(s, None, loo_loglik=-torch.rand(2, 4))


@pytest.mark.gpu
@pytest.mark.parametrize("name", ALL)
def test_cuda_matches_cpu(name):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: checks that every loss runs on GPU tensors and matches the CPU value")
    s, ll, tok = _inputs(B=3, K=5, T=2, seed=4)
    kwargs = {"num_samples": 5} if name == "jmlr_rank" else {}
    cpu_ex = {k: v for k, v in _extras(name, s, tok).items() if k != "generator"}
    gpu_ex = {k: v.cuda() for k, v in cpu_ex.items()}
    mask = torch.tensor([[True] * 5, [True, False, True, True, True], [True] * 5])
    a = get_loss(name, **kwargs)(s, ll, mask=mask, **cpu_ex)
    b = get_loss(name, **kwargs)(s.detach().cuda(), ll.detach().cuda(), mask=mask.cuda(), **gpu_ex)
    assert b.device.type == "cuda"
    assert float(a) == pytest.approx(float(b), rel=1e-5, abs=1e-5)
