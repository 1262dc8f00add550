"""report_to through accelerate's trackers (clear errors for missing packages) and curves.png of a joint run."""
import json

import pytest

from jmlr.config import load_config
from jmlr.train import tracking
from jmlr.train.tracking import TrackerUnavailableError, check_report_to, parse_report_to, scalars


def test_parse_and_check_report_to(monkeypatch):
    assert parse_report_to("jsonl, TensorBoard,jsonl") == ["jsonl", "tensorboard"]
    assert parse_report_to(["none"]) == [] and parse_report_to([]) == []
    with pytest.raises(ValueError, match="unknown tracker 'tensorbord'; expected some of: jsonl, aim"):
        parse_report_to(["tensorbord"])
    with pytest.raises(ValueError, match="name the trackers"):
        parse_report_to("all")
    monkeypatch.setattr(tracking, "available_trackers", lambda: set())
    with pytest.raises(TrackerUnavailableError, match="'wandb' package is not installed; pip install wandb"):
        check_report_to(["jsonl", "wandb"])
    with pytest.raises(ValueError, match="pip install tensorboard"):
        check_report_to("tensorboard")
    assert check_report_to(["jsonl"]) == ["jsonl"]
    monkeypatch.setattr(tracking, "available_trackers", lambda: {"wandb"})
    assert check_report_to(["jsonl", "wandb"]) == ["jsonl", "wandb"]


def test_missing_tracker_fails_before_any_model_loads(monkeypatch, tmp_path, capsys):
    from jmlr.cli import main
    from jmlr.train.trainer import JointTrainer

    monkeypatch.setattr(tracking, "available_trackers", lambda: set())
    cfg = load_config(None, ["report_to=[jsonl, wandb]", f"retriever.model={tmp_path / 'no-such-model'}"])
    with pytest.raises(TrackerUnavailableError, match="wandb"):
        JointTrainer.from_config(cfg, progress=False)  # not the missing model: the tracker is checked first
    assert main(["train", "report_to=[wandb]", f"retriever.model={tmp_path / 'no-such-model'}",
                 f"output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install wandb" in err


def test_scalars_of_rows():
    assert scalars({"step": 3, "loss": 1.5, "lr_reader": 1e-3, "note": "x", "bad": float("nan")}) == \
        ({"train/loss": 1.5, "train/lr_reader": 1e-3}, 3)
    assert scalars({"eval": {"split": "dev", "step": 4, "accuracy": 0.5, "recall@5": 0.25, "retrieval": True}}) == \
        ({"dev/accuracy": 0.5, "dev/recall@5": 0.25}, 4)


@pytest.fixture
def memory_tracker():
    """A custom accelerate tracker registered by name, holding what it was given."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker, register_tracker_class

    class MemoryTracker(GeneralTracker):
        name = "memory"
        requires_logging_directory = False
        runs = []

        def __init__(self, run_name, **kwargs):
            super().__init__()
            self.run_name, self.config, self.logged, self.finished = run_name, None, [], False
            MemoryTracker.runs.append(self)

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values):
            self.config = values

        def log(self, values, step=None, **kwargs):
            self.logged.append((step, dict(values)))

        def finish(self):
            self.finished = True

    register_tracker_class(MemoryTracker)
    yield MemoryTracker
    LOGGER_TYPE_TO_CLASS.pop("memory", None)


def test_joint_run_reports_to_trackers_and_writes_curves(tmp_path, tiny_bert_dir, tiny_reader_dir, memory_tracker):
    from jmlr.reader import Reader
    from jmlr.retriever import DualEncoder
    from jmlr.train.trainer import JointTrainer

    from train.test_trainer import tiny_data

    cfg = load_config(None, ["optim.steps=4", "optim.batch_size=2", "index.top_k=2", "eval_every=2",
                             f"output_dir={tmp_path / 'run'}", "refresh.every=2", "refresh.asynchronous=false",
                             "optim.warmup_steps=0", "optim.precision=fp32", "refresh.probe_size=8",
                             "report_to=[jsonl, memory]"])
    corpus, qa = tiny_data(8)
    t = JointTrainer(cfg, DualEncoder.from_pretrained(tiny_bert_dir),
                     Reader.from_pretrained(tiny_reader_dir, max_length=128), corpus, qa, qa[:2], progress=False)
    t.train()
    (run,) = memory_tracker.runs
    assert run.run_name == "jmlr" and run.config["optim.steps"] == 4 and run.config["report_to"] == '["jsonl", "memory"]'
    train_steps = [s for s, v in run.logged if "train/loss" in v]
    assert train_steps == [1, 2, 3, 4]
    dev = [(s, v) for s, v in run.logged if "dev/accuracy" in v]
    assert [s for s, _ in dev] == [2, 4] and all("dev/recall@1" in v for _, v in dev)
    assert any("train/index_version" in v for _, v in run.logged)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum("loss" in r for r in rows) == 4 and sum("eval" in r for r in rows) == 2
    png = (tmp_path / "run" / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    t._trackers.finish()
    assert run.finished


def test_tensorboard_when_installed(tmp_path):
    if "tensorboard" not in tracking.available_trackers():
        pytest.skip("tensorboard is not installed (the missing-package error is tested above)")
    rt = tracking.RunTrackers(["tensorboard"], tmp_path, {"a": {"b": 1}})
    rt.log({"step": 1, "loss": 0.5})
    rt.finish()
    assert any((tmp_path / "tb").rglob("events.out.tfevents.*"))
