"""Evaluate a tiny joint model on 7 questions (odd, so the ranks get 4 and 3), single-process or under torchrun.

Usage: python sharded_eval_script.py ENC_DIR READER_DIR OUT_FILE
Writes the evaluation result (rank 0; under torchrun every rank checks it got the same full result).
"""
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from test_trainer import make_trainer, tiny_data  # noqa: E402

enc, rd, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
torch.set_num_threads(1)
corpus, qa = tiny_data(n_questions=7)
t = make_trainer(out.parent / f"run-{os.environ.get('RANK', 's')}", enc, rd, ["refresh.every=0"], data=(corpus, qa))
t.setup()
from jmlr.train.trainer import evaluate_joint  # noqa: E402

res = evaluate_joint(t.retriever, t.reader, t.retrieval, t.doc_texts, t.corpus, qa, top_k=3, precision="fp32",
                     progress=False, batch_size=2, recall_ks=(1, 5), rank=t.rank, world=t.world,
                     return_predictions=True)
if t.world > 1:
    import torch.distributed as dist

    everyone = [None] * t.world
    dist.all_gather_object(everyone, json.dumps(res, sort_keys=True))
    assert len(set(everyone)) == 1, "ranks disagree on the gathered evaluation"
if t.rank == 0:
    out.write_text(json.dumps({"world": t.world, "result": res}, sort_keys=True))
