"""LoRA, gradient checkpointing, save/load, generation (tiny random models) and the real SmolLM2 (slow)."""
from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import Ex, make_model

from jmlr.reader import Reader

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0}


def test_lora_wraps_and_only_adapters_train(tiny_model, tiny_tokenizer, examples, passages):
    reader = Reader(tiny_model, tiny_tokenizer)
    with torch.no_grad():
        base = reader.answer_loglik(examples, passages)
    reader.add_lora(LORA)
    assert reader.is_peft
    trainable = [n for n, p in reader.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(reader.trainable_parameters()) == len(trainable)
    with torch.no_grad():  # LoRA's B starts at zero: the wrapped model computes the same function
        assert torch.allclose(reader.answer_loglik(examples, passages), base, atol=1e-5)
    reader.model.train()
    reader.answer_loglik(examples, passages).sum().backward()
    for n, p in reader.model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
        else:
            assert p.grad is None, n
    assert any(p.grad.abs().sum() > 0 for n, p in reader.model.named_parameters() if "lora_B" in n)
    with pytest.raises(ValueError, match="already has peft"):
        reader.add_lora(LORA)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_tokenizer, examples, passages):
    grads = []
    for gc in (False, True):
        model = make_model(len(tiny_tokenizer), seed=3)
        reader = Reader(model, tiny_tokenizer)
        if gc:
            reader.enable_gradient_checkpointing()
            assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
        model.train()
        reader.answer_loglik(examples, passages).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-5), n


def test_gradient_checkpointing_with_lora(tiny_tokenizer, examples, passages):
    reader = Reader(make_model(len(tiny_tokenizer)), tiny_tokenizer).enable_gradient_checkpointing().add_lora(LORA)
    reader.model.train()
    reader.answer_loglik(examples, passages).sum().backward()
    assert all(p.grad is not None for p in reader.trainable_parameters())


def _save_base(tmp_path, tiny_tokenizer, seed=0):
    folder = tmp_path / "base"
    make_model(len(tiny_tokenizer), seed=seed).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def test_save_and_load_full_model(tmp_path, tiny_tokenizer, examples, passages):
    base = _save_base(tmp_path, tiny_tokenizer)
    reader = Reader.from_pretrained(str(base), template="jmlr", max_length=300, target="letter_text")
    with torch.no_grad():
        reader.model.model.layers[0].mlp.up_proj.weight.mul_(1.5)  # trained-looking change
        ref = reader.answer_loglik(examples, passages)
    out = tmp_path / "saved"
    reader.save_pretrained(out)
    assert (out / "model.safetensors").is_file() and (out / "jmlr_reader.json").is_file()
    assert not list(tmp_path.glob(".saved.tmp-*"))
    again = Reader.from_pretrained(str(out))
    assert (again.template, again.max_length, again.target) == ("jmlr", 300, "letter_text")
    with torch.no_grad():
        assert torch.allclose(again.answer_loglik(examples, passages), ref, atol=1e-5)
    # in-place load into a fresh reader (what a trainer resume does), and overwrite of an existing folder
    fresh = Reader.from_pretrained(str(base), target="letter_text")
    fresh.load_weights(out)
    with torch.no_grad():
        assert torch.allclose(fresh.answer_loglik(examples, passages), ref, atol=1e-5)
    reader.save_pretrained(out)
    assert (out / "model.safetensors").is_file()
    with pytest.raises(FileNotFoundError, match="nowhere"):
        fresh.load_weights(tmp_path / "nowhere")


def test_save_and_load_lora_adapter(tmp_path, tiny_tokenizer, examples, passages):
    base = _save_base(tmp_path, tiny_tokenizer)
    reader = Reader.from_pretrained(str(base), lora=LORA, dtype="fp32")
    assert reader.is_peft
    with torch.no_grad():
        for n, p in reader.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # make the adapter matter
        ref = reader.answer_loglik(examples, passages)
    out = tmp_path / "adapter"
    reader.save_pretrained(out)
    assert (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()  # only the adapter is saved
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(base)
    again = Reader.from_pretrained(str(out))
    assert again.is_peft and all("lora_" in n for n, p in again.model.named_parameters() if p.requires_grad)
    with torch.no_grad():
        assert torch.allclose(again.answer_loglik(examples, passages), ref, atol=1e-5)
    fresh = Reader.from_pretrained(str(base), lora=LORA)
    fresh.load_weights(out)
    with torch.no_grad():
        assert torch.allclose(fresh.answer_loglik(examples, passages), ref, atol=1e-5)
        merged = fresh.merge_lora()
        assert not merged.is_peft
        assert torch.allclose(merged.answer_loglik(examples, passages), ref, atol=1e-4)
    with pytest.raises(ValueError, match="already holds a LoRA adapter"):
        Reader.from_pretrained(str(out), lora=LORA)


def test_from_pretrained_bf16(tmp_path, tiny_tokenizer, examples, passages):
    reader = Reader.from_pretrained(str(_save_base(tmp_path, tiny_tokenizer)), dtype="bf16")
    assert next(reader.model.parameters()).dtype == torch.bfloat16
    ll = reader.answer_loglik(examples, passages)
    assert ll.dtype == torch.float32 and torch.isfinite(ll).all()
    with pytest.raises(ValueError, match="unknown dtype"):
        Reader.from_pretrained(str(tmp_path / "base"), dtype="int3")


def test_generate_and_format_prompts(reader, examples, passages, tiny_tokenizer):
    prompts = reader.format_prompts(examples, passages, reserve_tokens=5)
    assert prompts[0] == reader.build_prompt(examples[0].question, examples[0].options, passages[0])
    side = tiny_tokenizer.padding_side
    texts = reader.generate(prompts, max_new_tokens=5, batch_size=2, stop=[])
    assert tiny_tokenizer.padding_side == side  # restored after left-padding for generation
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert all(len(tiny_tokenizer(t, add_special_tokens=False)["input_ids"]) <= 6 for t in texts)
    # batched left-padded greedy generation equals one-at-a-time generation
    single = [reader.generate([p], max_new_tokens=5, stop=[])[0] for p in prompts]
    assert texts == single
    # stop strings cut the output
    longest = max(texts, key=len)
    assert len(longest) >= 3, texts
    cut = reader.generate([prompts[texts.index(longest)]], max_new_tokens=5, stop=[longest[2:]])
    assert cut == [longest[:2].strip()]
    short = Reader(reader.model, tiny_tokenizer, max_length=100).format_prompts(
        examples[:1], [["fever " * 300]], reserve_tokens=20)
    assert len(tiny_tokenizer(short[0])["input_ids"]) <= 80
    with pytest.raises(ValueError, match="single string"):
        reader.generate("one prompt")
    preds = reader.predict(examples, passages, mode="generate", max_new_tokens=3)
    assert len(preds) == 3 and all(p is None or p in ex.options for p, ex in zip(preds, examples))


@pytest.mark.slow
def test_real_smollm2_scores_and_generates():
    from jmlr.models import resolve

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        resolve("smollm2-135m")
    except (ImportError, FileNotFoundError) as e:
        pytest.skip(f"bundled smollm2-135m unavailable: {e}")
    reader = Reader.from_pretrained("smollm2-135m", template="chat", max_length=256)
    exs = [
        Ex("What is the capital of France?", {"A": "Berlin", "B": "Paris", "C": "Madrid", "D": "Rome"}, "B"),
        Ex("Which organ produces insulin?", {"A": "Liver", "B": "Kidney", "C": "Pancreas"}, "C"),
    ]
    ps = [["Paris is the capital and largest city of France."], ["Beta cells of the pancreas secrete insulin."]]
    with torch.no_grad():
        s = reader.score_options(exs, ps)
        ll = reader.answer_loglik(exs, ps)
    assert s.shape == (2, 4) and torch.isfinite(s[0]).all() and torch.isfinite(s[1, :3]).all()
    assert s[1, 3] == float("-inf")
    assert ll.shape == (2, 1) and torch.isfinite(ll).all()
    texts = reader.generate(reader.format_prompts(exs, ps, reserve_tokens=16), max_new_tokens=16)
    assert len(texts) == 2 and all(t.strip() for t in texts)
