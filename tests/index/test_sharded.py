"""Sharded search over 2 gloo ranks equals single-process exact search."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.distributed


def test_two_rank_sharded_search_equals_exact(tmp_path):
    from jmlr.index import ExactIndex

    worker = Path(__file__).with_name("_sharded_worker.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(worker), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rng = np.random.default_rng(0)
    docs = rng.standard_normal((1001, 24)).astype(np.float32)
    queries = rng.standard_normal((7, 24)).astype(np.float32)
    exact = ExactIndex(24)
    exact.add([f"d{i}" for i in range(1001)], docs)
    want_s, want_i = exact.search(queries, 10)
    r0, r1 = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    assert list(r0["shard"]) == [0, 501] and list(r1["shard"]) == [501, 1001]
    got_i = np.concatenate([r0["ids"], r1["ids"]])
    got_s = np.concatenate([r0["scores"], r1["scores"]])
    assert (got_i == want_i.astype(str)).all()
    np.testing.assert_allclose(got_s, want_s.numpy(), rtol=1e-5, atol=1e-5)
    assert {int(x[1:]) for x in got_i.ravel()} & set(range(501, 1001)), "hits come from both shards"
