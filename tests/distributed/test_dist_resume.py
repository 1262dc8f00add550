"""Multi-rank checkpoints: a 2-rank run (torchrun, gloo) checkpointed at step 3 and resumed reproduces the
uninterrupted run exactly: the same per-step losses, learning rates, index versions and final weights on each
rank. Each rank writes its own index shard into the checkpoint, and the resumed rank 1 reads its own."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _ports import free_port

from jmlr.index import read_meta
from jmlr.train import checkpoint as ckpt

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "dist_resume_script.py"


def _torchrun():
    return shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")


def _run(args, env):
    r = subprocess.run([_torchrun(), "--nproc_per_node", "2", "--master_port", str(free_port()), str(SCRIPT), *args],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return [json.loads((Path(args[4]) / f"rank-{i}.json").read_text()) for i in range(2)]


@pytest.mark.distributed
@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "fsdp-lora"])
def test_two_rank_resume_reproduces_the_uninterrupted_run(tmp_path, tiny_bert_dir, tiny_reader_dir, strategy):
    """DDP, and FSDP with a full or a LoRA reader (the reader's full state and the full optimizer state gathered
    into the checkpoint, loaded back into the shards)."""
    if _torchrun() is None:
        pytest.skip("torchrun is not installed next to this Python")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JMLR_TEST_STRATEGY": strategy.split("-")[0]}
    if strategy.endswith("lora"):
        env["JMLR_TEST_LORA"] = "1"
    # one launch: the uninterrupted run into a/, then a fresh trainer resumed from a/checkpoints/step-3 into b/
    ranks = _run([tiny_bert_dir, tiny_reader_dir, str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "out")],
                 env)
    full, resumed = [r["full"] for r in ranks], [r["resumed"] for r in ranks]
    mid = tmp_path / "a" / "checkpoints" / "step-3"
    assert ckpt.verify_checkpoint(mid) is None
    # every rank saved what only it holds: its own contiguous half of the 24-passage corpus
    assert sorted(p.name for p in (mid / "index").iterdir()) == ["rank-0", "rank-1"]
    assert [int(read_meta(mid / "index" / f"rank-{r}")["count"]) for r in (0, 1)] == [12, 12]
    manifest = json.loads((mid / ckpt.MANIFEST).read_text())["files"]
    assert any(f.startswith("index/rank-1/") for f in manifest)

    assert not (tmp_path / "b" / "checkpoints" / "step-3").exists()  # b/ resumed after step 3: it saved none there
    for a, b in zip(full, resumed):
        assert a["world"] == b["world"] == 2 and a["rank"] == b["rank"]
        assert a["steps"] == b["steps"] == [1, 2, 3, 4, 5, 6]
        assert b["losses"] == a["losses"]  # exactly
        # refresh.every=2, synchronous: rebuilt after steps 2 and 4 (after the last step only at the end)
        assert b["index_version"] == a["index_version"] == [0, 1, 1, 2, 2, 2]
        assert b["weights"] == a["weights"]
        # linear decay from 3e-3 over optim.steps=6 optimizer steps, whatever the number of ranks
        assert a["lr_reader"] == pytest.approx([3e-3 * (1 - s / 6) for s in range(1, 7)], rel=1e-9)
    assert full[0]["losses"] == full[1]["losses"]  # the logged loss is the mean over both ranks
    if strategy == "ddp":
        assert full[0]["weights"] == full[1]["weights"]  # DDP keeps the replicas equal
