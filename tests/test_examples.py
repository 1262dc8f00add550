"""Every example script runs in quick mode (tiny random models stand in for the bundled ones)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _ports import free_port

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ["train_medqa.py", "by_feature/lora.py", "by_feature/jmlr_rank_loss.py", "by_feature/refresh_schedule.py",
           "by_feature/sentence_transformers_model.py", "by_feature/faiss_index.py", "by_feature/hf_datasets.py",
           "by_feature/trackers.py"]


def _last_json(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs_quick(script, tmp_path, tiny_bert_dir, tiny_reader_dir):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--quick", "--out", str(tmp_path / "run"),
                        "--retriever", tiny_bert_dir, "--reader", tiny_reader_dir],
                       capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    out = _last_json(r.stdout)
    assert 0.0 <= out["test_accuracy"] <= 1.0 and out["final_loss"] == out["final_loss"]
    assert (tmp_path / "run" / "summary.json").is_file()
    if script.endswith("refresh_schedule.py"):
        # the schedule started background refreshes (at step 2, and at 4 unless one was still encoding); each was
        # swapped in or, still in flight when training ended, dropped; then the final rebuild (sync) came
        stats = json.loads((tmp_path / "run" / "summary.json").read_text())["costs"]["refresh"]
        assert stats["async_refreshes"] + stats["cancelled"] >= 1 and stats["sync_refreshes"] == 1
        assert out["index_version"] == stats["async_refreshes"] + 1
    if script.endswith("lora.py"):
        assert "LoRA:" in r.stdout
    if script.endswith("sentence_transformers_model.py"):
        assert "pooling=lasttoken dim=64" in r.stdout and "query_prefix='question: '" in r.stdout
        assert (tmp_path / "run" / "retriever-st" / "modules.json").is_file()
    if script.endswith("faiss_index.py"):
        assert "trained against HNSW16,Flat with search params {'efSearch': 64}" in r.stdout
        assert "adopted FaissIndex" in r.stdout
    if script.endswith("hf_datasets.py"):
        assert "from datasets:" in r.stdout
    if script.endswith("trackers.py"):
        assert "[print] step 2: {'dev/accuracy'" in r.stdout and (tmp_path / "run" / "curves.png").is_file()


def test_document_packing_example_runs_quick(tmp_path, tiny_reader_dir):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "by_feature" / "document_packing.py"), "--quick",
                        "--out", str(tmp_path / "run"), "--reader", tiny_reader_dir],
                       capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    out = _last_json(r.stdout)
    assert out["packing"] == "document" and out["steps"] == 3 and out["tokens"] == 3 * 2 * 64
    assert out["loss_units"] < 3 * 2 * 63  # each document's first token carries no loss


@pytest.mark.distributed
def test_distributed_example_runs_on_two_ranks(tmp_path, tiny_bert_dir, tiny_reader_dir):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this Python")
    r = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()),
                        str(ROOT / "examples" / "by_feature" / "distributed.py"), "--quick", "--out",
                        str(tmp_path / "run"), "--retriever", tiny_bert_dir, "--reader", tiny_reader_dir],
                       capture_output=True, text=True, timeout=900, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank 0/2" in r.stdout and "rank 1/2" in r.stdout
