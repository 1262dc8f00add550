"""``jmlr train --config FILE.yaml [key=value ...]``."""
from __future__ import annotations

import argparse
import json


def add_cli(subparsers) -> None:
    from jmlr.config import describe

    p = subparsers.add_parser(
        "train", help="joint retriever+reader training from a YAML config",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  jmlr train --config jmlr/configs/demo_full.yaml\n"
               "  jmlr train --config jmlr/configs/demo_full.yaml optim.steps=50 loss.name=jmlr_rank\n"
               "  jmlr train data.format=medqa data.train=train.jsonl data.dev=dev.jsonl data.corpus=corpus.jsonl\n"
               "  jmlr train --config run.yaml resume=latest\n\n"
               "config keys (key  default  help):\n" + describe())
    p.add_argument("--config", default=None, help="YAML config file (defaults are used when omitted)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.steps=100")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd)


def _cmd(args) -> int:
    from jmlr.config import load_config
    from jmlr.train.trainer import JointTrainer

    cfg = load_config(args.config, args.overrides)
    trainer = JointTrainer.from_config(cfg, progress=not args.no_progress)
    summary = trainer.train()
    if trainer.is_main:
        last = summary["evals"][-1] if summary["evals"] else {}
        print(json.dumps({"steps": summary["steps"], "final_loss": summary["final_loss"],
                          "dev": {k: last.get(k) for k in ("accuracy", "recall@5")},
                          "output_dir": cfg.output_dir}, default=float))
    return 0
