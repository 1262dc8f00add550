"""Two joint runs in one torchrun launch (2 gloo ranks, synchronous refresh every 2 steps): first uninterrupted
with a checkpoint at step 3, then a fresh trainer (new models, new Accelerator) resumed from that checkpoint
into another folder. Each rank writes, per run, its losses, learning rates, index versions and a digest of its
final weights to OUT_DIR/rank-R.json as {"full": {...}, "resumed": {...}}.

One launch instead of two halves the process start-ups (imports, rendezvous, model loads): the resumed run
still starts from nothing but the checkpoint (its trainer, models, optimizer and index are built anew, and
the RNG states it continues from are the checkpoint's).

Usage: torchrun --nproc_per_node 2 dist_resume_script.py ENC_DIR READER_DIR RUN_A RUN_B OUT_DIR
(JMLR_TEST_STRATEGY=fsdp in the environment: dist.strategy=fsdp; JMLR_TEST_LORA=1: a LoRA reader)
"""
import hashlib
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from test_trainer import make_trainer  # noqa: E402

enc, rd, run_a, run_b, out = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5])
torch.set_num_threads(1)


def run(folder, resume=None):
    overrides = ["optim.steps=6", "checkpoint_every=3", "optim.batch_size=2", "refresh.every=2",
                 "refresh.asynchronous=false", f"dist.strategy={os.environ.get('JMLR_TEST_STRATEGY', 'ddp')}"]
    if resume:
        overrides.append(f"resume={resume}")
    t = make_trainer(folder, enc, rd, overrides)
    if os.environ.get("JMLR_TEST_LORA"):
        torch.manual_seed(0)  # the same random adapters on every rank and in both runs
        t.reader.add_lora({"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"],
                           "init_lora_weights": False})
    summary = t.train()
    h = hashlib.sha256()
    for name, p in sorted(t.model.named_parameters()):
        local = p.detach()
        local = local.to_local() if hasattr(local, "to_local") else local  # FSDP: this rank's shard
        h.update(name.encode())
        h.update(local.cpu().float().numpy().tobytes())
    return {"world": t.world, "rank": t.rank, "losses": summary["losses"],
            "steps": [r["step"] for r in t.history], "lr_reader": [r["lr_reader"] for r in t.history],
            "index_version": [r["index_version"] for r in t.history], "weights": h.hexdigest()}


full = run(run_a)
resumed = run(run_b, resume=run_a / "checkpoints" / "step-3")
out.mkdir(parents=True, exist_ok=True)
rank = int(os.environ.get("RANK", "0"))
(out / f"rank-{rank}.json").write_text(json.dumps({"full": full, "resumed": resumed}))
