"""Retrieval on real medical QA: MiniLM (dense, exact index) vs BM25, Recall@1/5/20, MRR@10, nDCG@10.

* PubMedQA PQA-L (``pubmedqa/ori_pqal.json``): the 1,000 abstracts split into their CONTEXTS sections form the
  corpus; each question's gold is every section of its own abstract (Recall@k counts a hit when any of them
  is in the top k; ``gold_recall@k`` is the fraction of them found).
* MedMCQA dev with explanations (``medmcqa/dev.json``, the 2,206 questions with ``exp``): the explanations form
  the corpus; each question's gold is its own explanation. Queries are the question alone, and again the
  question followed by its four options.

No training: an off-the-shelf MiniLM and BM25 (bm25s, English stopwords, PyStemmer stemming when installed).
Reads ``../shared/data`` relative to the repository root and exits cleanly (writing a "skipped" JSON) when it
is absent. Doc embeddings are cached in OUT/cache (resumable). Writes OUT/retrieval_real.{json,md,png}.

    python benchmarks/retrieval_real.py --out bench/
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import machine_info, new_figure, write_json, write_markdown  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
KS = (1, 5, 20)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--data", default=str(DATA), help="folder holding pubmedqa/ and medmcqa/ (default ../shared/data)")
    p.add_argument("--encoder", default="minilm", help="dense encoder (default minilm)")
    p.add_argument("--max-length", type=int, default=256, help="tokens per passage for the encoder (default 256)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=None, help="score at most this many questions per set (quick look)")
    p.add_argument("--quick", action="store_true", help="same as --limit 200")
    args = p.parse_args(argv)
    if args.quick and args.limit is None:
        args.limit = 200
    return args


def datasets(root: Path):
    """[(name, corpus, [(query variant, questions, gold)])] for the sets found under ``root``."""
    from jmlr.data import load_qa, load_qa_corpus

    out = []
    pub = root / "pubmedqa" / "ori_pqal.json"
    if pub.is_file():
        qa = [ex for ex in load_qa("pubmedqa", pub) if ex.gold_passage_ids]
        out.append(("pubmedqa_pqal", load_qa_corpus("pubmedqa", pub),
                    [("question", [ex.question for ex in qa], [ex.gold_passage_ids for ex in qa])]))
    med = root / "medmcqa" / "dev.json"
    if med.is_file():
        qa = [ex for ex in load_qa("medmcqa", med) if ex.gold_passage_ids]
        with_opts = [ex.question + " " + " ".join(f"({k}) {v}" for k, v in ex.options.items()) for ex in qa]
        out.append(("medmcqa_exp", load_qa_corpus("medmcqa", med),
                    [("question", [ex.question for ex in qa], [ex.gold_passage_ids for ex in qa]),
                     ("question+options", with_opts, [ex.gold_passage_ids for ex in qa])]))
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(args.data)
    sets = datasets(root) if root.is_dir() else []
    if not sets:
        reason = f"{root} not found (or holds neither pubmedqa/ori_pqal.json nor medmcqa/dev.json)"
        print(f"retrieval_real: skipped: {reason}")
        write_json(out / "retrieval_real.json", {"skipped": reason})
        return 0

    import transformers

    from jmlr.eval.retrieval import evaluate_index
    from jmlr.index import BM25Index, EmbeddingStore, ExactIndex
    from jmlr.index.bm25 import make_stemmer
    from jmlr.retriever import DualEncoder

    transformers.logging.set_verbosity_error()
    dual = DualEncoder.from_pretrained(args.encoder, max_length=args.max_length)
    enc_fp = dual.fingerprint("doc")
    stemmer = "english (PyStemmer)" if make_stemmer("auto") is not None else "none (PyStemmer not installed)"
    rows, results = [], {}
    for name, corpus, variants in sets:
        ids, texts = list(corpus.ids), corpus.texts()
        t0 = time.perf_counter()
        emb = EmbeddingStore(out / "cache" / name).encode(
            lambda chunk: dual.encode_docs(chunk, batch_size=args.batch_size, progress=False), texts,
            fingerprint=f"{enc_fp}/{corpus.fingerprint()}/{args.max_length}", chunk_size=512)
        dense = ExactIndex.from_array(ids, emb)
        dense_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        bm25 = BM25Index()
        bm25.add(ids, texts)
        bm25.search(["warm up"], 1)
        bm25_s = time.perf_counter() - t0
        print(f"{name}: {len(ids)} passages; dense index {dense_s:.1f}s, bm25 {bm25_s:.1f}s", file=sys.stderr)
        for variant, questions, gold in variants:
            if args.limit:
                questions, gold = questions[: args.limit], gold[: args.limit]
            q = dual.encode_queries(questions, batch_size=args.batch_size, progress=True)  # (Q, d)
            for retriever, index, queries in (("minilm", dense, q), ("bm25", bm25, questions)):
                t0 = time.perf_counter()
                m = evaluate_index(index, queries, gold, ks=KS)
                m["search_s"] = time.perf_counter() - t0
                key = f"{name}/{variant}/{retriever}"
                results[key] = {**m, "passages": len(ids)}
                rows.append({"dataset": name, "queries": variant, "retriever": retriever, "n": m["n"],
                             "passages": len(ids), **{f"R@{k}": m[f"recall@{k}"] for k in KS},
                             "MRR@10": m["mrr@10"], "nDCG@10": m["ndcg@10"],
                             "goldR@20": m["gold_recall@20"]})
                print(f"{key}: " + ", ".join(f"{k}={v:.3f}" for k, v in m.items() if isinstance(v, float)),
                      file=sys.stderr)
    payload = {"results": results, "rows": rows,
               "config": {"encoder": args.encoder, "max_length": args.max_length, "limit": args.limit,
                          "bm25": {"method": "lucene", "k1": 1.5, "b": 0.75, "stopwords": "en", "stemmer": stemmer},
                          "data": str(root)},
               "machine": machine_info()}
    write_json(out / "retrieval_real.json", payload)
    notes = (f"Dense: {args.encoder} (max_length {args.max_length}, mean pooling, cosine), exact index. BM25: bm25s "
             f"lucene k1=1.5 b=0.75, English stopwords, stemmer {stemmer}. R@k = share of questions with a gold "
             "passage in the top k; goldR@20 = share of gold passages found in the top 20. No training."
             + (f" Limited to the first {args.limit} questions per set." if args.limit else ""))
    write_markdown(out / "retrieval_real.md", "Retrieval on real medical QA (no training)", rows, notes=notes)
    fig, axes = new_figure(1, len(rows) // 2, figsize=(4.2 * (len(rows) // 2), 4), squeeze=False)
    for ax, (i) in zip(axes[0], range(0, len(rows), 2)):
        pair = rows[i:i + 2]
        metrics = [f"R@{k}" for k in KS] + ["MRR@10"]
        w = 0.38
        for j, r in enumerate(pair):
            ax.bar([x + (j - 0.5) * w for x in range(len(metrics))], [r[m] for m in metrics], w, label=r["retriever"])
        ax.set_xticks(range(len(metrics)), metrics)
        ax.set_ylim(0, 1)
        ax.set_title(f"{pair[0]['dataset']} ({pair[0]['queries']})", fontsize=9)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "retrieval_real.png", dpi=110)
    print(f"wrote {out / 'retrieval_real.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
