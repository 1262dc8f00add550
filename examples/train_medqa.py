"""Base example: joint retriever + reader training on MedQA-style questions.

    python examples/train_medqa.py --quick                       # bundled demo data and models, offline
    python examples/train_medqa.py --format medqa --train train.jsonl --dev dev.jsonl --test test.jsonl \
        --corpus textbooks.jsonl --out runs/medqa optim.steps=500

Every other script in examples/by_feature/ reuses this one and adds ONE feature.
"""
from __future__ import annotations

import argparse
import json
import sys

QUICK = ["optim.steps=4", "optim.batch_size=2", "index.top_k=2", "data.max_train=16", "data.max_eval=8",
         "eval_every=0", "optim.warmup_steps=1", "reader.max_length=256"]


def build_parser(description: str = __doc__) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", default="jmlr", help="QA format of the files (medqa, amboss, medmcqa, jmlr, ...)")
    p.add_argument("--train", default="demo", help="training questions ('demo' = bundled demo split)")
    p.add_argument("--dev", default="demo")
    p.add_argument("--test", default="demo")
    p.add_argument("--corpus", default="demo", help="corpus file or folder ('demo' = bundled demo corpus)")
    p.add_argument("--retriever", default="minilm", help="retriever encoder (alias, folder or HF name)")
    p.add_argument("--reader", default="smollm2-135m", help="reader causal LM (alias, folder or HF name)")
    p.add_argument("--out", default="runs/example", help="run folder")
    p.add_argument("--quick", action="store_true", help="a few steps on a few questions (smoke run)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    return p


def make_reader(cfg):
    """The Reader named by ``cfg.reader`` (for examples that build their own JointTrainer)."""
    from jmlr import Reader

    return Reader.from_pretrained(cfg.reader.model, template=cfg.reader.template, max_length=cfg.reader.max_length,
                                  target=cfg.reader.target)


def run(args: argparse.Namespace, feature_overrides: list[str] = (), make_trainer=None) -> dict:
    """Train as configured and evaluate on the test split. ``make_trainer(cfg)`` builds the JointTrainer from
    objects of your own (a SentenceTransformer, a datasets.Dataset, ...); default ``JointTrainer.from_config``."""
    from jmlr import JointTrainer
    from jmlr.config import load_config
    from jmlr.train.trainer import load_data

    overrides = [f"data.format={args.format}", f"data.train={args.train}", f"data.dev={args.dev}",
                 f"data.test={args.test}", f"data.corpus={args.corpus}", f"retriever.model={args.retriever}",
                 f"reader.model={args.reader}", f"output_dir={args.out}"]
    overrides += (QUICK if args.quick else []) + list(feature_overrides) + list(args.overrides)
    cfg = load_config(None, overrides)
    trainer = make_trainer(cfg) if make_trainer else JointTrainer.from_config(cfg, progress=not args.quick)
    _, _, test, _ = load_data(cfg)
    summary = trainer.train()
    result = trainer.evaluate(test, split="test")
    if trainer.is_main:
        print(json.dumps({"final_loss": summary["final_loss"], "test_accuracy": result["accuracy"],
                          "test_recall@5": result.get("recall@5"), "index_version": result["index_version"],
                          "output_dir": cfg.output_dir}, default=float))
    return {"summary": summary, "test": result, "trainer": trainer}


if __name__ == "__main__":
    run(build_parser().parse_args())
    sys.exit(0)
