"""``jmlr sft`` / ``jmlr dpo`` killed after a checkpoint and run again with ``resume=latest`` log the losses, and
end with the weights, of the run that was never interrupted; the metrics log is appended to, each step once."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "configs" / "stages" / "data"


class _Killed(BaseException):
    """Stands in for SIGKILL: nothing in the stage catches it."""


def _main(argv, capsys):
    from jmlr.cli import main

    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.err


def _argv(stage, tiny_reader_dir, out, *extra):
    data = ([f"data.instructions={DATA / 'instructions.jsonl'}", "data.qa=", "optim.lr=1e-2"] if stage == "sft"
            else [f"data.pairs={DATA / 'dpo_pairs.jsonl'}", "beta=0.5", "optim.lr=5e-3"])
    # cosine schedule with warmup, two epochs of shuffled data, AdamW state: all must come back on resume
    return [stage, f"output_dir={out}", f"model.model={tiny_reader_dir}", "model.max_length=256", "optim.steps=4",
            "optim.batch_size=2", "optim.precision=fp32", "optim.warmup_steps=1", "optim.schedule=cosine",
            "checkpoint_every=2", *data, *extra, "--no-progress"]


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_resume_latest_reproduces_the_uninterrupted_run(stage, tiny_reader_dir, tmp_path, capsys, monkeypatch):
    import jmlr.train.stages.engine as loop  # the engine's binding of jmlr.train.loop.accumulate_step

    rc, err = _main(_argv(stage, tiny_reader_dir, tmp_path / "full"), capsys)
    assert rc == 0, err
    full = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert full["steps"] == 4 and len(set(full["losses"])) >= 3  # (DPO: log 2 until the warmup step has passed)

    # the same run, killed during step 4: checkpoints/step-2 and rows 1-3 (plus a half-written row) remain
    real, calls = loop.accumulate_step, []

    def dies_at_step_4(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
                f.write('{"step": 4, "lo')
            raise _Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "accumulate_step", dies_at_step_4)
    with pytest.raises(_Killed):
        _main(_argv(stage, tiny_reader_dir, tmp_path / "run"), capsys)
    monkeypatch.setattr(loop, "accumulate_step", real)
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2"]
    assert not (run / "summary.json").exists()

    rc, err = _main(_argv(stage, tiny_reader_dir, run, "resume=latest"), capsys)
    assert rc == 0, err
    resumed = json.loads((run / "summary.json").read_text())
    assert resumed["resumed_from"].endswith("step-2")
    assert resumed["losses"] == full["losses"]  # steps 1-2 from the checkpoint, 3-4 trained again
    assert resumed["tokens"] == full["tokens"] and resumed["loss_units"] == full["loss_units"]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # row 3 of the killed run replaced, the partial row gone
    assert [r["loss"] for r in rows] == full["losses"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2", "step-4"]
    a, b = _weights(tmp_path / "full" / "model"), _weights(run / "model")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)


def test_resume_and_fresh_run_guards(tiny_reader_dir, tmp_path, capsys):
    out = tmp_path / "sft"
    rc, err = _main(_argv("sft", tiny_reader_dir, out, "resume=latest"), capsys)
    assert rc == 2 and "holds no usable checkpoint" in err
    rc, err = _main(_argv("sft", tiny_reader_dir, out, "optim.steps=2"), capsys)
    assert rc == 0, err
    rc, err = _main(_argv("sft", tiny_reader_dir, out, "optim.steps=2", "resume=latest"), capsys)
    assert rc == 2 and "nothing left to train" in err
    rc, err = _main(_argv("sft", tiny_reader_dir, out, "optim.steps=2"), capsys)
    assert rc == 2 and "holds checkpoints of an earlier run" in err  # a fresh run would mix with them
    rc, err = _main(_argv("sft", tiny_reader_dir, out, "optim.steps=3", "resume=latest"), capsys)
    assert rc == 0, err  # raise the budget and continue: step 3 follows the earlier two
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    rc, err = _main(_argv("sft", tiny_reader_dir, out, "optim.steps=1", "overwrite=true"), capsys)
    assert rc == 0, err
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]


def test_fresh_runs_append_to_the_log(tiny_reader_dir, tmp_path, capsys):
    out = tmp_path / "sft"
    for _ in range(2):
        rc, err = _main(_argv("sft", tiny_reader_dir, out, "optim.steps=1", "checkpoint_every=0"), capsys)
        assert rc == 0, err
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 1]  # the earlier run's row is kept


def test_pretrain_resume_reads_the_packed_stream_on(tiny_reader_dir, corpus, tmp_path, monkeypatch):
    """The packed stream has no random access: a resumed run re-reads it up to its checkpoint's position."""
    import jmlr.train.stages.engine as loop  # the engine's binding of jmlr.train.loop.accumulate_step
    from jmlr.reader import Reader
    from jmlr.train.stages import PretrainConfig, run_pretrain

    def cfg(name, **kw):
        c = PretrainConfig(output_dir=str(tmp_path / name), checkpoint_every=2, **kw)
        c.data.window, c.data.shuffle = 16, True  # 2 texts: an epoch every few windows, reshuffled
        c.optim.steps, c.optim.batch_size, c.optim.lr, c.optim.precision = 5, 2, 1e-2, "fp32"
        return c

    texts = corpus.texts()[:2]
    full = run_pretrain(cfg("full"), reader=Reader.from_pretrained(tiny_reader_dir), texts=texts, progress=False)
    assert full["epochs"] > 1 and len(set(full["losses"])) == 5
    real, calls = loop.accumulate_step, []

    def dies_at_step_4(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise _Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "accumulate_step", dies_at_step_4)
    with pytest.raises(_Killed):
        run_pretrain(cfg("run"), reader=Reader.from_pretrained(tiny_reader_dir), texts=texts, progress=False)
    monkeypatch.setattr(loop, "accumulate_step", real)
    resumed = run_pretrain(cfg("run", resume="latest"), reader=Reader.from_pretrained(tiny_reader_dir), texts=texts,
                           progress=False)
    assert resumed["resumed_from"].endswith("step-2")
    assert resumed["losses"] == full["losses"] and resumed["epochs"] == full["epochs"]
