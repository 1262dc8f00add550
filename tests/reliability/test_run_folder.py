"""Defect 5: a run folder has one owner. A second training is refused naming the holder; a fresh run refuses
a non-empty folder unless overwrite=true; a resume with nothing left to train says so and exits non-zero."""
import json
import os
import socket

import pytest

from _reliability import hold_lock_in_subprocess, run_jmlr


def test_a_second_training_into_a_held_output_dir_is_refused(tmp_path):
    out = tmp_path / "run"
    holder = hold_lock_in_subprocess(f"fs.run_folder_lock({str(out)!r})")
    try:
        r = run_jmlr("train", f"output_dir={out}", "retriever.model=/nonexistent/encoder", "--no-progress")
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "in use by another writer" in err and f"pid {holder.pid}" in err and socket.gethostname() in err


def test_two_trainers_in_one_process_cannot_share_an_output_dir(make_trainer, tmp_path):
    from jmlr.core.fs import FolderLockedError

    a = make_trainer(tmp_path / "run", dev=False)
    a.setup()
    b = make_trainer(tmp_path / "run", ["overwrite=true"], dev=False)
    with pytest.raises(FolderLockedError, match=f"pid {os.getpid()} .*this process"):
        b.setup()
    a.release()


def test_a_fresh_run_refuses_an_old_run_folder_unless_overwrite(make_trainer, tmp_path):
    from jmlr.train import checkpoint as ckpt

    out = tmp_path / "run"
    old = out / "checkpoints" / "step-50"
    old.mkdir(parents=True)
    (old / ckpt.STATE_FILE).write_bytes(b"an old run's newer checkpoint")
    (out / "metrics.jsonl").write_text('{"step": 50, "loss": 1.0}\n')
    with pytest.raises(FileExistsError, match="is not empty .*checkpoints, metrics.jsonl.*overwrite=true"):
        make_trainer(out, dev=False).setup()
    t = make_trainer(out, ["optim.steps=2", "overwrite=true"], dev=False)
    t.train()
    assert not old.exists(), "overwrite removes the old run's checkpoints"
    assert ckpt.latest_checkpoint(out).name == "step-2"
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]


def test_a_resume_with_nothing_left_to_train_exits_nonzero(make_trainer, tmp_path):
    out = tmp_path / "run"
    make_trainer(out, ["optim.steps=2"], dev=False).train()
    with pytest.raises(ValueError, match="step 2 and optim.steps=2: nothing left to train"):
        make_trainer(out, ["optim.steps=2", "resume=latest"], dev=False).setup()
    r = run_jmlr("train", f"output_dir={out}", "optim.steps=1", "resume=latest", "--no-progress")
    assert r.returncode == 2 and "nothing left to train" in r.stderr and "Traceback" not in r.stderr, r.stderr
