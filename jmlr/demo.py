"""``jmlr demo``: the main job. Joint retriever+reader training on the bundled demo data, offline.

It evaluates the reader on the held-out test split closed-book and with the off-the-shelf (frozen) retriever,
trains both jointly, evaluates again, and writes ``summary.json``, ``metrics.jsonl`` and ``curves.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# Quick mode fits in ~3 minutes on 2 CPU cores; full mode in ~15.
PRESETS = {
    "quick": ["optim.steps=40", "optim.batch_size=2", "index.top_k=3", "data.max_eval=40", "eval_every=0",
              "optim.warmup_steps=4"],
    "full": ["optim.steps=100", "optim.batch_size=4", "index.top_k=3", "eval_every=50", "data.max_eval=150",
             "optim.warmup_steps=10"],
}
DEFAULTS = ["retriever.model=minilm", "reader.model=smollm2-135m", "reader.template=chat", "reader.target=option_text",
            "loss.name=rag_sequence",
            "retriever.lr=3e-5", "reader.lr=3e-5", "refresh.every=20", "data.max_train=600", "overwrite=true"]


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="joint training on the bundled demo data with the bundled models, offline",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  jmlr demo --quick\n  jmlr demo --out runs/demo\n"
               "  jmlr demo --quick loss.name=jmlr_rank reader.lora=true\n")
    p.add_argument("--quick", action="store_true", help="a short run (about 3 minutes on 2 CPU cores)")
    p.add_argument("--out", default=None, help="run folder (default runs/demo or runs/demo-quick)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (see `jmlr train --help`)")
    p.set_defaults(func=_cmd)


def _cmd(args) -> int:
    out = args.out or ("runs/demo-quick" if args.quick else "runs/demo")
    run_demo(quick=args.quick, out=out, overrides=args.overrides)
    return 0


def run_demo(quick: bool = False, out: str = "runs/demo", overrides: list[str] | None = None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from jmlr.config import load_config
    from jmlr.train.trainer import JointTrainer, load_data

    t0 = time.perf_counter()
    cfg = load_config(None, DEFAULTS + PRESETS["quick" if quick else "full"] + [f"output_dir={out}"]
                      + list(overrides or []))
    out_dir = Path(cfg.output_dir)  # overwrite=true: a re-run replaces the last demo's outputs in this folder
    print(f"jmlr demo ({'quick' if quick else 'full'}): retriever={cfg.retriever.model} reader={cfg.reader.model} "
          f"loss={cfg.loss.name} steps={cfg.optim.steps} K={cfg.index.top_k} -> {out_dir}", flush=True)
    trainer = JointTrainer.from_config(cfg)
    _, _, test, _ = load_data(cfg)
    if quick:
        trainer.dev_data = []  # quick mode: only the held-out test evaluations below
    trainer.setup()
    print(f"precision: {trainer.precision}", flush=True)
    closed = trainer.evaluate(test, split="test", retrieval=False)
    frozen = trainer.evaluate(test, split="test")
    t_train = time.perf_counter()
    run = trainer.train()
    train_s = time.perf_counter() - t_train
    joint = trainer.evaluate(test, split="test")
    wall = time.perf_counter() - t0

    def pick(r):  # closed-book puts no passages in the prompt: its retrieval figures are not its own
        ret = r.get("retrieval", True)
        return {"accuracy": r["accuracy"], "recall_at_1": r.get("recall@1") if ret else None,
                "recall_at_5": r.get("recall@5") if ret else None, "unparsed": r.get("unparsed", 0), "n": r["n"]}

    summary = {
        "closed_book": pick(closed), "frozen_rag": pick(frozen), "joint": pick(joint),
        "wall_s": wall, "train_s": train_s, "quick": quick, "n_test": len(test), "precision": run["precision"],
        "losses": run["losses"], "costs": run["costs"], "config": json.loads(json.dumps(_cfg_dict(cfg))),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    _plot(trainer, out_dir / "curves.png")
    print(_table(summary))
    print(f"wrote {out_dir}/summary.json, metrics.jsonl, curves.png  (wall {wall:.0f} s)")
    return summary


def _cfg_dict(cfg):
    from jmlr.config import to_dict
    return to_dict(cfg)


def _fmt(v):
    return "-" if v is None else f"{v:.3f}"


def _table(s: dict) -> str:
    rows = [("closed-book", s["closed_book"]), ("RAG, frozen retriever (before)", s["frozen_rag"]),
            ("joint (after)", s["joint"])]
    lines = [f"\nHeld-out demo test split (n={s['n_test']}):",
             f"| {'setting':<32} | accuracy | Recall@1 | Recall@5 |", f"|{'-' * 34}|----------|----------|----------|"]
    for name, r in rows:
        lines.append(f"| {name:<32} | {_fmt(r['accuracy']):>8} | {_fmt(r['recall_at_1']):>8} | "
                     f"{_fmt(r['recall_at_5']):>8} |")
    return "\n".join(lines)


def _plot(trainer, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps = [h["step"] for h in trainer.history]
    losses = [h["loss"] for h in trainer.history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(steps, losses, alpha=0.35, label="loss")
    if len(losses) >= 5:
        w = max(len(losses) // 10, 3)
        sm = np.convolve(losses, np.ones(w) / w, mode="valid")
        axes[0].plot(steps[w - 1:], sm, label=f"moving mean ({w})")
    axes[0].set_xlabel("step")
    axes[0].set_title(f"joint loss ({trainer.cfg.loss.name})")
    axes[0].legend()
    ev = [e for e in trainer.evals if e.get("split") == "test"]
    names = ["frozen (before)", "joint (after)"]
    ev = [e for e in ev if e.get("retrieval")][-2:]
    x = np.arange(len(ev))
    axes[1].bar(x - 0.2, [e["accuracy"] for e in ev], 0.4, label="accuracy")
    axes[1].bar(x + 0.2, [e.get("recall@5") or 0 for e in ev], 0.4, label="Recall@5")
    axes[1].set_xticks(x, names[:len(ev)])
    axes[1].set_ylim(0, 1)
    axes[1].set_title("held-out test")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    add_cli(sub)
    a = parser.parse_args(["demo"] + sys.argv[1:])
    sys.exit(a.func(a))
