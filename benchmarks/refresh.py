"""Refresh benchmark: how long does a training loop wait for index refreshes, synchronous vs asynchronous?

A loop of retriever training steps (MiniLM, shared towers, so the doc tower changes every step) over a corpus
of >= 5,000 passages: each step encodes a batch of queries, searches the current index for a hard negative,
and takes an InfoNCE step. The index is refreshed every R steps (n refreshes):

* sync:  ``refresher.refresh_now()`` at steps R, 2R, ... -- the loop halts while the corpus is re-encoded.
* async: ``refresher.maybe_refresh(step)`` every step -- snapshot, background re-encode, swap between steps;
  run once per worker kind (a thread, a process).

The loop runs (n + 1) R steps so the last background refresh has R steps to finish; if it has not, the
final wait counts as stall. "Stall" is the time the loop spends inside the refresh calls (measured around
them, so it includes the snapshot copy and the swap). Wall times show the other cost of async on a small
CPU: the background encoder competes with the training step for cores.

Writes OUT/refresh.json, OUT/refresh.md and OUT/refresh.png.

    python benchmarks/refresh.py --quick --out bench/
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import machine_info, new_figure, write_json, write_markdown  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quick", action="store_true", help="short passages and few steps (a few minutes)")
    p.add_argument("--passages", type=int, default=5000, help="corpus size (default 5000)")
    p.add_argument("--every", type=int, default=None, help="refresh every R steps (default 30 quick, 40 full)")
    p.add_argument("--refreshes", type=int, default=2, help="refreshes per run (default 2)")
    p.add_argument("--batch", type=int, default=None, help="questions per step (default 8 quick, 16 full)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per passage (default 32 quick, 128 full)")
    p.add_argument("--encoder", default="minilm", help="doc/query encoder (default minilm)")
    p.add_argument("--workers", default="thread,process", help="async worker kinds to run (default thread,process)")
    p.add_argument("--worker-threads", type=int, default=1, help="intra-op threads of the background worker")
    p.add_argument("--main-threads", type=int, default=None,
                   help="intra-op threads of the training loop (default: torch's default)")
    p.add_argument("--encode-batch", type=int, default=64, help="refresh encoding batch size")
    p.add_argument("--precision", default="auto", help="encoding/training autocast: auto (bf16 only where the CPU "
                   "runs it natively), fp32, bf16, fp16 (default auto)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.every = args.every or (30 if args.quick else 40)
    args.batch = args.batch or (8 if args.quick else 16)
    args.max_length = args.max_length or (32 if args.quick else 128)
    if args.passages < 5000:
        print(f"note: --passages {args.passages} is below the 5,000 the benchmark is specified for", file=sys.stderr)
    if args.every < 1 or args.refreshes < 1:
        p.error("--every and --refreshes must be >= 1")
    return args


def load_passages(n: int, seed: int):
    """Real passages (PubMedQA sections + MedMCQA explanations) when ../shared/data exists, topped up with
    synthetic ones to ``n``. Returns (ids, texts, source)."""
    ids, texts, sources = [], [], []
    if DATA.is_dir():
        from jmlr.data import load_qa_corpus

        for fmt, rel in (("pubmedqa", "pubmedqa/ori_pqal.json"), ("medmcqa", "medmcqa/dev.json")):
            if (DATA / rel).is_file():
                corpus = load_qa_corpus(fmt, DATA / rel)
                ids += list(corpus.ids)
                texts += corpus.texts()
                sources.append(f"{rel} ({len(corpus)})")
    if len(ids) < n:
        from jmlr.retriever.testing import WORDS

        rng = random.Random(seed)
        k = n - len(ids)
        ids += [f"synthetic-{i}" for i in range(k)]
        texts += [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 90))) for _ in range(k)]
        sources.append(f"synthetic ({k})")
    return ids[:n], texts[:n], ", ".join(sources)


class Capped:
    """A refresh policy that fires like ``inner`` but at most ``n`` times (a late refresh still fires)."""

    def __init__(self, inner, n: int):
        self.inner, self.n, self.started = inner, n, 0

    def due(self, step, refresher):
        if self.started >= self.n:
            return None
        reason = self.inner.due(step, refresher)
        self.started += bool(reason)
        return reason


def amp_of(args):
    """The run's resolved precision (see jmlr.core.precision)."""
    from jmlr.core.precision import resolve_precision

    return resolve_precision(args.precision, "cpu", key="--precision")


def run(mode: str, args, ids, texts) -> dict:
    """One training loop with refreshes; ``mode`` is 'sync' or the async worker kind."""
    import numpy as np
    import torch

    from jmlr.index import AsyncRefresher
    from jmlr.index.refresh import EveryN
    from jmlr.retriever import DualEncoder
    from jmlr.retriever.contrastive import info_nce

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    R, n_ref = args.every, args.refreshes
    steps = (n_ref + 1) * R
    dual = DualEncoder.from_pretrained(args.encoder, max_length=args.max_length)
    queries = [" ".join(t.split()[:12]) for t in texts]
    pos = {c: j for j, c in enumerate(ids)}
    policy = "never" if mode == "sync" else Capped(EveryN(R), n_ref)
    amp = amp_of(args)
    t0 = time.perf_counter()
    refresher = AsyncRefresher(dual, (ids, texts), policy=policy, worker="thread" if mode == "sync" else mode,
                               worker_threads=args.worker_threads, batch_size=args.encode_batch,
                               autocast_dtype=amp.dtype, probe_size=256, index_type="exact", seed=args.seed)
    initial_s = time.perf_counter() - t0
    opt = torch.optim.AdamW([p for p in dual.parameters() if p.requires_grad], lr=2e-5)
    wait_s, step_s, in_flight = [], [], []
    print(f"[{mode}] {steps} steps, refresh every {R} ({n_ref} refreshes), initial index {initial_s:.1f}s",
          file=sys.stderr)
    load_before = os.getloadavg()[0]
    t_loop = time.perf_counter()
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        if mode == "sync":
            if step % R == 0 and step <= n_ref * R:
                refresher.refresh_now(step=step)
        else:
            refresher.maybe_refresh(step)
        t1 = time.perf_counter()
        wait_s.append(t1 - t0)
        in_flight.append(refresher.in_flight)
        batch = rng.choice(len(texts), size=args.batch, replace=False)
        with amp.autocast(dual.query_model):
            q = dual.embed_queries([queries[i] for i in batch])  # (B, d)
            _, cand = refresher.index.search(q.detach().float(), 4)  # (B, 4) from the current index
            negs = [next((c for c in row if c != ids[i]), row[-1]) for row, i in zip(cand, batch)]
            d = dual.embed_docs([texts[i] for i in batch] + [texts[pos[c]] for c in negs])  # (2B, d)
            loss = info_nce(q.float(), d.float(), 0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step_s.append(time.perf_counter() - t1)
        if step % max(1, R // 2) == 0:
            print(f"[{mode}] step {step}/{steps} loss {loss.item():.3f} index v{refresher.version}"
                  f"{' (refreshing)' if refresher.in_flight else ''}", file=sys.stderr)
    final_wait = 0.0
    if refresher.in_flight:
        t0 = time.perf_counter()
        refresher.wait()
        final_wait = time.perf_counter() - t0
    wall = time.perf_counter() - t_loop
    st = refresher.stats()
    refresher.close()
    busy = [s for s, f in zip(step_s, in_flight) if f]
    idle = [s for s, f in zip(step_s, in_flight) if not f]
    return {
        "mode": mode, "steps": steps, "every": R, "refreshes": st["refreshes"],
        "loadavg_1min_before_after": [load_before, os.getloadavg()[0]],
        "stall_s": float(sum(wait_s) + final_wait), "final_wait_s": final_wait,
        "refresher_stall_s": st["stall_s_total"], "wall_s": wall, "initial_index_s": initial_s,
        "step_s_mean": float(np.mean(step_s)),
        "step_s_mean_while_refreshing": float(np.mean(busy)) if busy else None,
        "step_s_mean_otherwise": float(np.mean(idle)) if idle else None,
        "encode_s": st["encode_s"], "ready_s": st["ready_s"], "records": st["records"],
        "wait_s_per_step": wait_s, "step_s_per_step": step_s, "in_flight_per_step": in_flight,
    }


def plot(path: Path, runs: list[dict]) -> None:
    import numpy as np

    fig, (ax1, ax2) = new_figure(1, 2, figsize=(12, 4.5))
    for r in runs:
        per = np.array(r["wait_s_per_step"]) + np.array(r["step_s_per_step"])
        ax1.plot(np.arange(1, len(per) + 1), np.cumsum(per), label=r["mode"])
    ax1.set_xlabel("training step")
    ax1.set_ylabel("elapsed seconds")
    ax1.set_title("loop time (sync halts at each refresh)")
    ax1.legend()
    names = [r["mode"] for r in runs]
    stall = [max(r["stall_s"], 1e-4) for r in runs]
    ax2.bar(names, stall, color=["tab:red"] + ["tab:green"] * (len(runs) - 1))
    ax2.set_yscale("log")
    ax2.set_ylabel("seconds the loop waited (log)")
    ax2.set_title("stall per run")
    for i, s in enumerate(stall):
        ax2.text(i, s, f"{s:.3g}s", ha="center", va="bottom")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    if args.main_threads:
        torch.set_num_threads(args.main_threads)
    ids, texts, source = load_passages(args.passages, args.seed)
    workers = [w.strip() for w in args.workers.split(",") if w.strip()]
    for w in workers:
        if w not in ("thread", "process"):
            raise SystemExit(f"--workers: unknown worker kind {w!r} (expected thread, process)")
    runs = [run("sync", args, ids, texts)] + [run(w, args, ids, texts) for w in workers]
    sync, head = runs[0], runs[1]
    result = {
        "sync_stall_s": sync["stall_s"], "async_stall_s": head["stall_s"],
        "stall_ratio": head["stall_s"] / sync["stall_s"],
        "sync_wall_s": sync["wall_s"], "async_wall_s": head["wall_s"],
        "refreshes": sync["refreshes"], "async_refreshes": head["refreshes"],
        "async_worker": head["mode"],
        "variants": {r["mode"]: {k: v for k, v in r.items() if not k.endswith("_per_step")} for r in runs},
        "config": {"passages": len(ids), "source": source, "model": args.encoder, "max_length": args.max_length,
                   "batch": args.batch, "every": args.every, "refreshes": args.refreshes,
                   "steps": (args.refreshes + 1) * args.every, "worker_threads": args.worker_threads,
                   "main_threads": torch.get_num_threads(), "precision": amp_of(args).as_dict(),
                   "quick": args.quick},
        "machine": machine_info(),
        "per_step": {r["mode"]: {"wait_s": r["wait_s_per_step"], "step_s": r["step_s_per_step"],
                                 "in_flight": r["in_flight_per_step"]} for r in runs},
    }
    write_json(out / "refresh.json", result)
    rows = [{"run": r["mode"], "refreshes": r["refreshes"], "stall_s": r["stall_s"],
             "stall_vs_sync": r["stall_s"] / sync["stall_s"], "wall_s": r["wall_s"], "step_s": r["step_s_mean"],
             "step_s_while_refreshing": r["step_s_mean_while_refreshing"],
             "encode_s_per_refresh": float(sum(r["encode_s"]) / max(1, len(r["encode_s"])))} for r in runs]
    notes = (f"{len(ids)} passages ({source}), {args.encoder} max_length {args.max_length}, batch {args.batch}, "
             f"refresh every {args.every} steps, {(args.refreshes + 1) * args.every} steps per run; precision {amp_of(args)}; "
             f"background worker {args.worker_threads} thread(s), training thread {torch.get_num_threads()}.\n"
             f"stall = time inside the refresh calls (sync: the whole re-encode; async: snapshot + swap, plus any "
             f"final wait). stall_ratio (async {head['mode']} / sync) = {result['stall_ratio']:.4f}.\n"
             "1-minute load average before/after each run (other processes share the CPU): "
             + ", ".join(f"{r['mode']} {r['loadavg_1min_before_after'][0]:.1f}/{r['loadavg_1min_before_after'][1]:.1f}"
                         for r in runs) + ".")
    write_markdown(out / "refresh.md", "Index refresh: loop stall, sync vs async", rows, notes=notes)
    plot(out / "refresh.png", runs)
    print(f"stall_ratio {result['stall_ratio']:.4f} (async {head['stall_s']:.3f}s / sync {sync['stall_s']:.1f}s); "
          f"wall sync {sync['wall_s']:.1f}s async {head['wall_s']:.1f}s -> {out / 'refresh.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
