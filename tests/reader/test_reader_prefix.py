"""Shared-prefix option scoring (one packed forward per question) against one sequence per option.

Every case compares three things: the packed path, the per-option path, and an independent brute force (each
``prompt + option`` alone, unpadded, full logits). The options are ragged (1 to many tokens), questions have 3 to
5 options, rows are left-padded against each other, and micro-batches split a batch.
"""
from __future__ import annotations

import math

import pytest
import torch
from conftest import Ex, make_model

from jmlr.reader import Reader
from jmlr.reader.prefix import pack_shared_prefix, packed_logp

ATOL = 1e-4


def brute_option_scores(reader: Reader, ex, passages) -> list[float]:
    """Each option's target after the prompt, as its own unpadded sequence with full logits."""
    kind = "option_text" if reader.target == "option_text" else "letter"  # what score_options scores
    longest = max(len(reader._target_ids(reader.target_for(ex, L, kind))) for L in ex.options)
    enc = reader._encode_items([(ex, list(passages), None)], reserve_target=False, reserve=longest)[0]
    out = []
    for L in ex.options:
        tgt = reader._target_ids(reader.target_for(ex, L, kind))
        ids = torch.tensor([enc.prompt_ids + tgt])
        with torch.no_grad():
            logp = torch.log_softmax(reader.model(input_ids=ids).logits[0].float(), -1)
        P = len(enc.prompt_ids)
        out.append(sum(logp[P - 1 + t, tok].item() for t, tok in enumerate(tgt)))
    return out


@pytest.fixture
def ragged_examples(examples):
    return examples + [
        Ex("Which hormone lowers blood glucose after a meal in a patient with diabetes?",
           {"A": "Insulin", "B": "Glucagon produced by the alpha cells of the pancreas", "C": "Cortisol",
            "D": "Adrenaline", "E": "Growth hormone released in sleep"}, "A", id="q5"),
    ]


def _check(reader, exs, ps, micro_batch=None):
    assert reader.can_share_prefix
    with torch.no_grad():
        packed = reader.score_options(exs, ps, micro_batch=micro_batch, shared_prefix=True)
        per_option = reader.score_options(exs, ps, micro_batch=micro_batch, shared_prefix=False)
    assert packed.shape == per_option.shape == (len(exs), max(len(e.options) for e in exs))
    assert torch.equal(torch.isinf(packed), torch.isinf(per_option))
    fin = torch.isfinite(per_option)
    assert (packed[fin] - per_option[fin]).abs().max().item() < ATOL
    for b, ex in enumerate(exs):
        ref = brute_option_scores(reader, ex, ps[b] if ps is not None else [])
        assert packed[b, : len(ref)].tolist() == pytest.approx(ref, abs=2 * ATOL)
        assert all(math.isinf(v) for v in packed[b, len(ref):].tolist())
    return packed


@pytest.mark.parametrize("template", ["jmlr", "chat", "freetext"])
@pytest.mark.parametrize("target", ["option_text", "letter"])
def test_packed_equals_per_option(tiny_model, tiny_tokenizer, ragged_examples, passages, template, target):
    # target=letter: " E" is two tokens for this tokenizer, so the question with five options takes the
    # multi-token (shared-prefix) path too
    reader = Reader(tiny_model, tiny_tokenizer, template=template, target=target)
    ps = passages + [["Insulin lowers glucose.", "Glucagon raises it.", "Cortisol is a stress hormone."]]
    _check(reader, ragged_examples, ps)


@pytest.mark.parametrize("micro_batch", [1, 3])
def test_micro_batches_and_left_padding(tiny_model, tiny_tokenizer, ragged_examples, passages, micro_batch):
    # rows of very different lengths in one chunk: the short ones are left-padded by many tokens
    reader = Reader(tiny_model, tiny_tokenizer, target="option_text")
    ps = [passages[0], ["short."], passages[2] + passages[1], []]
    _check(reader, ragged_examples, ps, micro_batch=micro_batch)


def test_closed_book_k0(tiny_model, tiny_tokenizer, ragged_examples):
    reader = Reader(tiny_model, tiny_tokenizer, target="option_text", template="chat")
    _check(reader, ragged_examples, None)


def test_truncated_prompt_is_shared_by_every_option(tiny_model, tiny_tokenizer, ragged_examples):
    reader = Reader(tiny_model, tiny_tokenizer, target="option_text", max_length=96)
    ps = [["fever " * 300, "insulin " * 200]] * len(ragged_examples)
    _check(reader, ragged_examples, ps)


def test_lora_reader(tiny_tokenizer, ragged_examples, passages):
    pytest.importorskip("peft")
    reader = Reader(make_model(len(tiny_tokenizer), seed=3), tiny_tokenizer, target="option_text")
    reader.add_lora({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": False})
    assert reader.is_peft
    _check(reader, ragged_examples[:3], passages)


def test_absolute_positions_gpt2(tiny_tokenizer, ragged_examples, passages):
    """GPT-2 adds absolute position embeddings: the restart of positions per option must be honoured."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tiny_tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=1024,
                     initializer_range=0.2)
    reader = Reader(GPT2LMHeadModel(cfg).eval(), tiny_tokenizer, target="option_text")
    _check(reader, ragged_examples[:3], passages)


def test_eager_attention(tiny_model, tiny_tokenizer, ragged_examples, passages):
    tiny_model.config._attn_implementation = "eager"
    reader = Reader(tiny_model, tiny_tokenizer, target="option_text")
    _check(reader, ragged_examples[:3], passages)


def test_models_without_position_ids_fall_back(tiny_model, tiny_tokenizer, examples, passages):
    class NoPositions(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids=None, attention_mask=None, use_cache=None):
            pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos)

    reader = Reader(NoPositions(tiny_model), tiny_tokenizer, target="option_text")
    assert not reader.can_share_prefix
    with torch.no_grad():
        s = reader.score_options(examples, passages)  # shared_prefix requested by default: falls back
    ref = Reader(tiny_model, tiny_tokenizer, target="option_text").score_options(examples, passages,
                                                                                  shared_prefix=False)
    assert torch.equal(torch.isinf(s), torch.isinf(ref))
    fin = torch.isfinite(ref)
    assert torch.allclose(s[fin], ref[fin], atol=ATOL)


def test_packed_layout_by_hand():
    """Row 0: prompt [5, 6] then options [7] and [8, 9]; row 1 (left-padded by 2): prompt [4] then [3, 2]."""
    pb = pack_shared_prefix([[5, 6], [4]], [[[7], [8, 9]], [[3, 2]]], pad_id=0)
    assert pb.input_ids.tolist() == [[5, 6, 7, 8, 9], [0, 0, 4, 3, 2]]
    assert pb.position_ids.tolist() == [[0, 1, 2, 2, 3], [0, 0, 0, 1, 2]]
    allowed = (pb.attention_mask[:, 0] == 0).int().tolist()
    assert allowed[0] == [[1, 0, 0, 0, 0],
                          [1, 1, 0, 0, 0],
                          [1, 1, 1, 0, 0],   # option 1 sees the prompt and itself
                          [1, 1, 0, 1, 0],   # option 2 does not see option 1
                          [1, 1, 0, 1, 1]]
    assert allowed[1][2] == [0, 0, 1, 0, 0] and allowed[1][4] == [0, 0, 1, 1, 1]
    assert pb.keep == 4  # 3 continuation tokens + the prompt's last position
    # logits predicting: 7 <- pos 1, 8 <- pos 1, 9 <- pos 3 (row 0); 3 <- pos 2, 2 <- pos 3 (row 1); kept from pos 1
    assert pb.kept_pos.tolist() == [0, 0, 2, 1, 2] and pb.tokens.tolist() == [7, 8, 9, 3, 2]
    logits = torch.zeros(2, 4, 10)
    logits[0, 0, 7] = logits[0, 0, 8] = math.log(9.0)  # 10-word vocab: p(7) = p(8) = 9 / 26 at kept pos 0
    logits[0, 2, 9] = math.log(9.0)  # p(9) = 9 / 18 at kept pos 2
    s = packed_logp(logits, pb, n_cols=2)
    assert s[0].tolist() == pytest.approx([math.log(9 / 26), math.log(9 / 26) + math.log(0.5)])
    assert s[1, 0].item() == pytest.approx(2 * math.log(0.1)) and s[1, 1].item() == -math.inf


def test_bad_packing_input():
    with pytest.raises(ValueError, match="prompt is empty"):
        pack_shared_prefix([[]], [[[1]]], pad_id=0)
    with pytest.raises(ValueError, match="non-empty continuation"):
        pack_shared_prefix([[1]], [[[]]], pad_id=0)
