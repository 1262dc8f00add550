"""Joint retriever+reader training against the usual separate routes, with one reader, seed and step budget.

Arms (each starts from the same off-the-shelf reader and retriever):
  (a) sft_closed_book     SFT on the questions, no passages
  (b) pretrain_then_sft   continued pretraining on the corpus (packed windows), then (a)  [separate pretraining]
  (c) frozen_rag_sft      RAG with the frozen off-the-shelf retriever; only the reader trains
  (d) separate_rag_sft    retriever trained separately (contrastive on gold passages), then (c) with it
  (e) joint               retriever and reader trained together in one loop (jmlr)

Every arm gets the same fine-tuning budget (``--steps`` optimizer steps of ``--batch`` questions); (b) and (d)
spend extra time on their separate stage (``--pretrain-steps`` / ``--contrastive-steps``), as the usual route
does. Writes ``OUT/joint_vs_separate.json`` (rows {dataset, arm, accuracy, recall_at_5, wall_s, flops}),
a markdown table and a time-to-accuracy PNG.

    python benchmarks/joint_vs_separate.py --quick --out bench/
    python benchmarks/joint_vs_separate.py --out bench/ --datasets demo,medmcqa
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks._report import machine_info, new_figure, write_json, write_markdown  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
ARMS = ["sft_closed_book", "pretrain_then_sft", "frozen_rag_sft", "separate_rag_sft", "joint"]


def load_dataset(name: str, n_train: int, n_test: int, seed: int = 0):
    """(train, test, corpus) for ``demo`` (bundled) or ``medmcqa`` (questions with explanations; the
    explanations form the corpus and each question's own explanation is its gold passage)."""
    if name == "demo":
        from jmlr.data.demo import demo_corpus, demo_qa

        return demo_qa("train")[:n_train], demo_qa("test")[:n_test], demo_corpus()
    if name == "medmcqa":
        from jmlr.data import load_qa_with_corpus

        f = SHARED / "medmcqa" / "dev.json"
        if not f.is_file():
            return None
        qa, corpus = load_qa_with_corpus("medmcqa", f)
        qa = [q for q in qa if q.gold_passage_ids]
        random.Random(seed).shuffle(qa)
        return qa[n_test:n_test + n_train], qa[:n_test], corpus
    raise ValueError(f"unknown dataset {name!r}: expected demo or medmcqa")


def base_overrides(args, out: Path) -> list[str]:
    return [f"output_dir={out}", f"optim.steps={args.steps}", f"optim.batch_size={args.batch}",
            f"index.top_k={args.k}", "eval_every=0", f"optim.warmup_steps={max(args.steps // 10, 1)}",
            f"reader.lr={args.lr}", f"retriever.lr={args.retriever_lr}", f"refresh.every={args.refresh_every}",
            f"reader.max_length={args.max_length}", f"reader.template={args.template}",
            f"reader.target={args.target}", f"seed={args.seed}", f"optim.precision={args.precision}",
            "loss.name=rag_sequence", "overwrite=true"]


def load_models(args):
    from jmlr.reader import Reader
    from jmlr.retriever import DualEncoder

    return (DualEncoder.from_pretrained(args.retriever),
            Reader.from_pretrained(args.reader, max_length=args.max_length, template=args.template,
                                   target=args.target))


def closed_book_predictions(reader, test, precision: str) -> list:
    """The reader's predicted letter per test question, without passages."""
    import torch

    from jmlr.core.precision import resolve_precision

    preds = []
    with torch.no_grad(), resolve_precision(precision, reader.device).autocast(reader.device):
        for i in range(0, len(test), 8):
            preds += reader.predict(test[i:i + 8], None)
    return preds


def closed_book_accuracy(reader, test, precision: str) -> float:
    from jmlr.eval.mcq import mcq_accuracy

    return mcq_accuracy(closed_book_predictions(reader, test, precision), [ex.answer for ex in test])["accuracy"]


def cap_corpus(corpus, examples, max_corpus: int):
    """At most ``max_corpus`` passages: the examples' gold passages, then distractors up to the cap."""
    if not max_corpus or len(corpus) <= max_corpus:
        return corpus
    gold = sorted({corpus.index_of(g) for q in examples for g in q.gold_passage_ids})
    taken = set(gold)
    rest = [i for i in range(len(corpus)) if i not in taken]
    return corpus.select(sorted(gold + rest[:max(max_corpus - len(gold), 0)]))


def sft_closed_book(args, reader, train, out: Path) -> dict:
    from jmlr.train.stages.sft import SFTConfig, run_sft, sft_examples_from_qa
    from jmlr.config import load_config

    cfg = load_config(None, [f"output_dir={out}", f"seed={args.seed}", f"optim.steps={args.steps}",
                             f"optim.batch_size={args.batch}", f"optim.lr={args.lr}",
                             f"optim.warmup_steps={max(args.steps // 10, 1)}", "optim.schedule=linear",
                             f"optim.precision={args.precision}"], cls=SFTConfig)
    return run_sft(cfg, reader=reader, examples=sft_examples_from_qa(train, reader), progress=not args.quiet)


def pretrain(args, reader, corpus, out: Path) -> dict:
    from jmlr.config import load_config
    from jmlr.train.stages.pretrain import PretrainConfig, run_pretrain

    cfg = load_config(None, [f"output_dir={out}", f"seed={args.seed}", f"optim.steps={args.pretrain_steps}",
                             f"optim.batch_size={args.batch}", f"optim.lr={args.lr}",
                             f"data.window={args.max_length}", f"optim.precision={args.precision}"],
                      cls=PretrainConfig)
    return run_pretrain(cfg, reader=reader, texts=corpus.texts(with_title=True), progress=not args.quiet)


def contrastive(args, retriever, train, corpus) -> dict:
    from jmlr.retriever.contrastive import ContrastiveConfig, ContrastiveExample, ContrastiveTrainer

    exs = [ContrastiveExample(q.question, corpus.texts(with_title=True, start=corpus.index_of(q.gold_passage_ids[0]),
                                                       stop=corpus.index_of(q.gold_passage_ids[0]) + 1)[0])
           for q in train if q.gold_passage_ids]
    bs = min(32, len(exs))
    epochs = max(1, -(-args.contrastive_steps * bs // len(exs)))  # ceil: about --contrastive-steps steps
    cfg = ContrastiveConfig(lr=args.retriever_lr * 2, batch_size=bs, epochs=epochs)
    t0 = time.perf_counter()
    losses = ContrastiveTrainer(retriever, cfg).train(exs, progress=not args.quiet)
    n = sum(p.numel() for p in retriever.parameters())
    toks = len(losses) * cfg.batch_size * 2 * 64  # about 64 tokens per query/passage
    return {"wall_s": time.perf_counter() - t0, "flops_est": 6.0 * n * toks, "steps": len(losses)}


def rag_arm(args, retriever, reader, train, test, corpus, out: Path, frozen: bool,
            curve_points: int = 0, overrides=(), evaluator=None, run_plot: bool = True) -> tuple[dict, dict, float, list]:
    """Train one RAG arm; returns (run summary, final test metrics, training wall s, curve).

    With ``curve_points`` > 0 the test split is also evaluated before the first step and every
    ``steps / curve_points`` steps; the curve is ``[(training wall s, step, accuracy, recall@5)]`` where the
    wall clock excludes every evaluation (their time is subtracted), so it is comparable with the other arms'
    training times. ``overrides``: config ``key=value`` items after the shared ones (the arm's own settings);
    ``evaluator(trainer, examples, split)``: replaces ``trainer.evaluate`` for every evaluation;
    ``run_plot=False`` skips the run folder's curves.png (a study plots its own).
    """
    from jmlr.config import load_config
    from jmlr.train.trainer import JointTrainer

    ov = base_overrides(args, out) + (["retriever.frozen=true", "refresh.every=0"] if frozen else []) + list(overrides)
    if curve_points:
        ov += [f"eval_every={max(args.steps // curve_points, 1)}"]
    cfg = load_config(None, ov)
    trainer = JointTrainer(cfg, retriever, reader, corpus, train, test if curve_points else None,
                           progress=not args.quiet)
    if not run_plot:
        trainer.plot = lambda *a, **kw: None
    curve, t0 = [], time.perf_counter()
    evaluate = trainer.evaluate if evaluator is None else (lambda ex, split="dev", **kw: evaluator(trainer, ex, split))
    if curve_points:

        def timed_evaluate(examples, *a, **kw):  # record each evaluation at the training time spent so far
            t_in = time.perf_counter()
            res = evaluate(examples, *a, **kw)
            curve.append((t_in - t0 - sum(c[4] for c in curve), trainer.step, res["accuracy"],
                          res.get("recall@5"), time.perf_counter() - t_in))
            return res

        trainer.evaluate = timed_evaluate
        trainer.setup()
        trainer.evaluate(test, split="test")  # step 0: the off-the-shelf models with retrieval
    summary = trainer.train()
    wall = time.perf_counter() - t0 - sum(c[4] for c in curve)
    res = trainer.evals[-1] if curve_points else evaluate(test, split="test")
    trainer.retrieval.close()
    curve = [list(c[:4]) for c in curve]
    if curve:  # the final evaluation is the arm's result, at its whole training time (final checkpoint included)
        curve[-1][0] = wall
    return summary, res, wall, curve


def run_dataset(args, name: str, out: Path) -> list[dict]:
    data = load_dataset(name, args.n_train, args.n_test, args.seed)
    if data is None:
        print(f"[{name}] skipped: {SHARED} not found")
        return []
    train, test, corpus = data
    corpus = cap_corpus(corpus, train + test, args.max_corpus)
    print(f"[{name}] train={len(train)} test={len(test)} corpus={len(corpus)}", flush=True)
    rows = []

    def add(arm, acc, recall, wall, flops, extra=None, curve=None):
        curve = curve or [[wall, None, acc, recall]]
        rows.append({"dataset": name, "arm": arm, "accuracy": acc, "recall_at_5": recall, "wall_s": wall,
                     "flops": flops, **(extra or {}), "curve": curve})
        print(f"[{name}] {arm:<18} acc={acc:.3f} R@5={'-' if recall is None else f'{recall:.3f}'} "
              f"wall={wall:.1f}s", flush=True)

    for arm in args.arms:
        gc.collect()
        retriever, reader = load_models(args)
        t0 = time.perf_counter()  # training wall time of the arm (its evaluation excluded)
        if arm == "sft_closed_book":
            s = sft_closed_book(args, reader, train, out / name / arm)
            wall = time.perf_counter() - t0
            add(arm, closed_book_accuracy(reader, test, args.precision), None, wall, s["flops_est"])
        elif arm == "pretrain_then_sft":
            p = pretrain(args, reader, corpus, out / name / arm / "pretrain")
            t_eval = time.perf_counter()
            mid = closed_book_accuracy(reader, test, args.precision)  # after pretraining, before SFT (not timed)
            t_eval = time.perf_counter() - t_eval
            s = sft_closed_book(args, reader, train, out / name / arm / "sft")
            wall = time.perf_counter() - t0 - t_eval
            acc = closed_book_accuracy(reader, test, args.precision)
            add(arm, acc, None, wall, p["flops_est"] + s["flops_est"],
                {"stage_wall_s": {"pretrain": p["wall_s"], "sft": s["wall_s"]}},
                curve=[[p["wall_s"], "pretrained", mid, None], [wall, "sft", acc, None]])
        elif arm in ("frozen_rag_sft", "separate_rag_sft", "joint"):
            extra, flops, wall = {}, 0.0, 0.0
            if arm == "separate_rag_sft":
                c = contrastive(args, retriever, train, corpus)
                extra["stage_wall_s"] = {"contrastive": c["wall_s"]}
                flops, wall = c["flops_est"], c["wall_s"]
            summary, res, train_wall, curve = rag_arm(
                args, retriever, reader, train, test, corpus, out / name / arm, frozen=arm != "joint",
                curve_points=args.curve_points if arm == "joint" else 0)
            flops += summary["costs"]["train_flops_est"]
            add(arm, res["accuracy"], res.get("recall@5"), wall + train_wall, flops, extra,
                curve=[[wall + c[0], *c[1:]] for c in curve] or None)
        else:
            raise ValueError(f"unknown arm {arm!r}: expected one of {ARMS}")
        del retriever, reader
    return rows


def plot(rows: list[dict], path: Path) -> None:
    fig, axes = new_figure(1, max(len({r['dataset'] for r in rows}), 1), figsize=(6 * max(len({r['dataset'] for r in rows}), 1), 4))
    axes = axes if hasattr(axes, "__len__") else [axes]
    for ax, ds in zip(axes, sorted({r["dataset"] for r in rows})):
        for r in [r for r in rows if r["dataset"] == ds]:
            pts = r.get("curve") or [[r["wall_s"], None, r["accuracy"], None]]
            xs, ys = [c[0] for c in pts], [c[2] for c in pts]
            line = ax.plot(xs, ys, marker="o", ms=4 if len(pts) > 1 else 7, lw=1.5)[0]
            ax.annotate(r["arm"], (xs[-1], ys[-1]), textcoords="offset points", xytext=(5, 4), fontsize=8,
                        color=line.get_color())
        ax.set_xlabel("training wall time (s)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"time to accuracy: {ds}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def goal(j: dict, b: dict) -> dict:
    """The issue's goal for one data set: joint (``j``) reaches the accuracy of pretrain-then-SFT (``b``) within
    half of ``b``'s wall time. ``j["curve"]`` holds ``[wall_s, step, accuracy, recall]`` points in time order;
    the time to ``b``'s accuracy is the first point at or above it (None if none is)."""
    reach = next((c[0] for c in j["curve"] if c[2] >= b["accuracy"]), None)
    return {"b_accuracy": b["accuracy"], "b_wall_s": b["wall_s"],
            "joint_accuracy_minus_b": j["accuracy"] - b["accuracy"],
            "joint_wall_over_b": j["wall_s"] / b["wall_s"] if b["wall_s"] else None,
            "joint_time_to_b_accuracy_s": reach,
            "joint_time_to_b_over_b_wall": reach / b["wall_s"] if reach is not None and b["wall_s"] else None,
            "met": reach is not None and reach <= 0.5 * b["wall_s"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true", help="a few steps per arm (a smoke run)")
    p.add_argument("--datasets", default="demo,medmcqa")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--reader", default="smollm2-135m")
    p.add_argument("--retriever", default="minilm")
    p.add_argument("--template", default="chat", help="reader prompt template (jmlr, chat)")
    p.add_argument("--target", default="option_text",
                   help="reader answer target: option_text (cloze, as `jmlr demo`), letter or letter_text")
    p.add_argument("--steps", type=int, default=100, help="fine-tuning optimizer steps of every arm")
    p.add_argument("--pretrain-steps", type=int, default=100, help="continued-pretraining steps of arm (b)")
    p.add_argument("--contrastive-steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--n-train", type=int, default=600)
    p.add_argument("--n-test", type=int, default=150)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--retriever-lr", type=float, default=3e-5)
    p.add_argument("--refresh-every", type=int, default=20)
    p.add_argument("--max-length", type=int, default=384)
    p.add_argument("--curve-points", type=int, default=4,
                   help="evaluate the joint arm on the test split at step 0 and this many times more (the "
                        "time-to-accuracy curve; evaluation time is not counted as training time); 0 = off")
    p.add_argument("--max-corpus", type=int, default=0, help="cap the corpus (gold passages kept); 0 = all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="auto", help="autocast precision of every arm: auto (bf16 only where the "
                   "hardware runs it natively), fp32, bf16, fp16")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.pretrain_steps, args.contrastive_steps = 3, 3, 2
        args.batch, args.k, args.n_train, args.n_test, args.refresh_every = 2, 2, 16, 8, 2
        args.max_corpus = args.max_corpus or 64
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    for a in args.arms:
        if a not in ARMS:
            p.error(f"unknown arm {a!r}: expected some of {', '.join(ARMS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = []
    for ds in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        rows += run_dataset(args, ds, out)
    payload = {"rows": rows, "quick": args.quick, "wall_s": time.perf_counter() - t0, "machine": machine_info(),
               "settings": {k: v for k, v in vars(args).items() if k != "out"}}
    # the goal: joint reaches the accuracy of (b) in <= 0.5x its wall time
    for ds in {r["dataset"] for r in rows}:
        by = {r["arm"]: r for r in rows if r["dataset"] == ds}
        if "joint" in by and "pretrain_then_sft" in by:
            payload.setdefault("goal", {})[ds] = goal(by["joint"], by["pretrain_then_sft"])
    write_json(out / "joint_vs_separate.json", payload)
    write_markdown(out / "joint_vs_separate.md", "Joint vs separate training", rows,
                   ["dataset", "arm", "accuracy", "recall_at_5", "wall_s", "flops"])
    if rows:
        plot(rows, out / "joint_vs_separate.png")
    print(f"wrote {out}/joint_vs_separate.json (.md, .png) in {payload['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
