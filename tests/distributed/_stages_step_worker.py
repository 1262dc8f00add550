"""SFT and DPO steps, run in the test process (:func:`run_all`) or under torchrun, where rank 0 saves what the
tests compare.

Usage: torchrun --nproc_per_node 2 _stages_step_worker.py READER_DIR OUT_DIR SFT_BATCH DPO_BATCH
Writes OUT_DIR/result-w{world}.pt: per stage the logged losses and grad norms (all-reduced), the token
count and the weights after step 1.
"""
import os
import sys
from pathlib import Path

import torch

from jmlr.reader import Reader
from jmlr.train.stages import DPOConfig, PreferencePair, SFTConfig, SFTExample, run_dpo, run_sft


# responses of very different lengths: each rank holds a different number of loss tokens; five examples in
# batches of 4: step 2 holds one, and one rank has nothing (it runs a zero-weight pass)
SFT = [SFTExample("Question: one?\nAnswer:", " a", "a"),
       SFTExample("Question: two?\nAnswer:", " a much longer answer with many more tokens in it than the others", "b"),
       SFTExample("Question: three?\nAnswer:", " medium length answer", "c"),
       SFTExample("Question: four, a longer question?\nAnswer:", " no", "d"),
       SFTExample("Question: five?\nAnswer:", " the fifth answer", "e")]
# three pairs on two ranks: shards of 2 and 1
DPO = [PreferencePair("Is drug X safe in pregnancy?", "No, avoid it.", "Yes, always.", "a"),
       PreferencePair("Dose of drug Y?", "10 mg daily.", "A whole bottle.", "b"),
       PreferencePair("Treat fever in a child?", "Paracetamol by weight.", "Aspirin.", "c")]


def optim(cfg, batch, steps, lr):
    o = cfg.optim
    o.steps, o.batch_size, o.lr, o.precision, o.schedule, o.warmup_steps = steps, batch, lr, "fp32", "constant", 0
    o.max_grad_norm = 1e9  # never clips, but logs the norm of the all-reduced gradient


def result(s):
    """What the run logged, and the weights after its FIRST step (its checkpoint, written by rank 0)."""
    import json

    from safetensors.torch import load_file

    run = Path(s["output_dir"])
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {"losses": s["losses"], "grad_norms": [r["grad_norm"] for r in rows], "tokens": s["tokens"],
            "units": s["loss_units"], "world": s["world_size"],
            "weights": load_file(str(run / "checkpoints" / "step-1" / "trainable.safetensors"))}


def run_all(reader_dir: str, out: Path, sft_batch: int, dpo_batch: int) -> dict:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    res = {}
    r = Reader.from_pretrained(reader_dir, max_length=128)
    cfg = SFTConfig(output_dir=str(out / f"sft-w{world}"), checkpoint_every=1)
    optim(cfg, sft_batch, steps=2, lr=1e-3)
    res["sft"] = result(run_sft(cfg, reader=r, examples=SFT, progress=False))

    r = Reader.from_pretrained(reader_dir, max_length=128)
    cfg = DPOConfig(output_dir=str(out / f"dpo-w{world}"), beta=0.5, checkpoint_every=1)
    optim(cfg, dpo_batch, steps=2, lr=5e-3)
    res["dpo"] = result(run_dpo(cfg, reader=r, pairs=DPO, progress=False))  # step 2: a loss other than log 2
    return res


if __name__ == "__main__":
    reader_dir, out, sft_batch, dpo_batch = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(1)
    res = run_all(reader_dir, out, sft_batch, dpo_batch)
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(res, out / f"result-w{res['sft']['world']}.pt")
