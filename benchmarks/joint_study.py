"""The joint-training study (issue 19): nine arms over several seeds, with intervals and paired tests.

Arms (one reader, retriever, data split, seed set and fine-tuning step budget for all):
  a_sft_closed_book        SFT on the questions, no passages
  b_pretrain_then_sft      continued pretraining on the corpus, then SFT
  c_frozen_rag             RAG SFT with the frozen off-the-shelf retriever
  d_contrastive_then_rag   retriever trained contrastively on the gold passages, then (c) (needs passage labels)
  e_joint_rag_sequence     joint training, rag_sequence loss
  f_joint_jmlr_rank        joint, jmlr_rank loss, m = --k candidates sampled from the top --rank-k (as JMLR)
  g_joint_pdist            joint, Atlas perplexity distillation (pdist) for the retriever, mean NLL for the reader
  h_jmlr_as_released       JMLR's released recipe: each question's top --pool-k searched once by the initial
                           retriever (index.fixed_candidates), never refreshed, rank loss over m sampled of them
  i_joint_query_side       joint, query tower only (retriever.train_docs=false): the index never goes stale

Every arm is evaluated with the same --k passages per test question. The test questions are fixed (split seed
--split-seed); the training seeds (--seeds) change data order, sampling and the rest. For each dataset it writes
``OUT/joint_study_<dataset>.json`` (``arms``: arm, seeds, accuracy_mean, accuracy_ci95, recall_at_5_mean, ...;
``comparisons``: a, b, diff, ci95, p_value, ...), a markdown table and a time-to-accuracy PNG with 95% bands.

Datasets: ``demo`` (bundled, offline), ``medmcqa`` (questions with explanations; the explanations are the
corpus and each question's own is its gold passage) and ``medmcqa_other`` (the corpus is the explanations of
*other* questions only: no training or test question meets its own explanation, checked by id and by text;
Recall@k there counts passages of the question's own subject and topic). The MedMCQA sets come from
``../shared/data`` and are skipped when it is absent.

``--sweep`` runs a dev-only grid (retriever lr x temperature x K) for one arm and writes
``OUT/joint_study_sweep_<dataset>.json``; the dev split is carved out of the training pool, the test split is
dropped before the sweep starts. ``--settings`` that JSON applies its choice to a study run. ``--append`` keeps
the runs already in the output JSON and runs only the missing arm/seed pairs (a study split over sessions, or one
process per arm); the JSON is rewritten after every run.

    python benchmarks/joint_study.py --quick --out bench/
    python benchmarks/joint_study.py --sweep --datasets medmcqa --out bench/
    python benchmarks/joint_study.py --datasets medmcqa,medmcqa_other --settings bench/joint_study_sweep_medmcqa.json \\
        --out docs/results/
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import hashlib
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from benchmarks import joint_vs_separate as jvs  # noqa: E402
from benchmarks._report import (fmt_interval, fmt_p, machine_info, new_figure, seed_summary, write_json,  # noqa: E402
                                write_markdown)
from benchmarks._stats import mcnemar_exact, paired_bootstrap  # noqa: E402

ARMS = ["a_sft_closed_book", "b_pretrain_then_sft", "c_frozen_rag", "d_contrastive_then_rag",
        "e_joint_rag_sequence", "f_joint_jmlr_rank", "g_joint_pdist", "h_jmlr_as_released", "i_joint_query_side"]
CLOSED_BOOK = ("a_sft_closed_book", "b_pretrain_then_sft")
COMPARISONS = [("e_joint_rag_sequence", "c_frozen_rag"), ("f_joint_jmlr_rank", "c_frozen_rag"),
               ("g_joint_pdist", "c_frozen_rag"), ("f_joint_jmlr_rank", "h_jmlr_as_released"),
               ("e_joint_rag_sequence", "i_joint_query_side"), ("i_joint_query_side", "c_frozen_rag")]
"""The issue's key comparisons: (e)/(f)/(g) against (c), (f) against (h), (e) against (i); and (i) against (c),
whether training the query tower alone beats leaving the retriever frozen."""
DATASETS = ("demo", "medmcqa", "medmcqa_other")


# ----------------------------------------------------------------------------------------------- data

def _passage_title(ex) -> str:
    """The title the MedMCQA loader gives an explanation ('subject: topic'), from the question's metadata."""
    m = ex.metadata or {}
    subject, topic = m.get("subject") or "", m.get("topic") or ""
    return f"{subject}: {topic}" if subject and topic else ""


def other_explanations(train, test, corpus) -> tuple[list, list, object, dict, dict]:
    """The harder setting: drop every training and test question's own explanation from the corpus.

    Removed: the passages the questions name as gold, and any passage whose normalised text equals one of
    them (MedMCQA repeats some explanations word for word). Returns (train, test, corpus, related, check):
    the questions without gold ids, the reduced corpus, ``related[question id]`` = ids of passages with the
    question's own subject and topic (what Recall@k counts here; questions without a topic have none), and
    the contamination check, which raises if any question still meets its own explanation.
    """
    from jmlr.data import contamination
    from jmlr.data.text import normalize_for_dedup

    own = {g for q in train + test for g in q.gold_passage_ids}
    own_text = {normalize_for_dedup(corpus[corpus.index_of(g)].text) for g in own}
    keep = [i for i, p in enumerate(corpus) if p.id not in own and normalize_for_dedup(p.text) not in own_text]
    other = corpus.select(keep)
    ids, texts = set(other.ids), {normalize_for_dedup(p.text) for p in other}
    met = [q.id for q in train + test
           if any(g in ids or normalize_for_dedup(corpus[corpus.index_of(g)].text) in texts for g in q.gold_passage_ids)]
    if met:
        raise RuntimeError(f"contamination check failed: {len(met)} questions meet their own explanation "
                           f"(first: {met[0]})")
    by_title = defaultdict(list)
    for p in other:
        by_title[p.title].append(p.id)
    related = {q.id: by_title.get(_passage_title(q), []) if _passage_title(q) else [] for q in train + test}
    strip = [dataclasses.replace(q, gold_passage_ids=[]) for q in train + test]
    overlap = contamination(test, other, n=8, progress=False)
    check = {"questions_meeting_own_explanation": 0, "removed_passages": len(corpus) - len(other),
             "removed_duplicate_texts": len(corpus) - len(other) - len(own),
             "test_with_related": sum(bool(related[q.id]) for q in test),
             "test_question_8gram_overlap_rate": overlap.rate}
    return strip[:len(train)], strip[len(train):], other, related, check


def load_study_data(name: str, args):
    """(train, test, corpus, related or None, info), or None (said on stdout) when the data set is absent."""
    base = "medmcqa" if name == "medmcqa_other" else name
    data = jvs.load_dataset(base, args.n_train, args.n_test, args.split_seed)
    if data is None:
        print(f"[{name}] skipped: {jvs.SHARED} not found", flush=True)
        return None
    train, test, corpus = data
    info, related = {}, None
    if name == "medmcqa_other":
        train, test, corpus, related, info = other_explanations(train, test, corpus)
    corpus = jvs.cap_corpus(corpus, train + test, args.max_corpus)
    if related is not None:  # keep only related passages still in the (capped) corpus
        keep = set(corpus.ids)
        related = {k: [p for p in v if p in keep] for k, v in related.items()}
    elif name != "demo":
        from jmlr.data import contamination

        info["test_question_8gram_overlap_rate"] = contamination(test, corpus, n=8, progress=False).rate
    info.update(n_train=len(train), n_test=len(test), corpus=len(corpus))
    return train, test, corpus, related, info


def related_recall(ranked: list, examples: list, related: dict, k: int) -> float | None:
    """Share of the questions with a related passage that have one in their top ``k`` (None if none has)."""
    hits = [any(r in set(related[ex.id]) for r in rank[:k]) for rank, ex in zip(ranked, examples) if related[ex.id]]
    return float(np.mean(hits)) if hits else None


# ----------------------------------------------------------------------------------------------- arms

def arm_overrides(arm: str, args) -> list[str]:
    """The config keys that make a RAG arm what it is (after joint_vs_separate.base_overrides)."""
    m = f'loss.options={{"num_samples": {max(args.k, 2)}}}'
    common = [f"retriever.temperature={args.temperature}"]
    return common + {
        "c_frozen_rag": [],
        "d_contrastive_then_rag": [],
        "e_joint_rag_sequence": ["loss.name=rag_sequence"],
        "f_joint_jmlr_rank": ["loss.name=jmlr_rank", f"index.top_k={args.rank_k}", f"index.sample_m={args.k}", m],
        "g_joint_pdist": ["loss.name=pdist", 'loss.options={"reader": "mean"}'],
        "h_jmlr_as_released": ["loss.name=jmlr_rank", "index.fixed_candidates=true", "refresh.every=0",
                               f"index.top_k={args.pool_k}", f"index.sample_m={args.k}", m],
        "i_joint_query_side": ["loss.name=rag_sequence", "retriever.train_docs=false", "refresh.every=0"],
    }[arm]


def make_evaluator(args, related):
    """Evaluation with per-question predictions (for the paired tests), always with the top ``--k`` passages."""
    def evaluate(trainer, examples, split):
        from jmlr.train.trainer import evaluate_joint

        t0 = time.perf_counter()
        res = evaluate_joint(trainer.retriever, trainer.reader, trainer.retrieval, trainer.doc_texts, trainer.corpus,
                             examples, top_k=args.k, precision=trainer.precision, progress=False,
                             return_predictions=True)
        if related is not None:
            res["recall@5"] = related_recall(res["ranked"], examples, related, 5)
        res.update(split=split, step=trainer.step, index_version=trainer.retrieval.version)
        trainer.costs.eval_s += time.perf_counter() - t0
        trainer.evals.append(res)
        return res

    return evaluate


_MODELS: dict = {}


def fresh_models(args):
    """Copies of the off-the-shelf (retriever, reader), loaded from disk once per process (every run starts
    from the same weights; a deep copy is much cheaper than a reload)."""
    key = (args.retriever, args.reader, args.max_length, args.template, args.target)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = jvs.load_models(args)
    pair = _MODELS[key]
    memo = {id(m.tokenizer): m.tokenizer for m in pair if getattr(m, "tokenizer", None) is not None}
    return copy.deepcopy(pair, memo)  # the tokenizers (never trained) are shared, the weights copied


def run_arm(arm: str, args, train, test, corpus, related, out: Path) -> dict:
    """One arm, one seed: accuracy, Recall@5, training wall s, FLOPs, curve and per-question correctness."""
    retriever, reader = fresh_models(args)
    t0 = time.perf_counter()
    step_s = None
    if arm in CLOSED_BOOK:
        curve, flops = [], 0.0
        if arm == "b_pretrain_then_sft":
            p = jvs.pretrain(args, reader, corpus, out / "pretrain")
            flops += p["flops_est"]
            t_eval = time.perf_counter()
            mid = jvs.closed_book_accuracy(reader, test, args.precision)  # after pretraining (not timed)
            t0 += time.perf_counter() - t_eval
            curve.append([p["wall_s"], "pretrained", mid, None])
        s = jvs.sft_closed_book(args, reader, train, out / "sft")
        wall = time.perf_counter() - t0
        preds = jvs.closed_book_predictions(reader, test, args.precision)
        correct = [int(p == ex.answer) for p, ex in zip(preds, test)]
        acc, recall, flops = float(np.mean(correct)), None, flops + s["flops_est"]
        curve.append([wall, "sft", acc, None])
    else:
        extra_wall, flops = 0.0, 0.0
        if arm == "d_contrastive_then_rag":
            c = jvs.contrastive(args, retriever, train, corpus)
            extra_wall, flops = c["wall_s"], c["flops_est"]
        summary, res, train_wall, curve = jvs.rag_arm(
            args, retriever, reader, train, test, corpus, out, frozen=arm in ("c_frozen_rag", "d_contrastive_then_rag"),
            curve_points=args.curve_points, overrides=arm_overrides(arm, args), evaluator=make_evaluator(args, related),
            run_plot=False)
        flops += summary["costs"]["train_flops_est"]
        step_s = summary["costs"]["step_time_mean_s"]
        wall = extra_wall + train_wall
        curve = [[extra_wall + c[0], *c[1:]] for c in curve] or [[wall, args.steps, res["accuracy"], res.get("recall@5")]]
        correct = [int(p == ex.answer) for p, ex in zip(res["predictions"], test)]
        acc, recall = float(np.mean(correct)), res.get("recall@5")
    del retriever, reader
    gc.collect()
    return {"seed": args.seed, "accuracy": acc, "recall_at_5": recall, "wall_s": wall, "flops": flops,
            "step_s": step_s, "curve": curve, "correct": correct}


def _peak_rss_gb() -> float:
    """This process's peak resident memory (a leak across runs shows as growth from line to line)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def summarise_arm(arm: str, runs: list[dict], question_ids: list[str]) -> dict:
    acc, rec = seed_summary([r["accuracy"] for r in runs]), seed_summary([r["recall_at_5"] for r in runs])
    wall, flops = seed_summary([r["wall_s"] for r in runs]), seed_summary([r["flops"] for r in runs])
    steps = [r["step_s"] for r in runs if r["step_s"] is not None]
    return {"arm": arm, "seeds": [r["seed"] for r in runs], "accuracy_mean": acc["mean"], "accuracy_ci95": acc["ci95"],
            "recall_at_5_mean": rec["mean"], "recall_at_5_ci95": rec["ci95"], "wall_s_mean": wall["mean"],
            "wall_s_ci95": wall["ci95"], "flops_mean": flops["mean"],
            "step_s_mean": float(np.mean(steps)) if steps else None, "question_ids": question_ids, "runs": runs}


def compare(a: dict, b: dict, args) -> dict:
    """Paired tests of arm ``a`` against ``b`` over the same test questions and the seeds both ran."""
    if a["question_ids"] != b["question_ids"]:
        raise ValueError(f"{a['arm']} and {b['arm']} were scored on different questions")
    seeds = sorted(set(a["seeds"]) & set(b["seeds"]))
    ca = np.array([next(r["correct"] for r in a["runs"] if r["seed"] == s) for s in seeds])  # (S, n)
    cb = np.array([next(r["correct"] for r in b["runs"] if r["seed"] == s) for s in seeds])
    boot = paired_bootstrap(ca, cb, n_boot=args.n_boot, seed=args.stats_seed)
    return {"a": a["arm"], "b": b["arm"], "diff": boot["diff"], "ci95": boot["ci95"], "p_value": boot["p_value"],
            "test": "paired bootstrap over questions (each question's accuracy averaged over the seeds)",
            "n_boot": boot["n_boot"], "n_questions": boot["n"], "seeds": seeds,
            "mcnemar_p_per_seed": [mcnemar_exact(x, y)["p_value"] for x, y in zip(ca, cb)],
            "mcnemar_p_pooled": mcnemar_exact(ca.ravel(), cb.ravel())["p_value"]}


def mean_curve(runs: list[dict]) -> list[dict]:
    """Per curve point over the seeds: mean training time, mean accuracy and its 95% t interval."""
    n = min(len(r["curve"]) for r in runs)
    out = []
    for i in range(n):
        acc = seed_summary([r["curve"][i][2] for r in runs])
        out.append({"point": runs[0]["curve"][i][1], "wall_s": float(np.mean([r["curve"][i][0] for r in runs])),
                    "accuracy_mean": acc["mean"], "accuracy_ci95": acc["ci95"]})
    return out


# ----------------------------------------------------------------------------------------------- study

def run_study(args, name: str, out: Path) -> dict | None:
    data = load_study_data(name, args)
    if data is None:
        return None
    train, test, corpus, related, info = data
    arms = [a for a in args.arms if not (a == "d_contrastive_then_rag" and not any(q.gold_passage_ids for q in train))]
    skipped = sorted(set(args.arms) - set(arms))
    print(f"[{name}] train={len(train)} test={len(test)} corpus={len(corpus)} arms={len(arms)} seeds={args.seeds}"
          + (f" (skipped {skipped}: no passage labels)" if skipped else ""), flush=True)
    qids = [q.id for q in test]
    sha = hashlib.sha1("\n".join(qids).encode()).hexdigest()
    runs_by = {arm: {} for arm in ARMS}  # arm -> seed -> run
    if args.append:
        for arm, seeds in previous_runs(out / f"joint_study_{name}.json", sha, args).items():
            runs_by[arm].update(seeds)
    todo = [(arm, seed) for arm in arms for seed in args.seeds if seed not in runs_by[arm]]
    def collect() -> dict:  # the study so far: written after every run, so a killed session keeps its runs
        results = [summarise_arm(arm, [runs_by[arm][s] for s in sorted(runs_by[arm])], qids)
                   for arm in ARMS if runs_by[arm]]
        by = {r["arm"]: r for r in results}
        comparisons = [compare(by[x], by[y], args) for x, y in COMPARISONS if x in by and y in by]
        for r in results:
            r["curve_mean"] = mean_curve(r["runs"])
        payload = {"dataset": name, "data": info, "recall": "topic" if related is not None else "gold",
                   "arms": results, "comparisons": comparisons, "quick": args.quick, "machine": machine_info(),
                   "settings": {k: v for k, v in vars(args).items() if k != "out"},
                   "test_ids_sha1": sha}
        if "b_pretrain_then_sft" in by:  # time for each joint arm to reach (b)'s mean accuracy, on its mean curve
            b = by["b_pretrain_then_sft"]
            payload["time_to_b_accuracy_s"] = {
                r["arm"]: next((c["wall_s"] for c in r["curve_mean"] if c["accuracy_mean"] >= b["accuracy_mean"]), None)
                for r in results if r["arm"] not in CLOSED_BOOK}
            payload["b_wall_s_mean"] = b["wall_s_mean"]
        return payload

    total, done, t_start = len(todo), 0, time.perf_counter()
    for arm, seed in todo:
        a = copy.copy(args)
        a.seed = seed
        r = run_arm(arm, a, train, test, corpus, related, out / name / arm / f"seed-{seed}")
        runs_by[arm][seed] = r
        done += 1
        el = time.perf_counter() - t_start
        rec = "-" if r["recall_at_5"] is None else f"{r['recall_at_5']:.3f}"
        print(f"[{name}] ({done}/{total}) {arm:<24} seed {seed}: acc={r['accuracy']:.3f} R@5={rec} "
              f"wall={r['wall_s']:.1f}s elapsed={el:.0f}s eta={el / done * (total - done):.0f}s "
              f"peak_rss={_peak_rss_gb():.1f}GB", flush=True)
        write_json(out / f"joint_study_{name}.json", collect())
    payload = collect()
    write_json(out / f"joint_study_{name}.json", payload)
    write_report(payload, out)
    return payload


SAME_SETTINGS = ("steps", "pretrain_steps", "contrastive_steps", "batch", "k", "rank_k", "pool_k", "temperature",
                 "n_train", "n_test", "split_seed", "reader", "retriever", "template", "target", "lr", "retriever_lr",
                 "refresh_every", "max_length", "curve_points", "max_corpus", "precision")


def previous_runs(path: Path, sha: str, args) -> dict:
    """``--append``: the runs an earlier invocation wrote to ``path`` (same test questions and settings)."""
    import json

    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    if old.get("test_ids_sha1") != sha:
        raise SystemExit(f"--append: {path} was scored on other test questions; use another --out")
    diff = [k for k in SAME_SETTINGS if old["settings"].get(k) != getattr(args, k)]
    if diff:
        raise SystemExit(f"--append: {path} has other settings ({', '.join(diff)}); use another --out")
    return {a["arm"]: {r["seed"]: r for r in a["runs"]} for a in old["arms"]}


def write_report(payload: dict, out: Path) -> None:
    name = payload["dataset"]
    rows = [{"arm": r["arm"], "seeds": len(r["seeds"]), "accuracy": fmt_interval(r["accuracy_mean"], r["accuracy_ci95"]),
             "recall@5": fmt_interval(r["recall_at_5_mean"], r["recall_at_5_ci95"]),
             "wall_s": fmt_interval(r["wall_s_mean"], r["wall_s_ci95"], 1), "step_s": r["step_s_mean"],
             "flops": r["flops_mean"]} for r in payload["arms"]]
    comp = [{"a": c["a"], "b": c["b"], "diff": f"{c['diff']:+.3f}", "ci95": f"[{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]",
             "p (bootstrap)": fmt_p(c["p_value"]), "p (McNemar, pooled)": fmt_p(c["mcnemar_p_pooled"])}
            for c in payload["comparisons"]]
    from benchmarks._report import markdown_table

    notes = (f"Mean ± 95% t-interval half-width over seeds. Recall@5 counts {payload['recall']} passages. "
             f"Data: {payload['data']}.\n\n## Paired comparisons (same test questions)\n\n" + markdown_table(comp))
    write_markdown(out / f"joint_study_{name}.md", f"Joint-training study: {name}", rows,
                   ["arm", "seeds", "accuracy", "recall@5", "wall_s", "step_s", "flops"], notes=notes)
    plot(payload, out / f"joint_study_{name}.png")


def plot(payload: dict, path: Path) -> None:
    fig, ax = new_figure(1, 1, figsize=(8, 5))
    for r in payload["arms"]:
        pts = r["curve_mean"]
        xs, ys = np.array([p["wall_s"] for p in pts]), np.array([p["accuracy_mean"] for p in pts])
        line = ax.plot(xs, ys, marker="o", ms=4 if len(pts) > 1 else 7, lw=1.5, label=r["arm"])[0]
        if all(p["accuracy_ci95"] is not None for p in pts):
            lo, hi = np.array([p["accuracy_ci95"][0] for p in pts]), np.array([p["accuracy_ci95"][1] for p in pts])
            if len(pts) > 1:
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
            else:
                ax.errorbar(xs, ys, yerr=[ys - lo, hi - ys], color=line.get_color(), capsize=3, lw=1)
    ax.set_xlabel("training wall time (s, mean over seeds)")
    ax.set_ylabel("test accuracy (mean, 95% band)")
    ax.set_title(f"time to accuracy: {payload['dataset']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ----------------------------------------------------------------------------------------------- sweep

def run_sweep(args, name: str, out: Path) -> dict | None:
    """Dev-only grid for one arm; the test split is dropped before anything trains."""
    data = load_study_data(name, args)
    if data is None:
        return None
    pool, test, corpus, related, info = data
    del test  # never looked at: the choice is made on dev alone
    dev, train = pool[:args.n_dev], pool[args.n_dev:]
    grid = [(lr, t, k) for lr in args.sweep_retriever_lr for t in args.sweep_temperature for k in args.sweep_k]
    rows = []
    for i, (lr, t, k) in enumerate(grid, 1):
        a = copy.copy(args)
        a.seed, a.retriever_lr, a.temperature, a.k = args.seeds[0], lr, t, k
        a.curve_points = 0
        r = run_arm(args.sweep_arm, a, train, dev, corpus, related, out / name / "sweep" / f"{i:02d}")
        rows.append({"retriever_lr": lr, "temperature": t, "k": k, "dev_accuracy": r["accuracy"],
                     "dev_recall_at_5": r["recall_at_5"], "wall_s": r["wall_s"]})
        rec = "-" if r["recall_at_5"] is None else f"{r['recall_at_5']:.3f}"
        print(f"[{name}] sweep ({i}/{len(grid)}) lr={lr:g} tau={t:g} K={k}: dev acc={r['accuracy']:.3f} R@5={rec}",
              flush=True)
    best = max(rows, key=lambda r: (r["dev_accuracy"], r["dev_recall_at_5"] or 0.0, -r["wall_s"]))
    payload = {"dataset": name, "arm": args.sweep_arm, "split": "dev (carved out of the training pool)",
               "n_train": len(train), "n_dev": len(dev), "dev_ids": [q.id for q in dev], "grid": rows,
               "best": {k: best[k] for k in ("retriever_lr", "temperature", "k")}, "quick": args.quick,
               "machine": machine_info()}
    write_json(out / f"joint_study_sweep_{name}.json", payload)
    write_markdown(out / f"joint_study_sweep_{name}.md", f"Dev sweep ({args.sweep_arm}): {name}", rows,
                   notes=f"Chosen on dev only: {payload['best']}.")
    return payload


# ----------------------------------------------------------------------------------------------- main

def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true", help="a few steps per arm, 2 seeds, capped data (a smoke run)")
    p.add_argument("--datasets", default="demo,medmcqa,medmcqa_other", help=f"some of {', '.join(DATASETS)}")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--seeds", default="0,1,2", help="training seeds of every arm (>= 2 for an interval)")
    p.add_argument("--split-seed", type=int, default=0, help="the train/test split (the same for every seed)")
    p.add_argument("--reader", default="smollm2-135m")
    p.add_argument("--retriever", default="minilm")
    p.add_argument("--template", default="chat")
    p.add_argument("--target", default="option_text")
    p.add_argument("--steps", type=int, default=100, help="fine-tuning optimizer steps of every arm")
    p.add_argument("--pretrain-steps", type=int, default=100)
    p.add_argument("--contrastive-steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--k", type=int, default=3, help="passages per question given to the reader (train and test)")
    p.add_argument("--rank-k", type=int, default=8, help="arm (f): candidates retrieved, of which --k are sampled")
    p.add_argument("--pool-k", type=int, default=20, help="arm (h): the fixed candidate pool per question")
    p.add_argument("--temperature", type=float, default=0.05, help="retrieval temperature (retriever.temperature)")
    p.add_argument("--n-train", type=int, default=600)
    p.add_argument("--n-test", type=int, default=150)
    p.add_argument("--n-dev", type=int, default=100, help="--sweep: dev questions taken from the training pool")
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--retriever-lr", type=float, default=3e-5)
    p.add_argument("--refresh-every", type=int, default=20)
    p.add_argument("--max-length", type=int, default=384)
    p.add_argument("--curve-points", type=int, default=2, help="test evaluations per RAG arm after step 0 (the "
                   "time-to-accuracy curve; evaluation time is not training time)")
    p.add_argument("--max-corpus", type=int, default=0)
    p.add_argument("--precision", default="auto")
    p.add_argument("--n-boot", type=int, default=10_000)
    p.add_argument("--stats-seed", type=int, default=0)
    p.add_argument("--sweep", action="store_true", help="run the dev-only sweep instead of the study")
    p.add_argument("--sweep-arm", default="e_joint_rag_sequence")
    p.add_argument("--sweep-retriever-lr", default="3e-5,1e-4,3e-4")
    p.add_argument("--sweep-temperature", default="0.02,0.05,0.1")
    p.add_argument("--sweep-k", default="3,5")
    p.add_argument("--settings", help="a joint_study_sweep_*.json: use its dev choice (retriever lr, temperature, K)")
    p.add_argument("--append", action="store_true", help="keep the runs already in OUT/joint_study_<dataset>.json "
                   "(same test questions and settings) and run only the missing arm/seed pairs: a study split over "
                   "several sessions")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.quick:  # small values for what the command line left at its default
        quick = {"steps": 2, "pretrain_steps": 2, "contrastive_steps": 2, "batch": 2, "k": 2, "rank_k": 4, "pool_k": 6,
                 "n_train": 12, "n_test": 8, "n_dev": 4, "refresh_every": 1, "curve_points": 1, "max_corpus": 48,
                 "n_boot": 500, "seeds": "0,1", "sweep_retriever_lr": "3e-5,3e-4", "sweep_temperature": "0.05",
                 "sweep_k": "2"}
        given = {a.split("=")[0][2:].replace("-", "_") for a in (sys.argv[1:] if argv is None else argv)
                 if a.startswith("--")}
        for key, value in quick.items():
            if key not in given:
                setattr(args, key, value)
    args.seeds = _ints(args.seeds)
    args.seed = args.seeds[0]
    args.sweep_retriever_lr, args.sweep_temperature = _floats(args.sweep_retriever_lr), _floats(args.sweep_temperature)
    args.sweep_k = _ints(args.sweep_k)
    if args.settings:
        import json

        best = json.loads(Path(args.settings).read_text())["best"]
        args.retriever_lr, args.temperature, args.k = best["retriever_lr"], best["temperature"], best["k"]
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    for a in args.arms + [args.sweep_arm]:
        if a not in ARMS:
            p.error(f"unknown arm {a!r}: expected some of {', '.join(ARMS)}")
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    for d in args.datasets:
        if d not in DATASETS:
            p.error(f"unknown dataset {d!r}: expected some of {', '.join(DATASETS)}")
    if args.k < 2:
        p.error("--k must be >= 2 (the rank loss needs a pair)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for ds in args.datasets:
        (run_sweep if args.sweep else run_study)(args, ds, out)
    print(f"wrote {out}/joint_study{'_sweep' if args.sweep else ''}_*.json (.md, .png) in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
