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

# The settings of each mode live in one file, jmlr/configs/demo_{quick,full}.yaml (the demo reads nothing else).
# Each mode also has a wall-clock budget, measured from the start of the command: 3 minutes (quick) and 15 (full)
# on a 2-core CPU. The files give the most the demo does (steps, eval questions); on a slower host the training
# loop stops early (optim.max_time_s), after the demo has measured what the rest costs there (loading, the index,
# the evaluations, the final index rebuild) and kept that time back.
BUDGET_S = {"quick": 180.0, "full": 900.0}
RESERVE_S = 20.0  # kept back for the final checkpoint (the 135M reader in fp32: ~14 s on a 2-core host), summary, plot
MARGIN = 0.03  # and 3 % of the budget: the forecasts (the eval and rebuild measured before) vary on a loaded host


def config_path(mode: str) -> Path:
    """The YAML file of demo mode ``quick`` or ``full`` (shipped with the package)."""
    if mode not in BUDGET_S:
        raise ValueError(f"demo mode must be one of {sorted(BUDGET_S)}, got {mode!r}")
    return Path(__file__).resolve().parent / "configs" / f"demo_{mode}.yaml"


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="joint training on the bundled demo data with the bundled models, offline",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  jmlr demo --quick\n  jmlr demo --out runs/demo\n"
               "  jmlr demo --quick loss.name=jmlr_rank reader.lora=true\n")
    p.add_argument("--quick", action="store_true", help="a short run (3 minutes on 2 CPU cores)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="wall-clock budget in seconds (default 180 with --quick, 900 without); the training loop "
                        "stops early to keep it. 0: run the preset's steps however long they take")
    p.add_argument("--out", default=None, help="run folder (default runs/demo or runs/demo-quick)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (see `jmlr train --help`)")
    p.set_defaults(func=_cmd)


def _cmd(args) -> int:
    out = args.out or ("runs/demo-quick" if args.quick else "runs/demo")
    run_demo(quick=args.quick, out=out, overrides=args.overrides, budget_s=args.budget_s)
    return 0


def run_demo(quick: bool = False, out: str = "runs/demo", overrides: list[str] | None = None,
             budget_s: float | None = None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from jmlr.config import load_config
    from jmlr.train.trainer import JointTrainer, load_data

    t0 = time.perf_counter() - _process_age_s()  # the budget counts from the command's start, imports included
    mode = "quick" if quick else "full"
    budget_s = BUDGET_S[mode] if budget_s is None else float(budget_s)
    if budget_s < 0:
        raise ValueError(f"--budget-s must be >= 0 (0 = no budget), got {budget_s:g}")
    cfg = load_config(config_path(mode), [f"output_dir={out}"] + list(overrides or []))
    out_dir = Path(cfg.output_dir)  # overwrite=true: a re-run replaces the last demo's outputs in this folder
    print(f"jmlr demo ({mode}): retriever={cfg.retriever.model} reader={cfg.reader.model} loss={cfg.loss.name} "
          f"steps<={cfg.optim.steps} K={cfg.index.top_k} budget={_fmt_budget(budget_s)} -> {out_dir}", flush=True)
    trainer = JointTrainer.from_config(cfg)
    _, _, test, _ = load_data(cfg)
    trainer.dev_data = []  # the demo reports the held-out test split only (below)
    trainer.setup()
    print(f"precision: {trainer.precision}", flush=True)
    closed = trainer.evaluate(test, split="test", retrieval=False)
    t_rag = time.perf_counter()
    frozen = trainer.evaluate(test, split="test")
    plan = _plan_training(trainer, budget_s, spent=time.perf_counter() - t0, eval_s=time.perf_counter() - t_rag)
    if plan["train_budget_s"] is not None:
        print(f"budget {budget_s:.0f} s: {plan['spent_s']:.0f} s spent, {plan['reserved_s']:.0f} s kept for the "
              f"final evaluation{' and index rebuild' if plan['rebuild_s'] else ''}; training for at most "
              f"{plan['train_budget_s']:.0f} s (<= {cfg.optim.steps} steps)", flush=True)
    t_train = time.perf_counter()
    run = trainer.train()
    train_s = time.perf_counter() - t_train
    joint = trainer.evaluate(test, split="test")
    wall = time.perf_counter() - t0
    plan.update(steps_done=run["steps"], steps_planned=cfg.optim.steps,
                stopped_by_budget=(run.get("time_budget") or {}).get("stopped_at_step") is not None,
                within_budget=(wall <= budget_s) if budget_s else None)

    def pick(r):  # closed-book puts no passages in the prompt: its retrieval figures are not its own
        ret = r.get("retrieval", True)
        return {"accuracy": r["accuracy"], "recall_at_1": r.get("recall@1") if ret else None,
                "recall_at_5": r.get("recall@5") if ret else None, "unparsed": r.get("unparsed", 0), "n": r["n"]}

    summary = {
        "closed_book": pick(closed), "frozen_rag": pick(frozen), "joint": pick(joint),
        "wall_s": wall, "train_s": train_s, "quick": quick, "budget": plan, "n_test": len(test), "precision": run["precision"],
        "losses": run["losses"], "costs": run["costs"], "config": json.loads(json.dumps(_cfg_dict(cfg))),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    _plot(trainer, out_dir / "curves.png")
    print(_table(summary))
    b = summary["budget"]
    print(f"joint training: {b['steps_done']} of {b['steps_planned']} steps in {train_s:.0f} s"
          + (f" (stopped by the {budget_s:.0f} s budget)" if b["stopped_by_budget"] else ""))
    print(f"wrote {out_dir}/summary.json, metrics.jsonl, curves.png  (wall {wall:.0f} s)")
    return summary


def _process_age_s() -> float:
    """Seconds since this process started (Linux ``/proc``; 0 where that is not available)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return 0.0


def _fmt_budget(budget_s: float) -> str:
    return f"{budget_s:.0f}s" if budget_s else "none"


def _plan_training(trainer, budget_s: float, spent: float, eval_s: float) -> dict:
    """How long the training loop may run so that the demo ends within ``budget_s``: what is left after the time
    already ``spent``, less one more RAG evaluation (it costs what the frozen one did: ``eval_s``), the final index
    rebuild when the doc tower trains (one full corpus encode, as measured or cached), :data:`RESERVE_S` and
    :data:`MARGIN` of the budget."""
    refresher = trainer.retrieval.refresher
    rebuild = float(refresher.full_encode_s or 0.0) if refresher.enabled else 0.0
    plan = {"budget_s": budget_s or None, "spent_s": spent, "eval_s": eval_s, "rebuild_s": rebuild,
            "reserved_s": eval_s + rebuild + RESERVE_S + MARGIN * (budget_s or 0.0), "train_budget_s": None,
            "index_from_cache": bool(refresher.initial_from_cache)}
    if budget_s:
        # at least a sliver: the first step always runs (optim.max_time_s), so a spent budget still trains once
        plan["train_budget_s"] = max(budget_s - spent - plan["reserved_s"], 1e-3)
        trainer.cfg.optim.max_time_s = plan["train_budget_s"]
    return plan


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
