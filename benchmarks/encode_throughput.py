"""Corpus encoding throughput: ``DualEncoder.encode_docs`` against ``SentenceTransformer.encode``, in ONE run.

Both load the same model folder, and get the same texts, batch size, max length, precision and torch thread
count. Throughput is real (unpadded) tokens per second, counted with the shared tokenizer after truncation,
so both sides process the same tokens; ``ratio_vs_sentence_transformers`` = jmlr tokens/s / ST tokens/s.

jmlr's path (:mod:`jmlr.retriever.encoding`): texts ordered by length, tokenized in chunks by a background
thread while the model runs (when a core is left over by torch's threads, else inline), rows re-sorted by token count inside a chunk (almost no padding), forward passes
under ``torch.inference_mode``. sentence-transformers sorts by character length and tokenizes each batch
inline, under ``no_grad``.

Timing: ``--repeats`` rounds; in each round both methods run once, in alternating order (so that load from
other processes hits them alike); the best round per method counts. The thread sweep (``--threads``, default
1 and all cores) is measured for both methods; each row reports every setting and the headline ratio compares
the two at the thread count that is best for each. Embeddings are compared row by row (max abs difference,
must be <= 1e-5 in fp32).

Texts: real passages from ``../shared/data`` (MedMCQA explanations, PubMedQA contexts, chunked) plus the demo
corpus; synthetic medical-word texts when those are absent or too few.

    python benchmarks/encode_throughput.py --quick --out runs/bench/encode      # 256 texts (MiniLM): ~10 min here
    python benchmarks/encode_throughput.py --out runs/bench/encode              # 2048 texts, max_length 128/256

Writes OUT/encode_throughput.json (``rows``: ``max_length``, ``ratio_vs_sentence_transformers``, tokens/s of
each, the thread sweep, ``max_abs_diff``), OUT/encode_throughput.md and OUT/encode_throughput.png.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import machine_info, markdown_table, new_figure, write_json, write_markdown  # noqa: E402

MATCH_TOL = 1e-5


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quick", action="store_true", help="256 texts, 1 timed round (plus a warm-up) per setting")
    p.add_argument("--model", default="minilm", help="encoder folder or alias (default minilm)")
    p.add_argument("--texts", type=int, default=None, help="number of texts (default 2048, quick 256)")
    p.add_argument("--max-lengths", default="128,256", help="comma-separated max lengths (default 128,256)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=None, help="timing rounds (default 2, quick 1)")
    p.add_argument("--threads", default=None, help="torch thread counts to sweep (default 1 and all cores)")
    p.add_argument("--precision", default="fp32", help="fp32 (default) or bf16 (autocast, for both methods)")
    p.add_argument("--data", default=None, help="folder with medmcqa/ and pubmedqa/ (default ../shared/data)")
    p.add_argument("--chunk-chars", type=int, default=400, help="characters per passage chunk (default 400, about "
                   "80 tokens: max length 256 then truncates almost nothing; 1200 gives passages that reach 256)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.texts = args.texts or (256 if args.quick else 2048)
    args.repeats = args.repeats or (1 if args.quick else 2)
    ncpu = os.cpu_count() or 1
    args.threads = [int(t) for t in (args.threads or f"1,{ncpu}").split(",") if t.strip()]
    args.threads = sorted(set(max(1, t) for t in args.threads))
    args.max_lengths = [int(x) for x in args.max_lengths.split(",") if x.strip()]
    if args.chunk_chars < 1:
        p.error(f"--chunk-chars must be positive, got {args.chunk_chars}")
    if args.precision not in ("fp32", "bf16"):
        p.error("--precision must be fp32 or bf16")
    return args


def load_texts(args) -> tuple[list[str], dict]:
    from benchmarks._passages import DATA, real_passages

    texts, info = real_passages(args.data or DATA, chunk_chars=args.chunk_chars, overlap=args.chunk_chars // 4)
    rng = random.Random(args.seed)
    rng.shuffle(texts)
    texts = texts[: args.texts]
    if len(texts) < args.texts:
        from jmlr.retriever.testing import WORDS

        k = args.texts - len(texts)
        texts += [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 200))) for _ in range(k)]
        info["synthetic"] = k
    return texts, info


def _amp(precision: str, model):
    from jmlr.core.precision import autocast

    return autocast(None if precision == "fp32" else "bfloat16", model)


def measure(args, texts, max_length: int) -> dict:
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from jmlr.models import resolve
    from jmlr.retriever import DualEncoder

    folder = resolve(args.model)
    dual = DualEncoder.from_pretrained(folder, max_length=max_length)
    st = SentenceTransformer(str(folder), device="cpu")
    st.max_seq_length = max_length
    tokens = sum(len(t) for t in dual.tokenize(texts, "doc"))  # the same truncation both sides apply

    def run_jmlr():
        with _amp(args.precision, dual.doc_model):
            return dual.encode_docs(texts, batch_size=args.batch_size, progress=False)

    def run_st():
        with _amp(args.precision, st):
            return st.encode(texts, batch_size=args.batch_size, convert_to_tensor=True, show_progress_bar=False)

    methods = {"jmlr": run_jmlr, "sentence_transformers": run_st}
    before = torch.get_num_threads()
    sweep = {}
    outs = {}
    try:
        for th in args.threads:
            torch.set_num_threads(th)
            for m in methods.values():  # warm-up: allocator, oneDNN primitives, tokenizer caches
                m()
            best = {name: float("inf") for name in methods}
            for r in range(args.repeats):
                names = list(methods) if r % 2 == 0 else list(methods)[::-1]
                for name in names:
                    t0 = time.perf_counter()
                    outs[name] = methods[name]()
                    best[name] = min(best[name], time.perf_counter() - t0)
            sweep[th] = {name: {"seconds": s, "tokens_per_s": tokens / s} for name, s in best.items()}
            print(f"max_length {max_length} threads {th}: jmlr {tokens / best['jmlr']:,.0f} tok/s, "
                  f"ST {tokens / best['sentence_transformers']:,.0f} tok/s "
                  f"(ratio {best['sentence_transformers'] / best['jmlr']:.3f})", file=sys.stderr, flush=True)
    finally:
        torch.set_num_threads(before)
    a = outs["jmlr"].float().cpu()
    b = outs["sentence_transformers"].float().cpu()
    diff = float((a - b).abs().max())
    best_j = max(sweep, key=lambda t: sweep[t]["jmlr"]["tokens_per_s"])
    best_s = max(sweep, key=lambda t: sweep[t]["sentence_transformers"]["tokens_per_s"])
    jt, stt = sweep[best_j]["jmlr"]["tokens_per_s"], sweep[best_s]["sentence_transformers"]["tokens_per_s"]
    lengths = [len(t) for t in dual.tokenize(texts, "doc")]
    from jmlr.retriever.encoding import padding_stats

    return {"max_length": max_length, "ratio_vs_sentence_transformers": jt / stt,
            "jmlr_tokens_per_s": jt, "st_tokens_per_s": stt, "jmlr_threads": best_j, "st_threads": best_s,
            "ratio_same_threads": {th: v["jmlr"]["tokens_per_s"] / v["sentence_transformers"]["tokens_per_s"]
                                   for th, v in sweep.items()},
            "tokens": tokens, "texts": len(texts), "batch_size": args.batch_size, "precision": args.precision,
            "max_abs_diff": diff, "embeddings_match": diff <= (MATCH_TOL if args.precision == "fp32" else 1e-2),
            "mean_tokens": float(np.mean(lengths)),
            "truncated_fraction": float(np.mean([n >= max_length for n in lengths])),  # texts cut at max_length
            "jmlr_padding_fraction": padding_stats(lengths, args.batch_size, 8 * args.batch_size)["padding_fraction"],
            "sweep": {str(k): v for k, v in sweep.items()}}


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import transformers

    from jmlr.core.precision import host_info

    transformers.logging.set_verbosity_error()
    texts, source = load_texts(args)
    rows = [measure(args, texts, L) for L in args.max_lengths]
    payload = {"benchmark": "encode_throughput", "model": args.model, "rows": rows, "texts": source,
               "quick": args.quick, "repeats": args.repeats, "threads": args.threads, "machine": machine_info(),
               "host": host_info()}
    write_json(out / "encode_throughput.json", payload)
    cols = ["max_length", "ratio_vs_sentence_transformers", "jmlr_tokens_per_s", "st_tokens_per_s", "jmlr_threads",
            "st_threads", "tokens", "mean_tokens", "truncated_fraction",
            "jmlr_padding_fraction", "max_abs_diff", "embeddings_match"]
    notes = (f"{len(texts)} texts ({source.get('sources')}; synthetic {source.get('synthetic', 0)}), model "
             f"{args.model}, batch {args.batch_size}, precision {args.precision}, best of {args.repeats} rounds per "
             f"thread count {args.threads}. Tokens are real (unpadded) tokens after truncation, identical for both.")
    write_markdown(out / "encode_throughput.md", "Corpus encoding: jmlr encode_docs vs SentenceTransformer.encode",
                   rows, cols, notes)
    fig, ax = new_figure(figsize=(6, 3.5))
    w = 0.38
    xs = list(range(len(rows)))
    ax.bar([x - w / 2 for x in xs], [r["jmlr_tokens_per_s"] for r in rows], w, label="jmlr encode_docs")
    ax.bar([x + w / 2 for x in xs], [r["st_tokens_per_s"] for r in rows], w, label="SentenceTransformer.encode")
    for x, r in zip(xs, rows):
        ax.text(x, max(r["jmlr_tokens_per_s"], r["st_tokens_per_s"]), f"x{r['ratio_vs_sentence_transformers']:.2f}",
                ha="center", va="bottom")
    ax.set_xticks(xs, [f"max_length {r['max_length']}" for r in rows])
    ax.set_ylabel("tokens / s")
    ax.set_title(f"Corpus encoding ({args.model}, batch {args.batch_size})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "encode_throughput.png", dpi=110)
    print(markdown_table(rows, cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
