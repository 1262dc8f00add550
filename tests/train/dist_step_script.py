"""One joint step, run either single-process (batch 2) or under torchrun with 2 ranks (batch 1 each).

Writes the (all-reduced) gradients of a few parameters and the mean loss to OUT (rank 0 only).
Usage: python dist_step_script.py ENC_DIR READER_DIR OUT_FILE BATCH
"""
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_trainer import make_trainer  # noqa: E402

enc, rd, out, batch = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
t = make_trainer(out.parent / f"run-{os.environ.get('RANK', 's')}", enc, rd,
                 [f"optim.batch_size={batch}", "optim.steps=1", "refresh.every=0", "optim.max_grad_norm=0"])
t.setup()
batch_ex = [t.train_data[i] for i in t._batch_indices(0, 0)]
loss, _ = t._micro_step(batch_ex)
t.accelerator.backward(loss)
loss = loss.detach().reshape(1)
if t.world > 1:
    torch.distributed.all_reduce(loss)
    loss /= t.world
grads = {n: p.grad.detach().clone() for n, p in t.model.named_parameters() if p.grad is not None}
grads = {n.removeprefix("module."): g for n, g in grads.items()}
if t.rank == 0:
    torch.save({"loss": loss, "grads": grads, "world": t.world,
                "questions": [e.id for e in batch_ex]}, out)
