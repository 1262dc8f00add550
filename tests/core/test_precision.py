"""optim.precision: auto picks bf16 only where the hardware runs it natively, and every run records its choice."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from jmlr.config import load_config
from jmlr.core import precision as P

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))


@pytest.fixture
def cpu_with(monkeypatch):
    """Pretend the CPU has exactly these /proc/cpuinfo flags."""
    def set_flags(*flags):
        monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"avx2", "avx512f", *flags}))
    return set_flags


@pytest.mark.parametrize("flags,expected", [((), "fp32"), (("avx512_bf16",), "bf16"), (("amx_bf16",), "bf16"),
                                            (("amx_bf16", "avx512_bf16"), "bf16")])
def test_auto_on_cpu_follows_the_flags(cpu_with, flags, expected):
    cpu_with(*flags)
    p = P.resolve_precision("auto", "cpu")
    assert p.name == expected and p.requested == "auto" and p.device_type == "cpu"
    if flags:
        assert all(f in p.reason for f in flags)
    else:
        assert "lacks" in p.reason and "emulated" in p.reason


def test_auto_on_cuda_follows_the_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "FakeGPU")
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, n=native: n)
        p = P.resolve_precision("auto", "cuda")
        assert (p.name, p.device_type) == (expected, "cuda") and "FakeGPU" in p.reason


def test_explicit_choices_are_honoured(cpu_with):
    cpu_with()  # no native bf16: an explicit bf16 is still what the user asked for, and the reason says so
    p = P.resolve_precision("bf16", "cpu")
    assert p.name == "bf16" and p.dtype is torch.bfloat16 and "emulated" in p.reason
    assert P.resolve_precision("fp16", "cpu").dtype is torch.float16
    assert P.resolve_precision("fp32", "cpu").dtype is None
    assert P.resolve_precision(torch.bfloat16, "cpu").name == "bf16"
    with pytest.raises(ValueError, match="optim.precision='int4' is not a precision"):
        P.resolve_precision("int4", "cpu")


def test_autocast_takes_the_device_type_from_the_tensor():
    x = torch.ones(2, 2)
    with P.resolve_precision("bf16", x).autocast(x):
        assert torch.is_autocast_enabled("cpu") and (x @ x).dtype is torch.bfloat16
    with P.resolve_precision("fp32", x).autocast(x):
        assert not torch.is_autocast_enabled("cpu") and (x @ x).dtype is torch.float32
    with P.autocast("bfloat16", torch.nn.Linear(2, 2)):
        assert torch.get_autocast_dtype("cpu") is torch.bfloat16


def test_old_bf16_key_names_the_new_one(tmp_path):
    with pytest.raises(ValueError, match=r"'optim.bf16' was replaced by 'optim.precision"):
        load_config(None, ["optim.bf16=false"])
    f = tmp_path / "old.yaml"
    f.write_text("optim:\n  bf16: true\n")
    with pytest.raises(ValueError, match=r"'optim.bf16' in .*old.yaml was replaced by 'optim.precision"):
        load_config(f)
    with pytest.raises(ValueError, match="expects one of auto, fp32, bf16, fp16"):
        load_config(None, ["optim.precision=half-ish"])
    from jmlr.train.stages.sft import SFTConfig

    with pytest.raises(ValueError, match="replaced by 'optim.precision"):
        load_config(None, ["optim.bf16=true"], cls=SFTConfig)


@pytest.mark.parametrize("flags,expected", [((), "fp32"), (("amx_bf16",), "bf16")])
def test_a_run_records_its_choice(cpu_with, tmp_path, tiny_bert_dir, tiny_reader_dir, flags, expected):
    from test_trainer import make_trainer

    cpu_with(*flags)
    t = make_trainer(tmp_path / "run", tiny_bert_dir, tiny_reader_dir,
                     ["optim.steps=2", "optim.precision=auto", "refresh.every=0"])
    summary = t.train()
    assert summary["precision"]["precision"] == expected and summary["precision"]["requested"] == "auto"
    assert (flags[0] if flags else "lacks") in summary["precision"]["reason"]
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["precision"] == summary["precision"]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 2 and all(r["precision"] == expected for r in steps)
    assert all(r["eval"]["precision"] == expected for r in rows if "eval" in r)
