"""Continued pretraining: exact-length packed windows, EOS separators, every token used; a tiny run."""
from __future__ import annotations

import json

import pytest
import torch

from jmlr.train.stages import PretrainConfig, pack_windows, qa_to_text, run_pretrain
from jmlr.train.stages.pretrain import PackedStream, pretrain_texts


def test_pack_windows_exact_eos_all_tokens():
    docs = [[5, 6, 7], [8], [9, 10, 11, 12, 13], [14, 15]]
    sep = 0
    wins = list(pack_windows(docs, window=4, sep_id=sep))
    stream = [t for d in docs for t in d + [sep]]
    assert [t for w in wins for t in w] == stream  # all tokens used, in order, nothing added
    assert all(len(w) == 4 for w in wins[:-1]) and 0 < len(wins[-1]) <= 4
    assert stream.count(sep) == len(docs)  # one separator after every document
    assert wins == [[5, 6, 7, 0], [8, 0, 9, 10], [11, 12, 13, 0], [14, 15, 0]]
    assert list(pack_windows(docs, window=4, sep_id=sep, drop_last=True)) == wins[:3]
    # a stream that is a multiple of the window leaves no short tail
    assert [len(w) for w in pack_windows([[1, 2, 3]], window=4, sep_id=0)] == [4]
    with pytest.raises(ValueError, match="window"):
        list(pack_windows(docs, window=1, sep_id=0))


def test_packed_stream_real_tokenizer_one_epoch(reader):
    tok = reader.tokenizer
    texts = ["Aspirin inhibits platelet aggregation.", "Metformin lowers hepatic glucose output.", "短文本。"]
    stream = PackedStream(texts, tok, window=8, sep_id=tok.eos_token_id, shuffle=False)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    total = sum(len(x) + 1 for x in ids)
    wins = []
    it = iter(stream)
    while sum(len(w) for w in wins) < total:
        wins.append(next(it))
    assert all(len(w) == 8 for w in wins)  # endless stream: never a short window
    flat = [t for w in wins for t in w][:total]
    assert flat == [t for x in ids for t in x + [tok.eos_token_id]]
    assert 1.0 <= stream.epoch  # it has gone through every text


def test_qa_as_pretraining_text(tmp_path):
    from jmlr.data import QAExample

    free = QAExample(id="h", question="头痛怎么办？", answer_text="多休息。")
    mcq = QAExample(id="m", question="Which?", options={"A": "x", "B": "y"}, answer="B")
    assert qa_to_text(free) == "Question: 头痛怎么办？\nAnswer: 多休息。"
    assert qa_to_text(mcq) == "Question: Which?\nA. x\nB. y\nAnswer: B. y"
    f = tmp_path / "huatuo.jsonl"
    f.write_text(json.dumps({"questions": [["发烧怎么办？", "发热怎么处理？"]], "answers": ["多喝水。"]},
                            ensure_ascii=False) + "\n")
    cfg = PretrainConfig().data
    cfg.corpus, cfg.qa, cfg.qa_format = "", str(f), "huatuo"
    assert pretrain_texts(cfg) == ["Question: 发烧怎么办？\nAnswer: 多喝水。"]
    cfg.qa = ""
    with pytest.raises(ValueError, match="needs text"):
        pretrain_texts(cfg)


def test_run_pretrain_tiny(reader, corpus, tmp_path):
    from jmlr.reader import Reader

    cfg = PretrainConfig(output_dir=str(tmp_path / "cpt"))
    cfg.data.window = 32
    cfg.data.packing = "stream"  # GPT-style: every position carries loss (document packing: test_stages_packing)
    cfg.optim.steps, cfg.optim.batch_size, cfg.optim.grad_accum = 6, 2, 2
    cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.precision = 1e-2, 0, "fp32"
    s = run_pretrain(cfg, reader=reader, texts=corpus.texts(), progress=False)
    assert s["steps"] == 6
    assert s["tokens"] == 6 * 2 * 2 * 32  # packed: every window full, no padding
    assert s["loss_units"] == 6 * 2 * 2 * 31
    assert s["flops_est"] == 6.0 * s["n_params"] * s["tokens"]
    assert s["final_loss"] < s["first_loss"]
    assert (tmp_path / "cpt" / "config.yaml").is_file()
    rows = [json.loads(x) for x in (tmp_path / "cpt" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and rows[0]["tokens"] == 128
    back = Reader.from_pretrained(s["model_dir"])
    torch.testing.assert_close(back.model.lm_head.weight, reader.model.lm_head.weight)
    cfg.data.window = 5000
    with pytest.raises(ValueError, match="max_position_embeddings"):
        run_pretrain(cfg, reader=reader, texts=corpus.texts(), progress=False)
