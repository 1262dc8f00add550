"""One joint optimizer step with the reader sharded by FSDP2 (dist.strategy=fsdp) on 2 torchrun ranks, or the
same step single-process, for the full reader or LoRA adapters; then a checkpoint through the trainer.

Writes to OUT_DIR/MODE/out.pt (rank 0) for each mode: the step's loss, the full (gathered) weights after the
step, the logits of a fixed input through the (sharded) reader, and the checkpoint folder next to it. Several
modes run one after the other in one process (one launch), each with a fresh trainer.
Usage: python dist_fsdp_script.py ENC_DIR READER_DIR OUT_DIR BATCH full,lora
"""
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from test_trainer import make_trainer  # noqa: E402

enc, rd, out_dir, batch, modes = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(1)


def one_step(mode):
    out = out_dir / mode / "out.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    t = make_trainer(out.parent / f"run-{os.environ.get('RANK', 's')}", enc, rd,
                     [f"optim.batch_size={batch}", "optim.steps=2", "refresh.every=0", "optim.max_grad_norm=0.5",
                      "dist.strategy=fsdp"])
    if mode == "lora":
        torch.manual_seed(0)  # random A and B (init_lora_weights=False), the same on every process
        t.reader.add_lora({"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"],
                           "init_lora_weights": False})
    t.setup()
    loss, stats = t.train_step()
    t.step = 1

    if t.sharded:
        from jmlr.reader.loading import full_state_dict

        reader_state = full_state_dict(t.reader.model)
    else:
        reader_state = {k: v.detach().clone() for k, v in t.reader.model.state_dict().items()}
    retriever_state = {k: v.detach().clone() for k, v in t.retriever.state_dict().items()}
    ids = torch.tensor([[1, 42, 7, 99, 5, 300, 12, 8]])
    with torch.no_grad():
        t.reader.model.eval()
        logits = t.reader.model(input_ids=ids.to(t.device)).logits.float().cpu()  # every rank: a collective
    folder = t.save_checkpoint(out.parent / "ckpt")
    if t.rank == 0:
        torch.save({"loss": loss, "grad_norm": stats["grad_norm"], "world": t.world, "sharded": t.sharded,
                    "reader": reader_state, "retriever": retriever_state, "logits": logits, "ids": ids,
                    "ckpt": str(folder)}, out)


for m in modes.split(","):  # each mode a fresh trainer, models and Accelerator, in this one process (group)
    one_step(m)
