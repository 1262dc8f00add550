"""One step on 2 torchrun ranks (gloo, DDP over both towers and the reader, sharded index) matches the
single-process step on the same global batch."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _ports import free_port

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "dist_step_script.py"


@pytest.mark.distributed
def test_two_ranks_match_single_process(tmp_path, tiny_bert_dir, tiny_reader_dir):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this Python")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    single = tmp_path / "single.pt"
    r = subprocess.run([sys.executable, str(SCRIPT), tiny_bert_dir, tiny_reader_dir, str(single), "2"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    dist = tmp_path / "dist.pt"
    r = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), str(SCRIPT), tiny_bert_dir,
                        tiny_reader_dir, str(dist), "1"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = torch.load(single), torch.load(dist)
    assert a["world"] == 1 and b["world"] == 2
    torch.testing.assert_close(b["loss"], a["loss"], rtol=1e-5, atol=1e-6)
    assert set(a["grads"]) == set(b["grads"]) and len(a["grads"]) > 10
    for name in a["grads"]:
        torch.testing.assert_close(b["grads"][name], a["grads"][name], rtol=1e-4, atol=1e-6, msg=name)
