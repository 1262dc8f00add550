"""One optimizer step with gradient accumulation through accelerate, single-process or under torchrun.

Single-process: batch 4, grad_accum 1. Under torchrun with 2 ranks: batch 1, grad_accum 2 per rank, so the
same 4 questions make up the step. Writes the step's loss, the clipped gradients, the updated trainable weights and (DDP) which
micro-batch each gradient all-reduce ran in to OUT (rank 0 only).
Usage: python dist_accum_script.py ENC_DIR READER_DIR OUT_FILE BATCH GRAD_ACCUM
"""
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from test_trainer import make_trainer  # noqa: E402

enc, rd, out, batch, ga = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(1)
t = make_trainer(out.parent / f"run-{os.environ.get('RANK', 's')}", enc, rd,
                 [f"optim.batch_size={batch}", f"optim.grad_accum={ga}", "optim.steps=1", "refresh.every=0",
                  "optim.max_grad_norm=0.5"])
t.setup()
micro = [-1]
reduce_in: list[int] = []
inner = t._micro_step


def counted(b):
    micro[0] += 1
    return inner(b)


t._micro_step = counted
if t.world > 1:
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    def hook(state, bucket):
        reduce_in.append(micro[0])
        return allreduce_hook(None, bucket)

    t.model.register_comm_hook(None, hook)
grads: dict = {}
guard = t._guard_nonfinite


def snapshot(loss, stats):  # runs after clipping, right before the optimizer step
    grads.update({n.removeprefix("module."): p.grad.detach().clone() for n, p in t.model.named_parameters()
                  if p.grad is not None})
    return guard(loss, stats)


t._guard_nonfinite = snapshot
loss, stats = t.train_step()
weights = {n.removeprefix("module."): p.detach().clone() for n, p in t.model.named_parameters() if p.requires_grad}
if t.rank == 0:
    torch.save({"loss": loss, "weights": weights, "grads": grads, "world": t.world, "reduce_in": reduce_in,
                "grad_norm": stats["grad_norm"],
                "find_unused": getattr(t.model, "find_unused_parameters", None)}, out)
