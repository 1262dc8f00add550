"""optim.max_time_s under torchrun: the stop decision is one for all ranks (every step is a collective, so a rank
that stopped alone would leave the others waiting in their next search)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _ports import free_port

WORKER = Path(__file__).resolve().parent / "_budget_worker.py"


@pytest.mark.distributed
def test_one_rank_out_of_time_stops_every_rank(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), str(WORKER), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert res == [{"mixed": False, "all_ok": True, "none_ok": False}] * 2
