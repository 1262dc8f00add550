"""Refresh under a compute budget against full refresh, in ONE training run, at equal encode budget.

One retriever training loop (InfoNCE with a hard negative from the served index, like benchmarks/refresh.py)
moves the doc tower. Its questions come from a "hot" part of the corpus (``--hot``, 20% by default: in a real
run the training questions touch a small part of a large corpus). Several refreshers follow the SAME doc
tower side by side and get the SAME searched pools (``report_searched``); the loop mines its negatives from
the budgeted one:

* ``budget``        a partial refresh every R steps re-encoding ``--budget`` of the corpus (pools, their
                    neighbours, a random slice), no full refresh after the initial build;
* ``full_equal``    a full refresh every R / budget steps: the same number of passages encoded;
* ``full_every_r``  a full refresh every R steps (1 / budget times the encodes; the ceiling).

Every R steps (before and after the refreshes due then) the benchmark re-encodes the whole corpus with the
current doc tower (the fresh truth) and measures, for every refresher:

* ``query_recall@10``: top-10 of held-out hot questions in the served index against their top-10 in the fresh
  index (what retrieval quality the loop actually gets);
* ``probe_recall@10`` / ``probe_cosine``: the existing staleness probe (a random slice of the corpus).

``recovered_per_1k_encoded`` = the recall gained across its refreshes (after minus before) per 1,000 passages
re-encoded; ``mean_query_recall`` averages the measurements over the run. A result where the budget does not
help is reported as it is.

Full mode only (``--joint``): two JointTrainer runs on the demo data (the bundled minilm + smollm2-135m) at equal
encode budget, ``refresh.every = R / budget`` (full) against ``refresh.every = R, refresh.budget = budget``;
their test accuracy and Recall@5 and the passages each encoded.

    python benchmarks/refresh_budget.py --quick --out runs/bench/refresh_budget      # ~5 minutes (MiniLM)
    python benchmarks/refresh_budget.py --out runs/bench/refresh_budget --joint      # hours on 2 cores

Writes OUT/refresh_budget.json (``rows`` per policy, ``curve`` per measurement, ``joint`` when run),
OUT/refresh_budget.md and OUT/refresh_budget.png.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import machine_info, markdown_table, new_figure, write_json, write_markdown  # noqa: E402

POLICIES = ("budget", "full_equal", "full_every_r")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true", help="1,500 passages, max_length 32, 40 steps")
    p.add_argument("--encoder", default="minilm")
    p.add_argument("--passages", type=int, default=None, help="corpus size (default 10000; quick 1500)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per passage (default 128; quick 32)")
    p.add_argument("--every", type=int, default=None, help="R: steps between budgeted refreshes (default 25; quick 10)")
    p.add_argument("--budget", type=float, default=0.25, help="fraction re-encoded per budgeted refresh (0.25)")
    p.add_argument("--rounds", type=int, default=None, help="full_equal periods to run (default 3; quick 1)")
    p.add_argument("--hot", type=float, default=0.2, help="share of the corpus the training questions come from")
    p.add_argument("--pool", type=int, default=8, help="K': candidates searched (and reported) per question")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--eval-queries", type=int, default=200)
    p.add_argument("--joint", action="store_true", help="also the two joint runs (full mode; hours)")
    p.add_argument("--joint-steps", type=int, default=200)
    p.add_argument("--joint-eval", type=int, default=None, help="test questions evaluated (default: all)")
    p.add_argument("--reader", default="smollm2-135m")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.passages = args.passages or (1500 if args.quick else 10_000)
    args.max_length = args.max_length or (32 if args.quick else 128)
    args.every = args.every or (10 if args.quick else 25)
    args.rounds = args.rounds or (1 if args.quick else 3)
    if not 0 < args.budget < 1:
        p.error("--budget must be a fraction in (0, 1)")
    args.full_period = max(args.every, int(round(args.every / args.budget)))
    args.steps = args.full_period * args.rounds
    return args


def corpus(args):
    from benchmarks.refresh import load_passages

    ids, texts, source = load_passages(args.passages, args.seed)
    return list(range(len(ids))), texts, source


def measure(refreshers, dual, texts, eval_q, probe_rows, k: int = 10) -> dict:
    """Fresh full encode (the truth), then query recall / probe recall / probe cosine of each served index."""
    import torch

    from jmlr.index.refresh import probe_agreement
    from jmlr.kernels.topk import topk

    fresh = dual.encode_docs(texts, batch_size=64, progress=False)  # (N, d)
    q = dual.encode_queries(eval_q, batch_size=64, progress=False)  # (Q, d)
    want = topk(q, fresh, k)[1]  # (Q, k)
    out = {}
    for name, r in refreshers.items():
        served = r.served_embeddings if r.served_embeddings is not None else r.index.embeddings.float()
        got = topk(q, served, k)[1]
        hit = (got.unsqueeze(2) == want.unsqueeze(1)).any(2).float().mean().item()
        cos, prec = probe_agreement(served[torch.from_numpy(probe_rows)], fresh[torch.from_numpy(probe_rows)], k)
        out[name] = {"query_recall": hit, "probe_recall": prec, "probe_cosine": cos}
    return out


def retriever_run(args) -> dict:
    import numpy as np
    import torch

    from jmlr.index import AsyncRefresher
    from jmlr.retriever import DualEncoder
    from jmlr.retriever.contrastive import info_nce

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    ids, texts, source = corpus(args)
    n = len(texts)
    hot = np.sort(rng.choice(n, size=max(args.batch * 2, int(args.hot * n)), replace=False))
    eval_rows = rng.choice(hot, size=min(args.eval_queries, len(hot)), replace=False)
    # training questions: the first 12 words of a hot passage; held-out questions: words 12-24 of hot passages
    train_q = {int(i): " ".join(texts[i].split()[:12]) for i in hot}
    eval_q = [" ".join(texts[i].split()[12:24]) or texts[i] for i in eval_rows]
    dual = DualEncoder.from_pretrained(args.encoder, max_length=args.max_length)
    common = dict(policy="never", index_type="exact", batch_size=64, probe_size=256, seed=args.seed)
    t0 = time.perf_counter()
    first = AsyncRefresher(dual, (ids, texts), budget=args.budget, full_every=0, **common)
    refreshers = {"budget": first}
    for name in ("full_equal", "full_every_r"):  # the same initial embeddings: adopt a copy of the first index
        r = AsyncRefresher(dual, (ids, texts), index=_clone_index(first.index), **common)
        refreshers[name] = r
    initial_s = time.perf_counter() - t0
    probe_rows = first.probe_rows
    opt = torch.optim.AdamW([p for p in dual.parameters() if p.requires_grad], lr=args.lr)
    encoded = {k: 0 for k in refreshers}
    gain = {k: {"query": 0.0, "probe": 0.0} for k in refreshers}
    curve = [{"step": 0, "phase": "start", **{k: v for k, v in measure(refreshers, dual, texts, eval_q,
                                                                       probe_rows).items()}}]
    print(f"[refresh_budget] {n} passages ({source}), hot {len(hot)}, R={args.every}, budget {args.budget}, "
          f"full_equal every {args.full_period} steps, {args.steps} steps; initial {initial_s:.1f}s",
          file=sys.stderr, flush=True)
    losses = []
    for step in range(1, args.steps + 1):
        batch = rng.choice(hot, size=args.batch, replace=False)
        q = dual.embed_queries([train_q[int(i)] for i in batch])  # (B, d)
        _, cand = first.index.search(q.detach().float(), args.pool)  # (B, K') from the budgeted index
        for r in refreshers.values():
            r.report_searched(cand)  # the same pools for every policy
        negs = [next((int(c) for c in row if int(c) != int(i)), int(row[-1])) for row, i in zip(cand, batch)]
        d = dual.embed_docs([texts[i] for i in batch] + [texts[c] for c in negs])  # (2B, d)
        loss = info_nce(q.float(), d.float(), 0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        due = [k for k, period in (("budget", args.every), ("full_equal", args.full_period),
                                   ("full_every_r", args.every)) if step % period == 0]
        if step % args.every == 0:
            before = measure(refreshers, dual, texts, eval_q, probe_rows)
            for k in due:
                rec = refreshers[k].refresh_now(blocking=True, step=step)
                encoded[k] += rec.encoded
            after = measure(refreshers, dual, texts, eval_q, probe_rows)
            for k in due:
                gain[k]["query"] += after[k]["query_recall"] - before[k]["query_recall"]
                gain[k]["probe"] += after[k]["probe_recall"] - before[k]["probe_recall"]
            curve.append({"step": step, "phase": "before", **before})
            curve.append({"step": step, "phase": "after", **after})
            print(f"  step {step}: loss {np.mean(losses[-args.every:]):.3f}; query recall before/after "
                  + ", ".join(f"{k} {before[k]['query_recall']:.3f}/{after[k]['query_recall']:.3f}"
                              for k in refreshers), file=sys.stderr, flush=True)
    rows = []
    for k, r in refreshers.items():
        pts = [c[k] for c in curve]
        rows.append({"policy": k, "encoded": encoded[k], "encoded_vs_full_equal": encoded[k] / max(1, encoded["full_equal"]),
                     "refreshes": len(r.records),
                     "mean_query_recall": float(np.mean([p["query_recall"] for p in pts])),
                     "mean_probe_recall": float(np.mean([p["probe_recall"] for p in pts])),
                     "final_query_recall": pts[-1]["query_recall"], "final_probe_recall": pts[-1]["probe_recall"],
                     "query_recall_recovered_per_1k_encoded": 1000 * gain[k]["query"] / max(1, encoded[k]),
                     "probe_recall_recovered_per_1k_encoded": 1000 * gain[k]["probe"] / max(1, encoded[k]),
                     "selected": [rec.selected for rec in r.records if rec.scope == "partial"][-1:] or None})
        r.close()
    return {"rows": rows, "curve": curve, "losses": losses,
            "config": {"passages": n, "source": source, "hot": len(hot), "every": args.every, "budget": args.budget,
                       "full_period": args.full_period, "steps": args.steps, "pool": args.pool, "batch": args.batch,
                       "encoder": args.encoder, "max_length": args.max_length, "eval_queries": len(eval_q),
                       "initial_s": initial_s}}


def _clone_index(index):
    from jmlr.index import ExactIndex

    c = ExactIndex(index.dim)
    c.add(index.ids, index.embeddings.float().clone())
    c.version = index.version
    return c


def joint_runs(args, out: Path, overrides=(), reader_max_length: int | None = None) -> list[dict]:
    """Two joint runs on the demo data at equal encode budget (full mode); ``overrides`` go to both configs."""
    from jmlr.config import load_config
    from jmlr.data.demo import demo_corpus, demo_qa
    from jmlr.reader import Reader
    from jmlr.retriever import DualEncoder
    from jmlr.train.trainer import JointTrainer

    res = []
    arms = {"full_equal": [f"refresh.every={args.full_period}"],
            "budget": [f"refresh.every={args.every}", f"refresh.budget={args.budget}", "refresh.full_every=0"]}
    for name, ov in arms.items():
        cfg = load_config(None, [f"output_dir={out / ('joint-' + name)}", f"optim.steps={args.joint_steps}",
                                 "eval_every=0", f"seed={args.seed}", "refresh.asynchronous=false", *overrides] + ov)
        t0 = time.perf_counter()
        rkw = {"max_length": reader_max_length} if reader_max_length else {}
        trainer = JointTrainer(cfg, DualEncoder.from_pretrained(args.encoder),
                               Reader.from_pretrained(args.reader, **rkw), demo_corpus(), demo_qa("train"), None,
                               progress=False)
        trainer.train()
        ev = trainer.evaluate(demo_qa("test")[: args.joint_eval], split="test")
        st = trainer.retrieval.stats()
        trainer.retrieval.close()
        res.append({"arm": name, "accuracy": ev.get("accuracy"), "recall_at_5": ev.get("recall@5"),
                    "encoded": st.get("encoded_total"), "refreshes": st.get("refreshes"),
                    "wall_s": time.perf_counter() - t0, "overrides": ov})
        print(f"[joint {name}] accuracy {ev.get('accuracy')} recall@5 {ev.get('recall@5')} encoded "
              f"{st.get('encoded_total')}", file=sys.stderr, flush=True)
    return res


def plot(path: Path, result: dict) -> None:
    fig, (ax1, ax2) = new_figure(1, 2, figsize=(12, 4.5))
    curve = result["curve"]
    for k in POLICIES:
        xs = [c["step"] for c in curve]
        ax1.plot(xs, [c[k]["query_recall"] for c in curve], marker=".", label=k)
        ax2.plot(xs, [c[k]["probe_recall"] for c in curve], marker=".", label=k)
    ax1.set_title("hot-question Recall@10: served vs fresh index")
    ax2.set_title("probe Recall@10 (random corpus slice)")
    for ax in (ax1, ax2):
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import transformers

    transformers.logging.set_verbosity_error()
    t0 = time.perf_counter()
    result = retriever_run(args)
    if args.joint:
        result["joint"] = joint_runs(args, out)
    result.update(quick=args.quick, total_s=time.perf_counter() - t0, machine=machine_info())
    write_json(out / "refresh_budget.json", result)
    cols = ["policy", "encoded", "encoded_vs_full_equal", "refreshes", "mean_query_recall", "final_query_recall",
            "query_recall_recovered_per_1k_encoded", "mean_probe_recall", "probe_recall_recovered_per_1k_encoded"]
    c = result["config"]
    notes = (f"{c['passages']} passages ({c['source']}), {args.encoder} max_length {c['max_length']}; training "
             f"questions from {c['hot']} hot passages, K'={c['pool']}, batch {c['batch']}, {c['steps']} steps; budget "
             f"{c['budget']} every {c['every']} steps vs full every {c['full_period']} (equal encodes) and every "
             f"{c['every']} (ceiling). Measured every {c['every']} steps against a fresh full encode.")
    if "joint" in result:
        notes += "\n\nJoint runs (demo data):\n\n" + markdown_table(result["joint"])
    write_markdown(out / "refresh_budget.md", "Refresh under a compute budget vs full refresh", result["rows"], cols,
                   notes)
    plot(out / "refresh_budget.png", result)
    print(markdown_table(result["rows"], cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
