"""Defect 7: failures come before the work, not after it: a bad output dir before models load, a bad --out
before encoding, an oversized question before the corpus is encoded, and a full disk said as such."""
import errno
import json
import os
from pathlib import Path

import pytest

from _reliability import tiny_data


def test_a_bad_output_dir_fails_before_any_model_loads(tmp_path):
    from jmlr.config import load_config
    from jmlr.train.trainer import JointTrainer

    f = tmp_path / "file"
    f.write_text("x")
    # the models named here do not exist: reaching them would raise about them instead
    cfg = load_config(None, [f"output_dir={f}", f"reader.model={tmp_path}/no/reader",
                             f"retriever.model={tmp_path}/no/encoder"])
    with pytest.raises(NotADirectoryError, match="output_dir is a file"):
        JointTrainer.from_config(cfg, progress=False)


def test_index_build_checks_out_before_loading_or_encoding(tmp_path, capsys):
    from jmlr.cli import main

    c = tmp_path / "corpus.jsonl"
    c.write_text(json.dumps({"id": "a", "text": "some text"}) + "\n")
    out = tmp_path / "out"
    out.write_text("a file where the index should go")
    rc = main(["index", "build", "--corpus", str(c), "--encoder", str(tmp_path / "missing" / "enc" / "x"),
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "--out is a file" in err and str(out) in err, err
    user_folder = tmp_path / "notes"
    user_folder.mkdir()
    (user_folder / "mine.txt").write_text("keep me")
    rc = main(["index", "build", "--corpus", str(c), "--out", str(user_folder), "--type", "bm25"])
    assert rc == 1 and "not a jmlr index" in capsys.readouterr().err
    assert (user_folder / "mine.txt").read_text() == "keep me"


def test_an_oversized_question_is_refused_before_the_corpus_is_encoded(make_trainer, tmp_path, monkeypatch):
    from jmlr.data import QAExample
    from jmlr.train import retrieval

    corpus, qa = tiny_data()
    huge = QAExample(id="huge", question="why " * 50_000, options={"A": "x", "B": "y"}, answer="A")
    data = (corpus, qa[:3] + [huge] + qa[3:])

    def never(*a, **k):
        raise AssertionError("the corpus was encoded before the question was checked")

    monkeypatch.setattr(retrieval.RetrievalState, "build", never)
    t = make_trainer(tmp_path / "run", data=data, dev=False)
    with pytest.raises(ValueError, match=r"train data: 1 of 13 questions do not fit reader.max_length=128 .*"
                                         r"'huge', needs at least \d+ tokens.*data.long_prompts=truncate"):
        t.setup()
    monkeypatch.undo()
    t = make_trainer(tmp_path / "run2", ["data.long_prompts=truncate", "optim.steps=1"], data=data, dev=False)
    t.train()
    cut = next(ex for ex in t.train_data if ex.id == "huge")
    assert 0 < len(cut.question) < 1000


def test_a_full_disk_is_said_as_such_naming_the_file(tmp_path):
    import torch

    from jmlr.cli import describe_error
    from jmlr.train import checkpoint as ckpt

    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    os.symlink("/dev/full", tmp_path / ckpt.STATE_FILE)  # every write to it fails with ENOSPC
    with pytest.raises(OSError) as e:
        ckpt.save_state(tmp_path, {"step": 1, "w": torch.zeros(10_000)})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / ckpt.STATE_FILE)
    msg, _ = describe_error(e.value)
    assert msg.startswith("no space left on device while writing") and str(tmp_path / ckpt.STATE_FILE) in msg
