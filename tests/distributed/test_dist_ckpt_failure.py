"""A multi-rank checkpoint that fails on one rank fails on every rank and leaves nothing under its name."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _ports import free_port

from jmlr.train import checkpoint as ckpt

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "dist_ckpt_fail_script.py"


@pytest.mark.distributed
def test_a_rank_that_cannot_write_its_shard_fails_the_checkpoint_everywhere(tmp_path, tiny_bert_dir,
                                                                             tiny_reader_dir):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this Python")
    run, out = tmp_path / "run", tmp_path / "out"
    r = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), str(SCRIPT),
                        tiny_bert_dir, tiny_reader_dir, str(run), str(out)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    res = [json.loads((out / f"rank-{i}.json").read_text()) for i in range(2)]
    assert "no space left on device" in res[1]["raised"].lower() and "rank-1" in res[1]["raised"]
    assert "another rank failed" in res[0]["raised"]
    root = run / "checkpoints"
    assert not (root / "step-1").exists()
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")]  # no temporary folder left behind
    assert res[0]["second"] == str(root / "step-2") and res[1]["second"] is None
    assert ckpt.verify_checkpoint(root / "step-2") is None
    assert sorted(p.name for p in (root / "step-2" / "index").iterdir()) == ["rank-0", "rank-1"]
