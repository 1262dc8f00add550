"""SFT: the loss mask covers the response only; QA-derived prompts fit; accumulation equals one big batch."""
from __future__ import annotations

import json

import pytest
import torch

from jmlr.train.stages import SFTConfig, SFTExample, encode_sft, run_sft, sft_examples_from_qa
from jmlr.train.stages.batching import IGNORE_INDEX, right_pad, sequence_logps
from jmlr.train.stages.sft import format_instruction, gold_passages, instruction_examples, load_instructions


def _labelled(enc):
    return [x for x in enc.labels if x != IGNORE_INDEX]


def test_mask_covers_the_response_only(reader):
    tok = reader.tokenizer
    pairs = [SFTExample("Instruction: name a beta blocker\nResponse:", " Atenolol is one.", "a"),
             SFTExample("Question: 2+2?\nCorrect Answer:", " B", "b")]
    enc, counts = encode_sft(pairs, reader)
    assert counts["skipped_prompt_too_long"] == 0
    for e, p in zip(enc, pairs):
        prompt_ids = tok(p.prompt)["input_ids"]
        n = len(prompt_ids)
        assert e.input_ids[:n] == prompt_ids
        assert e.labels[:n] == [IGNORE_INDEX] * n  # the whole prompt is masked
        assert _labelled(e) == e.input_ids[n:]  # every response token carries a label
        assert tok.decode(_labelled(e)) == p.response + tok.eos_token
    batch = right_pad([e.input_ids for e in enc], [e.labels for e in enc], tok.pad_token_id)
    short = min(range(2), key=lambda i: len(enc[i].input_ids))
    n = len(enc[short].input_ids)
    assert (batch["labels"][short, n:] == IGNORE_INDEX).all()  # padding is masked
    assert (batch["attention_mask"][short, n:] == 0).all()
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == sum(e.n_labels for e in enc)


def test_no_eos_and_truncation(reader):
    tok = reader.tokenizer
    long = SFTExample("Instruction: describe\nResponse:", " word" * 300, "long")
    enc, counts = encode_sft([long], reader, max_length=64, add_eos=False)
    assert len(enc[0].input_ids) == 64 and enc[0].truncated and counts["response_truncated"] == 1
    assert tok.eos_token_id not in _labelled(enc[0])
    enc, counts = encode_sft([SFTExample("x " * 100, " y", "p")], reader, max_length=32)
    assert enc == [] and counts["skipped_prompt_too_long"] == 1


def test_selective_head_matches_full_logits_and_manual(reader):
    enc, _ = encode_sft([SFTExample("Question: a?\nAnswer:", " yes it is", "a"),
                         SFTExample("Question: longer question here?\nAnswer:", " no", "b")], reader)
    t = right_pad([e.input_ids for e in enc], [e.labels for e in enc], reader.tokenizer.pad_token_id)
    fast, n = sequence_logps(reader.model, t["input_ids"], t["attention_mask"], t["labels"])
    full, n2 = sequence_logps(reader.model, t["input_ids"], t["attention_mask"], t["labels"], full_logits=True)
    torch.testing.assert_close(fast, full, atol=1e-4, rtol=1e-5)
    assert n.tolist() == n2.tolist() == [e.n_labels for e in enc]
    for b, e in enumerate(enc):  # each sequence alone, no padding, token by token
        ids = torch.tensor([e.input_ids])
        with torch.no_grad():
            logp = torch.log_softmax(reader.model(ids).logits[0].float(), -1)
        manual = sum(float(logp[t - 1, e.input_ids[t]]) for t in range(1, len(e.labels)) if e.labels[t] != IGNORE_INDEX)
        assert abs(float(fast[b].detach()) - manual) < 1e-3


def test_sft_examples_from_qa_prompt_and_passages(reader, mcqs, corpus):
    short = mcqs[:2]
    ex = sft_examples_from_qa(short, reader)
    assert ex[0].prompt == reader.build_prompt(short[0].question, short[0].options)
    assert ex[0].response == " A" and ex[1].response == " B"
    ex = sft_examples_from_qa(short, reader, target="letter_text")
    assert ex[1].response == " B. Betazole"
    rows = gold_passages(short, corpus)
    ex = sft_examples_from_qa(short, reader, passages=rows)
    assert "Reference [1]: Condition 0. Condition number 0 is treated with Alpharin" in ex[0].prompt
    # passages are cut so that prompt + response + EOS fit max_length
    reader.max_length = 60
    long_rows = [[r[0] + " More text." * 40] for r in rows]
    ex = sft_examples_from_qa(short, reader, passages=long_rows)
    enc, counts = encode_sft(ex, reader)
    assert counts["response_truncated"] == 0 and counts["skipped_prompt_too_long"] == 0
    assert all(len(e.input_ids) <= 60 for e in enc)
    assert all(reader.tokenizer.decode(_labelled(e)) == " A<|im_end|>" for e in enc[:1])
    with pytest.raises(ValueError, match="passage lists"):
        sft_examples_from_qa(short, reader, passages=[["x"]])
    with pytest.raises(ValueError, match="not in the corpus"):
        gold_passages([type(short[0])(id="z", question="q?", options={"A": "a", "B": "b"}, answer="A",
                                      gold_passage_ids=["nope"])], corpus)


def test_free_text_qa_uses_answer_text(reader):
    from jmlr.data import QAExample

    ex = QAExample(id="h1", question="头痛怎么办？", answer_text="多休息，必要时服用布洛芬。")
    (pair,) = sft_examples_from_qa([ex], reader)
    assert pair.response == " 多休息，必要时服用布洛芬。"


def test_instructions_loading_and_format(tmp_path, reader):
    f = tmp_path / "inst.jsonl"
    f.write_text(json.dumps({"instruction": "Summarise", "input": "Aspirin inhibits COX.", "output": "COX inhibitor"})
                 + "\n" + json.dumps({"prompt": "Say hi", "response": "hi"}) + "\n")
    recs = load_instructions(f)
    assert [r.output for r in recs] == ["COX inhibitor", "hi"]
    pairs = instruction_examples(recs, reader)
    assert pairs[0].prompt == "Instruction: Summarise\nInput: Aspirin inhibits COX.\nResponse:"
    assert pairs[0].response == " COX inhibitor"
    chat, lead = format_instruction("Summarise", "text", "chat", reader.tokenizer)
    assert lead == "" and chat.endswith("<|im_start|>assistant\n") and "Summarise\n\ntext" in chat
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "x", "output": "y"}) + "\n" + json.dumps({"instruction": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2: field 'output'"):
        load_instructions(bad)


def _run(reader, pairs, tmp_path, name, **optim):
    cfg = SFTConfig(output_dir=str(tmp_path / name))
    cfg.optim.precision = "fp32"
    cfg.optim.warmup_steps = 0
    cfg.optim.schedule = "constant"
    for k, v in optim.items():
        setattr(cfg.optim, k, v)
    return run_sft(cfg, reader=reader, examples=pairs, progress=False)


def test_grad_accumulation_equals_one_big_batch(tiny_reader_dir, tmp_path):
    from jmlr.reader import Reader

    pairs = [SFTExample("Question: one?\nAnswer:", " a short one", "x"),
             SFTExample("Question: two?\nAnswer:", " a much longer answer with many more tokens in it", "y")]
    r1 = Reader.from_pretrained(tiny_reader_dir, max_length=128)
    r2 = Reader.from_pretrained(tiny_reader_dir, max_length=128)
    s1 = _run(r1, pairs, tmp_path, "big", steps=1, batch_size=2, grad_accum=1, lr=1e-3, max_grad_norm=0.0)
    s2 = _run(r2, pairs, tmp_path, "acc", steps=1, batch_size=1, grad_accum=2, lr=1e-3, max_grad_norm=0.0)
    # the step loss is the token-weighted mean in both cases (not a mean of per-micro-batch means)
    assert s1["loss_units"] == s2["loss_units"]
    assert abs(s1["losses"][0] - s2["losses"][0]) < 1e-5
    for p1, p2 in zip(r1.model.parameters(), r2.model.parameters()):
        torch.testing.assert_close(p1, p2, atol=1e-6, rtol=1e-4)


def test_run_sft_learns_saves_and_logs(reader, mcqs, tmp_path):
    from jmlr.reader import Reader

    pairs = sft_examples_from_qa(mcqs[:2], reader)
    with torch.no_grad():
        before = reader.concat_loglik(mcqs[:2], [[], []])
    s = _run(reader, pairs, tmp_path, "sft", steps=12, batch_size=2, lr=2e-2)
    assert s["steps"] == 12 and s["stopped_by"] == "steps"
    assert s["final_loss"] < 0.5 * s["first_loss"]
    assert s["flops_est"] == 6.0 * s["n_params"] * s["tokens"]
    assert s["tokens"] == 12 * sum(len(e.input_ids) for e in encode_sft(pairs, reader)[0])
    rows = [json.loads(x) for x in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert json.loads((tmp_path / "sft" / "summary.json").read_text())["final_loss"] == s["final_loss"]
    back = Reader.from_pretrained(s["model_dir"])
    for p1, p2 in zip(reader.model.state_dict().values(), back.model.state_dict().values()):
        torch.testing.assert_close(p1, p2)
    # the trained answers are now more likely, as the reader scores them
    with torch.no_grad():
        after = reader.concat_loglik(mcqs[:2], [[], []])
    assert (after > before + 1.0).all()


def test_epoch_limit_and_bf16(reader, mcqs, tmp_path):
    pairs = sft_examples_from_qa(mcqs[:4], reader)
    s = _run(reader, pairs, tmp_path, "ep", steps=50, batch_size=2, epochs=1.0, precision="bf16")
    assert s["steps"] == 2 and s["stopped_by"] == "epochs"
    assert s["precision"]["precision"] == "bf16"  # asked for explicitly: honoured even where it is emulated
    assert all(l == l for l in s["losses"])  # finite under bf16 autocast


def test_lora_sft_trains_adapters_only_and_saves_them(reader, mcqs, tmp_path):
    from jmlr.reader import Reader

    reader.add_lora({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    base_before = {n: p.detach().clone() for n, p in reader.model.named_parameters() if "lora_" not in n}
    s = _run(reader, sft_examples_from_qa(mcqs[:2], reader), tmp_path, "lora", steps=3, lr=1e-2)
    assert 0 < s["n_trainable"] < s["n_params"] / 10
    for n, p in reader.model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base_before[n])  # frozen base weights
    assert (tmp_path / "lora" / "model" / "adapter_config.json").is_file()
    back = Reader.from_pretrained(s["model_dir"])
    assert back.is_peft
