"""Defect 8: housekeeping. Stale temporaries of killed runs are removed at start, atomic writes fsync,
metrics.jsonl is trimmed to the resumed step, empty passages and refreshes that never run are warned about,
and a truncated checkpoint names its file while resume=latest falls back to the newest good one."""
import json
import logging
import os
import shutil

import pytest

from _reliability import tiny_data


@pytest.fixture(scope="module")
def run4(tmp_path_factory, tiny_bert_dir, tiny_reader_dir):
    """A finished 4-step run with checkpoints at steps 2 and 4."""
    from jmlr.config import load_config
    from jmlr.reader import Reader
    from jmlr.retriever import DualEncoder
    from jmlr.train.trainer import JointTrainer

    from _reliability import BASE

    out = tmp_path_factory.mktemp("hk") / "run"
    corpus, qa = tiny_data()
    cfg = load_config(None, BASE + [f"output_dir={out}", "optim.steps=4", "checkpoint_every=2"])
    JointTrainer(cfg, DualEncoder.from_pretrained(tiny_bert_dir), Reader.from_pretrained(tiny_reader_dir,
                 max_length=128), corpus, qa, [], progress=False).train()
    return out


@pytest.fixture
def run_copy(run4, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run4, out)
    return out


def _train_steps(out):
    steps = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            steps.append("unreadable")
            continue
        if "loss" in row:
            steps.append(row["step"])
    return steps


def test_metrics_are_trimmed_to_the_resumed_step(run_copy, make_trainer):
    assert _train_steps(run_copy) == [1, 2, 3, 4]
    with open(run_copy / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 0.1')  # a row cut short by a kill
    t = make_trainer(run_copy, [f"resume={run_copy / 'checkpoints' / 'step-2'}", "optim.steps=3"], dev=False)
    t.train()
    assert _train_steps(run_copy) == [1, 2, 3], "each step logged once, the cut row dropped"


def test_stale_temporaries_are_removed_at_start(run_copy, make_trainer):
    ck = run_copy / "checkpoints"
    (ck / ".step-6.tmp-k2j3h4").mkdir()  # an older jmlr's name: no pid
    (ck / ".step-6.tmp-99999999-abcd" / "reader").mkdir(parents=True)
    (run_copy / ".metrics.jsonl.tmp-99999999-x.tmp").write_text("partial")
    t = make_trainer(run_copy, ["resume=latest", "optim.steps=5"], dev=False)
    t.setup()
    assert sorted(p.name for p in ck.iterdir()) == ["step-2", "step-4"]
    assert not list(run_copy.glob(".*.tmp-*"))
    t.release()


def test_stale_gguf_conversions_are_removed(tmp_path, monkeypatch):
    from jmlr import models

    monkeypatch.setenv("JMLR_CACHE", str(tmp_path))
    target = tmp_path / "models" / "smollm2-135m"
    target.mkdir(parents=True)
    (target / models._CONVERTED_MARKER).write_text("{}")
    (tmp_path / "models" / ".smollm2-k3j4").mkdir()
    (tmp_path / "models" / ".smollm2-k3j4" / "model.safetensors").write_bytes(b"0" * 1000)
    assert models.resolve("smollm2-135m") == str(target)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["smollm2-135m", "smollm2-135m.lock"]


def test_temporaries_of_dead_processes_only_are_removed_without_a_lock(tmp_path):
    from jmlr.core.fs import clean_stale_tmp

    (tmp_path / ".idx.tmp-99999999-aa").mkdir()
    (tmp_path / f".idx.tmp-{os.getppid()}-bb").mkdir()  # a live writer
    (tmp_path / ".idx.tmp-cc").mkdir()  # no pid: only a lock holder may remove it
    removed = clean_stale_tmp(tmp_path, ["idx"])
    assert [p.name for p in removed] == [".idx.tmp-99999999-aa"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".idx.tmp-cc", f".idx.tmp-{os.getppid()}-bb"])


@pytest.mark.parametrize("where", ["jmlr.core.fs", "jmlr.train.checkpoint"])
def test_atomic_dir_fsyncs_files_and_folders(tmp_path, monkeypatch, where):
    import importlib

    atomic_dir = importlib.import_module(where).atomic_dir
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else fd)
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.bin").write_bytes(b"a")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.bin").write_bytes(b"b")
    names = {os.path.basename(str(p)) for p in synced}
    assert {"a.bin", "b.bin", tmp_path.name}.issubset(names), synced


def test_a_truncated_checkpoint_is_named_and_latest_falls_back(run_copy, make_trainer, caplog):
    weights = run_copy / "checkpoints" / "step-4" / "reader" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match=f"{weights} holds 1000 bytes, expected"):
        make_trainer(run_copy, [f"resume={weights.parent.parent}", "optim.steps=5"], dev=False).setup()
    caplog.set_level(logging.WARNING)
    t = make_trainer(run_copy, ["resume=latest", "optim.steps=5"], dev=False)
    t.train()
    assert t.history[-1]["step"] == 5 and len(t.history) == 5
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "skipping step-4" in msg and str(weights) in msg and "falling back to step-2" in msg


def test_a_truncated_state_file_names_the_file(run_copy):
    from jmlr.train import checkpoint as ckpt

    folder = run_copy / "checkpoints" / "step-2"
    state = folder / ckpt.STATE_FILE
    state.write_bytes(state.read_bytes()[:500])
    (folder / ckpt.MANIFEST).unlink()  # as an older jmlr wrote it: nothing to check sizes against
    with pytest.raises(ValueError, match=f"{state}: cannot be read, the file is truncated"):
        ckpt.load_state(folder)


def test_empty_passages_are_warned_about(tmp_path, caplog):
    from jmlr.data import Corpus

    f = tmp_path / "c.jsonl"
    f.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": "  "}\n{"id": "c", "text": ""}\n')
    caplog.set_level(logging.WARNING)
    assert len(Corpus.load(f)) == 3
    assert "2 passage(s) have empty text (first: id 'b' at line 2)" in caplog.text


def test_a_refresh_that_never_runs_is_warned_about(make_trainer, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    t = make_trainer(tmp_path / "run", ["refresh.every=2", "retriever.train_docs=false", "optim.steps=1"],
                     dev=False)
    t.setup()
    assert "retriever.train_docs=false freezes the doc tower: the index is never refreshed" in caplog.text
    t.release()
    caplog.clear()
    t = make_trainer(tmp_path / "run2", ["refresh.every=5", "optim.steps=3"], dev=False)
    t.setup()
    assert "refresh.every=5 >= optim.steps=3: no refresh runs during training" in caplog.text
    t.release()
