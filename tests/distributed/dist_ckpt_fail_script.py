"""A checkpoint on 2 torchrun ranks where rank 1 cannot write its index shard (a full disk), then one that
succeeds. Each rank writes what save_checkpoint raised (or None) and the second folder to OUT_DIR/rank-R.json.
Usage: torchrun --nproc_per_node 2 dist_ckpt_fail_script.py ENC_DIR READER_DIR RUN_DIR OUT_DIR
"""
import errno
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from test_trainer import make_trainer  # noqa: E402

enc, rd, run, out = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
torch.set_num_threads(1)
t = make_trainer(run, enc, rd, ["optim.steps=2", "refresh.every=0", "optim.batch_size=1"])
t.setup()
save = t.retrieval.save
if t.rank == 1:
    def full_disk(folder):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(folder) / "rank-1"))

    t.retrieval.save = full_disk
raised = None
try:
    t.save_checkpoint(run / "checkpoints" / "step-1")
except Exception as e:  # noqa: BLE001
    raised = f"{type(e).__name__}: {e}"
t.retrieval.save = save
second = t.save_checkpoint(run / "checkpoints" / "step-2")  # the ranks are still in step
out.mkdir(parents=True, exist_ok=True)
(out / f"rank-{t.rank}.json").write_text(json.dumps({"raised": raised, "second": str(second) if second else None}))
