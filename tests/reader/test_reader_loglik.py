"""answer_loglik / concat_loglik / loo_loglik / score_options against brute force (full logits, unbatched)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import Ex, make_model

from jmlr.reader import Reader, TokenLoglik

ATOL = 2e-4


def brute_token_logp(reader: Reader, prompt_ids: list[int], target_ids: list[int]) -> torch.Tensor:
    """Per-token log p of the answer: one unpadded sequence, logits at EVERY position, no logits_to_keep."""
    ids = torch.tensor([prompt_ids + target_ids])
    with torch.no_grad():
        logits = reader.model(input_ids=ids).logits[0].float()  # (L, V)
    logp = F.log_softmax(logits, -1)
    P = len(prompt_ids)
    return torch.stack([logp[P - 1 + t, tok] for t, tok in enumerate(target_ids)])


def brute_loglik(reader, ex, passages, target=None) -> float:
    enc = reader.encode(ex, passages, target)
    return brute_token_logp(reader, enc.prompt_ids, enc.target_ids).sum().item()


def test_encode_is_plain_tokenization_when_it_fits(reader, examples, passages, tiny_tokenizer):
    ex = examples[0]
    enc = reader.encode(ex, passages[0][:1])
    assert not enc.truncated
    assert enc.prompt == reader.build_prompt(ex.question, ex.options, passages[0][:1])
    assert enc.prompt_ids == tiny_tokenizer(enc.prompt)["input_ids"]
    assert tiny_tokenizer.decode(enc.target_ids) == " C"
    assert enc.prompt_ids + enc.target_ids == tiny_tokenizer(enc.prompt + " C")["input_ids"]


@pytest.mark.parametrize("target", ["letter", "letter_text"])
@pytest.mark.parametrize("micro_batch", [None, 2])
def test_answer_loglik_matches_brute_force(tiny_model, tiny_tokenizer, examples, passages, target, micro_batch):
    reader = Reader(tiny_model, tiny_tokenizer, target=target, micro_batch=micro_batch)
    with torch.no_grad():
        ll = reader.answer_loglik(examples, passages)
    assert ll.shape == (3, 3) and ll.dtype == torch.float32
    lens = set()
    for b, ex in enumerate(examples):
        for k, p in enumerate(passages[b]):
            enc = reader.encode(ex, [p])
            lens.add(len(enc.prompt_ids) + len(enc.target_ids))
            assert ll[b, k].item() == pytest.approx(brute_loglik(reader, ex, [p]), abs=ATOL)
    assert len(lens) > 1, "the test must exercise padding (sequences of different lengths)"
    # the letter-text target has more tokens and a lower likelihood than the letter alone on a random model
    assert torch.isfinite(ll).all()


def test_explicit_targets_and_token_logp(reader, examples, passages, tiny_tokenizer):
    targets = [" C. Paracetamol", " B", " A. Heparin"]
    with torch.no_grad():
        out = reader.answer_loglik(examples, passages, targets=targets, return_token_logp=True)
    assert isinstance(out, TokenLoglik)
    ll, tok, mask = out  # unpacks like a tuple
    T = max(len(reader.encode(ex, [passages[b][0]], targets[b]).target_ids) for b, ex in enumerate(examples))
    assert tok.shape == (3, 3, T) and mask.shape == (3, 3, T) and mask.dtype == torch.bool
    assert torch.allclose(tok.sum(-1), ll, atol=1e-5)
    assert (tok[~mask] == 0).all()
    for b, ex in enumerate(examples):
        for k, p in enumerate(passages[b]):
            enc = reader.encode(ex, [p], targets[b])
            ref = brute_token_logp(reader, enc.prompt_ids, enc.target_ids)
            n = len(enc.target_ids)
            assert mask[b, k].sum().item() == n
            assert torch.allclose(tok[b, k, :n], ref, atol=ATOL)
    assert tiny_tokenizer.decode(reader.encode(examples[1], [], " B").target_ids) == " B"


def test_padding_side_and_missing_pad_token(tiny_model, tiny_tokenizer, examples, passages):
    assert tiny_tokenizer.pad_token is None or tiny_tokenizer.pad_token == tiny_tokenizer.eos_token
    old_side = tiny_tokenizer.padding_side
    try:
        tiny_tokenizer.padding_side = "right"
        r_right = Reader(tiny_model, tiny_tokenizer)
        assert tiny_tokenizer.pad_token == tiny_tokenizer.eos_token  # set from EOS
        with torch.no_grad():
            a = r_right.answer_loglik(examples, passages)
        tiny_tokenizer.padding_side = "left"
        with torch.no_grad():
            b = Reader(tiny_model, tiny_tokenizer).answer_loglik(examples, passages)
    finally:
        tiny_tokenizer.padding_side = old_side
    assert torch.allclose(a, b, atol=1e-6)


def test_truncation_never_cuts_question_options_or_answer(tiny_model, tiny_tokenizer, examples):
    reader = Reader(tiny_model, tiny_tokenizer, max_length=160, target="letter_text")
    long_a = "Paracetamol lowers fever. " + " ".join(f"word{i}" for i in range(3000))
    long_b = "Heparin is an anticoagulant. " + "the patient presents with chest pain " * 400
    ex = examples[2]
    enc = reader.encode(ex, [long_a])
    assert enc.truncated
    assert len(enc.prompt_ids) + len(enc.target_ids) <= 160
    assert ex.question in enc.prompt
    for letter, text in ex.options.items():
        assert f"{letter}. {text}" in enc.prompt
    assert enc.prompt.endswith("Correct Answer:")
    assert tiny_tokenizer.decode(enc.target_ids) == " A. Heparin"
    assert "Reference [1]: Paracetamol lowers fever." in enc.prompt  # the passage keeps its beginning
    # the prompt is a plain rendering of the truncated passage, tokenized as a whole
    assert enc.prompt_ids == tiny_tokenizer(enc.prompt)["input_ids"]
    # the same in a batch, with brute force on the truncated sequences; a short passage is not touched
    batch_p = [[long_a, "Insulin."], [long_b, "A kidney."], ["Chest pain.", long_b]]
    with torch.no_grad():
        ll = reader.answer_loglik(examples, batch_p)
    for b, e in enumerate(examples):
        for k, p in enumerate(batch_p[b]):
            enc = reader.encode(e, [p])
            assert len(enc.prompt_ids) + len(enc.target_ids) <= 160
            assert enc.truncated == (len(p) > 100)
            assert ll[b, k].item() == pytest.approx(brute_loglik(reader, e, [p]), abs=ATOL)


def test_concat_truncation_shares_budget_and_keeps_short_passages(tiny_model, tiny_tokenizer, examples):
    reader = Reader(tiny_model, tiny_tokenizer, max_length=200)
    long_a = "alpha " * 500
    long_b = "beta " * 500
    enc = reader.encode(examples[0], ["Insulin.", long_a, long_b])
    assert enc.truncated and len(enc.prompt_ids) + len(enc.target_ids) <= 200
    assert "Reference [1]: Insulin.\n" in enc.prompt
    n_a, n_b = enc.prompt.count("alpha"), enc.prompt.count("beta")
    assert n_a > 5 and n_b > 5 and abs(n_a - n_b) <= 2  # the two long ones share the rest equally
    assert enc.prompt.index("Reference [2]") < enc.prompt.index("Reference [3]") < enc.prompt.index("Question:")


def test_max_passage_tokens_caps_each_passage(tiny_model, tiny_tokenizer, examples, passages):
    reader = Reader(tiny_model, tiny_tokenizer, max_passage_tokens=4)
    enc = reader.encode(examples[0], ["Heparin is an anticoagulant used for clots in the heart."])
    assert enc.truncated
    ref_line = enc.prompt.split("\n")[0]
    assert ref_line.startswith("Reference [1]: Hep")
    n = len(tiny_tokenizer(ref_line[len("Reference [1]: "):], add_special_tokens=False)["input_ids"])
    assert n <= 4
    with torch.no_grad():
        ll = reader.answer_loglik(examples, passages)
    assert ll[0, 1].item() == pytest.approx(brute_loglik(reader, examples[0], [passages[0][1]]), abs=ATOL)


def test_question_too_long_raises_naming_example(tiny_model, tiny_tokenizer):
    reader = Reader(tiny_model, tiny_tokenizer, max_length=64)
    ex = Ex("why " * 200, {"A": "x", "B": "y"}, "A", id="long-q")
    with pytest.raises(ValueError, match="long-q"):
        reader.answer_loglik([ex], [["a passage"]])


def test_gradients_flow(reader, examples, passages):
    reader.model.train()
    ll = reader.answer_loglik(examples, passages)
    assert ll.requires_grad
    (-ll.logsumexp(-1).mean()).backward()
    grads = {n: p.grad for n, p in reader.model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["model.embed_tokens.weight"].abs().sum() > 0
    assert grads["model.layers.0.self_attn.q_proj.weight"].abs().sum() > 0
    assert grads["lm_head.weight"].abs().sum() > 0


def test_concat_and_loo_match_brute_force(reader, examples, passages):
    with torch.no_grad():
        cat = reader.concat_loglik(examples, passages)
        loo = reader.loo_loglik(examples, passages)
        closed = reader.concat_loglik(examples, [[], [], []])
    assert cat.shape == (3,) and loo.shape == (3, 3)
    for b, ex in enumerate(examples):
        assert cat[b].item() == pytest.approx(brute_loglik(reader, ex, passages[b]), abs=ATOL)
        assert closed[b].item() == pytest.approx(brute_loglik(reader, ex, []), abs=ATOL)
        for k in range(3):
            rest = passages[b][:k] + passages[b][k + 1:]
            assert loo[b, k].item() == pytest.approx(brute_loglik(reader, ex, rest), abs=ATOL)
    # rows of different lengths are fine for concat
    with torch.no_grad():
        ragged = reader.concat_loglik(examples, [passages[0], passages[1][:1], []])
    assert ragged[2].item() == pytest.approx(closed[2].item(), abs=ATOL)


def test_bad_inputs(reader, examples, passages):
    with pytest.raises(ValueError, match="same K"):
        reader.answer_loglik(examples, [passages[0], passages[1][:2], passages[2]])
    with pytest.raises(ValueError, match="3 examples but 2"):
        reader.answer_loglik(examples, passages[:2])
    with pytest.raises(ValueError, match="no answer"):
        reader.answer_loglik([Ex("q?", {"A": "x", "B": "y"}, None, id="unl")], [["p"]])
    with pytest.raises(ValueError, match="not one of the options"):
        reader.answer_loglik([Ex("q?", {"A": "x", "B": "y"}, "F", id="bad")], [["p"]])
    with pytest.raises(ValueError, match="passages\\[0\\] is a string"):
        reader.answer_loglik(examples[:1], ["just a string"])
    with pytest.raises(ValueError, match="unknown reader template"):
        Reader(reader.model, reader.tokenizer, template="alpaca")


def _brute_letter_scores(reader, ex, ps):
    """log p(letter continuation | prompt) for every option, from full logits of unpadded sequences."""
    out = []
    for letter in ex.options:
        enc = reader.encode(ex, ps, " " + letter if reader.template != "chat" else letter)
        out.append(brute_token_logp(reader, enc.prompt_ids, enc.target_ids).sum().item())
    return out


@pytest.mark.parametrize("template", ["jmlr", "chat"])
def test_score_options_matches_brute_force(tiny_model, tiny_tokenizer, examples, passages, template):
    reader = Reader(tiny_model, tiny_tokenizer, template=template, micro_batch=2)
    with torch.no_grad():
        s = reader.score_options(examples, passages)
    assert s.shape == (3, 4)
    assert s[1, 3].item() == -math.inf  # q2 has 3 options: padded column
    for b, ex in enumerate(examples):
        ref = _brute_letter_scores(reader, ex, passages[b])
        assert s[b, : len(ref)].tolist() == pytest.approx(ref, abs=ATOL)
    preds = reader.predict(examples, passages)
    assert preds == [list(ex.options)[j] for ex, j in zip(examples, s.argmax(-1).tolist())]
    assert all(p in ex.options for p, ex in zip(preds, examples))


def test_score_options_multi_token_letters(reader, examples, tiny_tokenizer):
    # " E" is two tokens for this tokenizer (never merged in training): the continuation path scores it
    assert len(reader._target_ids(" E")) == 2
    ex5 = Ex("Which drug treats a fever?", {"A": "Aspirin", "B": "Heparin", "C": "Paracetamol", "D": "Warfarin",
                                            "E": "Insulin"}, "C", id="q5")
    batch = [examples[1], ex5]
    ps = [["The pancreas produces insulin."], ["Paracetamol lowers fever."]]
    with torch.no_grad():
        s = reader.score_options(batch, ps)
    assert s.shape == (2, 5) and s[0, 3:].eq(-math.inf).all()
    for b, ex in enumerate(batch):
        ref = _brute_letter_scores(reader, ex, ps[b])
        assert s[b, : len(ref)].tolist() == pytest.approx(ref, abs=ATOL)


def test_score_options_closed_book_and_truncation(tiny_model, tiny_tokenizer, examples):
    reader = Reader(tiny_model, tiny_tokenizer, max_length=120)
    with torch.no_grad():
        s = reader.score_options(examples)  # no passages
        long = reader.score_options(examples, [["fever " * 400]] * 3)
    assert torch.isfinite(s[0]).all() and torch.isfinite(long[0]).all()
    ref = _brute_letter_scores(reader, examples[0], ["fever " * 400])
    assert long[0].tolist() == pytest.approx(ref, abs=ATOL)


def test_bf16_weights_and_autocast(tiny_tokenizer, examples, passages):
    m32 = make_model(len(tiny_tokenizer), seed=1)
    r32 = Reader(m32, tiny_tokenizer)
    with torch.no_grad():
        ref = r32.answer_loglik(examples, passages)
        ref_s = r32.score_options(examples, passages)
    m16 = make_model(len(tiny_tokenizer), seed=1).to(torch.bfloat16)
    r16 = Reader(m16, tiny_tokenizer)
    ll = r16.answer_loglik(examples, passages)
    assert ll.dtype == torch.float32 and torch.isfinite(ll).all()
    assert torch.allclose(ll, ref, atol=0.15 + 0.02 * ref.abs().max().item())
    ll.sum().backward()
    assert m16.lm_head.weight.grad is not None and m16.lm_head.weight.grad.dtype == torch.bfloat16
    r_auto = Reader(m32, tiny_tokenizer, autocast_dtype="bf16")
    with torch.no_grad():
        s = r_auto.score_options(examples, passages)
    assert torch.isfinite(s[:, :3]).all()
    assert torch.allclose(s[:, :3], ref_s[:, :3], atol=0.15 + 0.02 * ref_s[:, :3].abs().max().item())


class _NoKeepLM(torch.nn.Module):
    """A causal LM whose forward has neither logits_to_keep nor position_ids (older / custom models)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids=None, attention_mask=None, use_cache=None):
        pos = (attention_mask.cumsum(-1) - 1).clamp(min=0) if attention_mask is not None else None
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, use_cache=use_cache)


@pytest.mark.parametrize("arch", ["gpt2", "no_logits_to_keep"])
def test_other_architectures_match_brute_force(tiny_tokenizer, examples, passages, arch):
    """GPT-2 has ABSOLUTE position embeddings, so left padding is only right with explicit position_ids
    (RoPE models are shift-invariant and would not notice); the wrapper exercises the full-logits path."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tiny_tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=1024,
                     initializer_range=0.2)
    gpt2 = GPT2LMHeadModel(cfg).eval()
    model = gpt2 if arch == "gpt2" else _NoKeepLM(gpt2)
    reader = Reader(model, tiny_tokenizer)
    assert (reader._keep_arg is None) == (arch == "no_logits_to_keep")
    with torch.no_grad():
        ll = reader.answer_loglik(examples, passages)
        s = reader.score_options(examples, passages)
    for b, ex in enumerate(examples):
        for k, p in enumerate(passages[b]):
            enc = reader.encode(ex, [p])
            ref = brute_token_logp(Reader(gpt2, tiny_tokenizer), enc.prompt_ids, enc.target_ids).sum().item()
            assert ll[b, k].item() == pytest.approx(ref, abs=ATOL)
        ref_s = _brute_letter_scores(Reader(gpt2, tiny_tokenizer), ex, passages[b])
        assert s[b, : len(ref_s)].tolist() == pytest.approx(ref_s, abs=ATOL)


def test_tokenizer_that_appends_eos(tiny_model, tiny_tokenizer, examples, passages):
    """Some tokenizers append EOS to every encoding: the prompt must not end with it before the answer."""
    import copy

    from tokenizers import processors

    tok = copy.deepcopy(tiny_tokenizer)
    eos = tok.eos_token_id
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>", special_tokens=[("<|endoftext|>", eos)])
    assert tok("Question")["input_ids"][-1] == eos
    reader = Reader(tiny_model, tok)
    enc = reader.encode(examples[0], passages[0][:1])
    assert enc.prompt_ids[-1] != eos and tok.decode(enc.target_ids) == " C"
    assert enc.prompt_ids == tok(enc.prompt)["input_ids"][:-1]
    with torch.no_grad():
        ll = reader.answer_loglik(examples, passages)
        ref = Reader(tiny_model, tiny_tokenizer).answer_loglik(examples, passages)
    assert torch.allclose(ll, ref, atol=1e-5)


# ---------------------------------------------------------------- cloze scoring (target="option_text")
@pytest.mark.parametrize("template", ["jmlr", "chat"])
def test_option_text_target_hides_options_and_scores_each_text(tiny_model, tiny_tokenizer, examples, passages,
                                                               template):
    reader = Reader(tiny_model, tiny_tokenizer, template=template, target="option_text", micro_batch=3)
    ex = examples[0]
    enc = reader.encode(ex, passages[0][:1])
    # the prompt does not list the options (the reader must produce the answer, not pick a letter)...
    assert "Aspirin" not in enc.prompt and "Options:" not in enc.prompt and ex.question in enc.prompt
    # ...and the answer target is the gold option's text, with the template's leading space
    lead = "" if template == "chat" else " "
    assert reader.target_for(ex) == lead + "Paracetamol"
    assert tiny_tokenizer.decode(enc.target_ids).strip() == "Paracetamol"
    with torch.no_grad():
        s = reader.score_options(examples, passages)
        ll = reader.answer_loglik(examples, passages)
    assert s.shape == (3, 4) and s[1, 3].item() == -math.inf
    for b, e in enumerate(examples):
        ref = []
        for letter, text in e.options.items():  # brute force: each option text after the option-free prompt
            enc = reader.encode(e, passages[b], lead + text)
            assert "Options:" not in enc.prompt
            ref.append(brute_token_logp(reader, enc.prompt_ids, enc.target_ids).sum().item())
        assert s[b, : len(ref)].tolist() == pytest.approx(ref, abs=ATOL)
        for k, p in enumerate(passages[b]):  # answer_loglik scores the gold text with one passage per prompt
            assert ll[b, k].item() == pytest.approx(brute_loglik(reader, e, [p]), abs=ATOL)
    preds = reader.predict(examples, passages)
    assert preds == [list(e.options)[j] for e, j in zip(examples, s.argmax(-1).tolist())]


def test_option_text_target_bad_input(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="target must be one of letter, letter_text, option_text"):
        Reader(tiny_model, tiny_tokenizer, target="text")
    reader = Reader(tiny_model, tiny_tokenizer, target="option_text")
    with pytest.raises(ValueError, match="has no text"):
        reader.target_for(Ex("Which?", {"A": "Aspirin", "B": "  "}, "B"))
