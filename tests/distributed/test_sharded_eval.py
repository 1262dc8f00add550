"""Evaluation sharded over 2 torchrun gloo ranks (each scores every 2nd question, results gathered) equals the
single-process evaluation: same accuracy, Recall@k, confusion, per-question predictions and rankings."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _ports import free_port

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "sharded_eval_script.py"


@pytest.mark.distributed
def test_two_rank_evaluation_equals_single_process(tmp_path, tiny_bert_dir, tiny_reader_dir):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this Python")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, dist = tmp_path / "single.json", tmp_path / "dist.json"
    r = subprocess.run([sys.executable, str(SCRIPT), tiny_bert_dir, tiny_reader_dir, str(single)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), str(SCRIPT), tiny_bert_dir,
                        tiny_reader_dir, str(dist)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = json.loads(single.read_text()), json.loads(dist.read_text())
    assert a["world"] == 1 and b["world"] == 2
    assert a["result"]["n"] == 7 and len(a["result"]["predictions"]) == 7
    assert all(p in "ABCD" for p in a["result"]["predictions"])
    assert a["result"]["ranked"][0][0].startswith("p")
    assert b["result"] == a["result"]
