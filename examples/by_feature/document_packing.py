"""Feature: continued pretraining with document-aware packing (data.packing=document, the default): documents
are packed into full windows, but positions restart and attention stays inside each document.

    python examples/by_feature/document_packing.py --quick
    python examples/by_feature/document_packing.py --corpus pubmed.jsonl data.window=1024 optim.steps=500
    python examples/by_feature/document_packing.py data.packing=stream     # GPT-style, for comparison
"""
import argparse
import json

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="demo", help="corpus file or folder ('demo' = bundled demo corpus)")
    p.add_argument("--reader", default="smollm2-135m", help="causal LM to train (alias, folder or HF name)")
    p.add_argument("--retriever", default=None, help="unused (accepted like the other examples)")
    p.add_argument("--out", default="runs/example-packing", help="run folder")
    p.add_argument("--quick", action="store_true", help="a few steps on short windows (smoke run)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = p.parse_args()

    from jmlr.train.stages import PretrainConfig, run_pretrain
    from jmlr.train.stages.common import load_stage_config

    quick = ["optim.steps=3", "optim.batch_size=2", "data.window=64", "optim.warmup_steps=0"] if args.quick else []
    cfg = load_stage_config(PretrainConfig, None, [f"data.corpus={args.corpus}", f"model.model={args.reader}",
                                                   f"output_dir={args.out}", "data.packing=document", *quick,
                                                   *args.overrides])
    summary = run_pretrain(cfg, progress=not args.quick)
    print(json.dumps({k: summary[k] for k in ("packing", "steps", "tokens", "loss_units", "first_loss", "final_loss",
                                               "model_dir")}, default=float))
