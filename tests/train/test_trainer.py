"""End-to-end regression of the joint loop on tiny random models (torchtune recipe-test style)."""
import json

import pytest
import torch

from jmlr.config import load_config
from jmlr.data import Corpus, Passage, QAExample
from jmlr.reader import Reader
from jmlr.retriever import DualEncoder
from jmlr.train import checkpoint as ckpt
from jmlr.train.trainer import JointTrainer

FRUITS = ["apple", "pear", "plum", "fig", "lime", "kiwi", "date", "lemon"]


def tiny_data(n_questions=16):
    """A corpus of 24 short passages and MCQs whose answer is stated in one passage each."""
    passages = [Passage(id=f"p{i}", title=f"Drug {i}", text=f"Drug {i} is taken with {FRUITS[i % 8]} juice.")
                for i in range(24)]
    qa = []
    for i in range(n_questions):
        right = FRUITS[i % 8]
        opts = [right] + [f for f in FRUITS if f != right][:3]
        order = [(i + j) % 4 for j in range(4)]
        options = {L: opts[o] for L, o in zip("ABCD", order)}
        answer = next(L for L, t in options.items() if t == right)
        qa.append(QAExample(id=f"q{i}", question=f"Which juice goes with drug {i}?", options=options,
                            answer=answer, gold_passage_ids=[f"p{i}"]))
    return Corpus(passages), qa


def make_trainer(tmp_path, enc_dir, reader_dir, overrides=(), data=None):
    cfg = load_config(None, ["optim.steps=8", "optim.batch_size=2", "index.top_k=3", "eval_every=0",
                             f"output_dir={tmp_path}", "refresh.every=2", "refresh.asynchronous=false",
                             "reader.lr=3e-3", "retriever.lr=1e-3", "optim.warmup_steps=0", "optim.precision=fp32",
                             "refresh.probe_size=8", *overrides])
    corpus, qa = data or tiny_data()
    return JointTrainer(cfg, DualEncoder.from_pretrained(enc_dir), Reader.from_pretrained(reader_dir, max_length=128),
                        corpus, qa, qa[:4], progress=False)


def test_loss_goes_down(tmp_path, tiny_bert_dir, tiny_reader_dir):
    t = make_trainer(tmp_path / "run", tiny_bert_dir, tiny_reader_dir, ["optim.steps=16"])
    summary = t.train()
    losses = summary["losses"]
    assert len(losses) == 16 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.5, losses
    assert summary["costs"]["refresh"]["refreshes"] >= 7  # every 2 steps + the final refresh
    assert (tmp_path / "run" / "summary.json").is_file()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 17))


def test_resume_reproduces_recorded_losses(tmp_path, tiny_bert_dir, tiny_reader_dir):
    full = make_trainer(tmp_path / "a", tiny_bert_dir, tiny_reader_dir, ["checkpoint_every=3"])
    ref = full.train()["losses"]
    mid = tmp_path / "a" / "checkpoints" / "step-3"
    assert (mid / ckpt.STATE_FILE).is_file() and (mid / "reader").is_dir() and (mid / "index").is_dir()
    resumed = make_trainer(tmp_path / "b", tiny_bert_dir, tiny_reader_dir, [f"resume={mid}"])
    out = resumed.train()["losses"]
    assert resumed.history[0]["step"] == 1 and len(out) == 8  # history is restored, then continued
    assert out[:3] == ref[:3]
    assert out[3:] == ref[3:], (out, ref)  # exactly, with the same seed


@pytest.mark.parametrize("loss", ["rag_token", "jmlr_rank", "pdist", "emdr2", "lsr", "loop"])
def test_every_loss_runs_a_step(tmp_path, tiny_bert_dir, tiny_reader_dir, loss):
    t = make_trainer(tmp_path, tiny_bert_dir, tiny_reader_dir, ["optim.steps=2", f"loss.name={loss}",
                                                                  "refresh.every=0"])
    losses = t.train()["losses"]
    assert len(losses) == 2 and all(map(lambda v: v == v, losses))


def test_query_side_only_mode_keeps_doc_tower_and_index(tmp_path, tiny_bert_dir, tiny_reader_dir):
    t = make_trainer(tmp_path, tiny_bert_dir, tiny_reader_dir, ["optim.steps=3", "retriever.train_docs=false",
                                                                  "index.over_retrieve=5", "index.sample_m=2"])
    t.setup()
    doc_before = {k: v.clone() for k, v in t.retriever.doc_model.state_dict().items()}
    q_before = {k: v.clone() for k, v in t.retriever.query_model.state_dict().items()}
    t.train()
    assert all(torch.equal(doc_before[k], v) for k, v in t.retriever.doc_model.state_dict().items())
    assert any(not torch.equal(q_before[k], v) for k, v in t.retriever.query_model.state_dict().items())
    assert t.retrieval.version == 0  # a frozen doc tower never makes the index stale


def test_bad_settings_are_refused(tmp_path, tiny_bert_dir, tiny_reader_dir):
    with pytest.raises(ValueError, match="sample_m"):
        make_trainer(tmp_path, tiny_bert_dir, tiny_reader_dir, ["index.sample_m=9"])
    with pytest.raises(ValueError, match="empty"):
        corpus, _ = tiny_data()
        make_trainer(tmp_path, tiny_bert_dir, tiny_reader_dir, data=(corpus, []))
    with pytest.raises(ValueError, match="unknown loss"):
        make_trainer(tmp_path, tiny_bert_dir, tiny_reader_dir, ["loss.name=rag_seqence"])
