"""Reader throughput: tokens/s and model FLOPs utilisation of the reader's hot paths, per precision, in ONE run.

Workloads (all on the bundled demo data: 4-option questions, K passages per question):

* ``joint_step``  one JointTrainer optimizer step (retrieve, score K candidates with gradient, reader
  log-likelihood of the answer for each of the B*K sequences, backward, AdamW). tokens = reader tokens.
* ``cloze_eval``  ``Reader.score_options`` with ``target=option_text``, all K passages in the prompt, per path:
  ``per_option`` (one sequence per option) and ``shared_prefix`` (one packed forward per question).
  tokens = the WORKLOAD's tokens, sum over options of (prompt + option), the same for both paths, so their
  tokens/s ratio is their speed ratio; ``computed_tokens`` says what each path actually ran.
* ``letter_eval`` ``score_options`` with ``target=letter`` (options listed, one kept position per question).

Each in every ``--precisions`` entry (default fp32 and bf16). The host's roof is measured in the same run: an fp32
matmul, and a bf16 one (labelled emulated where the CPU lacks avx512_bf16/amx_bf16). MFU = model FLOPs / s /
roof, with model FLOPs = 2 N tokens for a forward (6 N for training), N = the non-embedding parameters (attention
score FLOPs and the LM head, which runs only at the kept positions, are left out); the roof of a row is the bf16
roof where bf16 is native, else the fp32 roof (the fastest the hardware does).

Writes OUT/reader_throughput.json (``rows`` with ``workload``, ``path``, ``precision``, ``tokens_per_s``, ``mfu``;
``speedup_shared_prefix``), OUT/reader_throughput.md and OUT/reader_throughput.png.

    python benchmarks/reader_throughput.py --quick --out runs/bench/reader_throughput
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import machine_info, new_figure, write_json, write_markdown  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quick", action="store_true", help="fewer questions and repeats (about 3 minutes on 2 cores)")
    p.add_argument("--reader", default="smollm2-135m", help="reader: alias or HF folder (default smollm2-135m)")
    p.add_argument("--retriever", default="minilm", help="retriever for the joint step (default minilm)")
    p.add_argument("--template", default="chat", help="reader prompt template (default chat, as jmlr demo)")
    p.add_argument("--k", type=int, default=3, help="passages per question (default 3)")
    p.add_argument("--questions", type=int, default=None, help="questions per eval pass (default 8 quick, 32 full)")
    p.add_argument("--batch", type=int, default=None, help="questions per joint step (default 2 quick, 4 full)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per row (default 2 quick, 4 full)")
    p.add_argument("--max-length", type=int, default=384, help="reader max tokens per sequence (default 384)")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated precisions (default fp32,bf16)")
    p.add_argument("--emulated-questions", type=int, default=None,
                   help="questions (and joint-step batch) for a precision the CPU only emulates (bf16 without "
                        "avx512_bf16/amx_bf16 runs ~6x slower than fp32 here): default 1 quick, 4 full; tokens/s "
                        "is a rate, so its rows compare with the others")
    p.add_argument("--roof-n", type=int, default=2048, help="matmul size of the roof measurement (default 2048)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.questions = args.questions or (4 if args.quick else 16)
    args.batch = args.batch or (1 if args.quick else 4)
    args.repeats = args.repeats or (1 if args.quick else 2)
    args.emulated_questions = args.emulated_questions or (1 if args.quick else 4)
    args.precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
    return args


# ------------------------------------------------------------------------------------------------ the roof
def matmul_roof(dtype, n: int = 2048, seconds: float = 1.0) -> float:
    """Sustained FLOP/s of an n x n x n matmul in ``dtype`` (median of timed batches after a warm-up)."""
    import torch

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    rates, t_end = [], time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(rates) < 3:
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        rates.append(4 * 2 * n ** 3 / (time.perf_counter() - t0))
    return float(statistics.median(rates))


def body_params(model) -> int:
    """Parameters without the input embedding (a tied LM head shares it): the per-token FLOPs weight."""
    emb = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not emb)


# ------------------------------------------------------------------------------------------------ data
def demo_workload(n_questions: int, k: int, seed: int):
    """Four-option demo test questions with their gold passage and k - 1 random others (fixed by ``seed``)."""
    from jmlr.data.demo import demo_corpus, demo_qa

    corpus = demo_corpus()
    texts = corpus.texts(with_title=True)
    row = {pid: j for j, pid in enumerate(corpus.ids)}
    qs = [q for q in demo_qa("test") if len(q.options) == 4][:n_questions]
    rng = random.Random(seed)
    passages = []
    for q in qs:
        gold = [texts[row[g]] for g in q.gold_passage_ids[:1]]
        others = [texts[j] for j in rng.sample(range(len(texts)), k)]
        passages.append((gold + [t for t in others if t not in gold])[:k])
    return qs, passages, corpus


def timed(fn, repeats: int, warmup: bool = True) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls (after one warm-up call unless ``warmup`` is False), and the last result."""
    out = fn() if warmup else None
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return float(statistics.median(ts)), out


# ------------------------------------------------------------------------------------------------ main
def run(args) -> dict:
    import torch

    from jmlr.config import load_config
    from jmlr.core.precision import host_info, native_bf16, resolve_precision
    from jmlr.data import Corpus
    from jmlr.reader import Reader
    from jmlr.retriever import DualEncoder
    from jmlr.train.trainer import JointTrainer

    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    host = host_info()
    native, why = native_bf16("cpu")
    roof = {"fp32": matmul_roof(torch.float32, args.roof_n),
            "bf16": matmul_roof(torch.bfloat16, args.roof_n if native else min(args.roof_n, 512), seconds=0.5)}
    roof_for = {"fp32": roof["fp32"], "bf16": roof["bf16"] if native else roof["fp32"],
                "fp16": roof["fp32"]}
    print(f"host: {host['cpu_model']}, bf16 flags {host['bf16_flags'] or 'none'} ({why}); roof fp32 "
          f"{roof['fp32'] / 1e9:.0f} GFLOP/s, bf16{' (emulated)' if not native else ''} {roof['bf16'] / 1e9:.0f} "
          "GFLOP/s", file=sys.stderr)

    qs, passages, corpus = demo_workload(args.questions, args.k, args.seed)
    cloze = Reader.from_pretrained(args.reader, template=args.template, max_length=args.max_length,
                                   target="option_text")
    cloze.model.eval()
    letter = Reader(cloze.model, cloze.tokenizer, template=args.template, max_length=args.max_length,
                    target="letter")
    n_body = body_params(cloze.model)
    rows: list[dict] = []

    def add(workload, path, prec, seconds, tokens, computed, flops_per_token, extra=None):
        flops = flops_per_token * n_body * computed
        rows.append({"workload": workload, "path": path, "precision": prec, "seconds": seconds, "tokens": tokens,
                     "computed_tokens": computed, "tokens_per_s": tokens / seconds,
                     "model_tflop_per_s": flops / seconds / 1e12, "mfu": flops / seconds / roof_for[prec],
                     **(extra or {})})
        print(f"  {workload:<12} {path:<14} {prec:<5} {tokens / seconds:9.0f} tok/s  {seconds:7.2f} s", file=sys.stderr)

    # (b), (c): evaluation paths, fp32 / bf16 autocast around the same fp32 weights
    def emulated(prec) -> bool:
        return prec.name in ("bf16", "fp16") and not (prec.name == "bf16" and native)

    for prec_name in args.precisions:
        prec = resolve_precision(prec_name, cloze.device, key="--precisions")
        emu = emulated(prec)  # a slow emulated precision: fewer questions, no warm-up (the model is warm)
        n_q = min(args.emulated_questions, len(qs)) if emu else len(qs)
        q_, p_ = qs[:n_q], passages[:n_q]
        calls = args.repeats + (0 if emu else 1)
        with torch.no_grad(), prec.autocast(cloze.device):
            workload = None
            for shared in (False, True):  # per-option first: what it computes IS the workload
                seen = cloze.tokens_seen
                sec, _ = timed(lambda s=shared: cloze.score_options(q_, p_, shared_prefix=s), args.repeats, not emu)
                computed = (cloze.tokens_seen - seen) // calls
                workload = workload or computed
                add("cloze_eval", "shared_prefix" if shared else "per_option", prec.name, sec, workload, computed, 2,
                    {"questions": n_q, "options": 4, "k": args.k, "emulated": emu})
            encs = letter._encode_items([(q, p, None) for q, p in zip(q_, p_)], reserve_target=False, reserve=1)
            tokens = sum(len(e.prompt_ids) for e in encs)
            sec, _ = timed(lambda: letter.score_options(q_, p_), args.repeats, not emu)
            add("letter_eval", "one_position", prec.name, sec, tokens, tokens, 2,
                {"questions": n_q, "k": args.k, "emulated": emu})

    # (a): one joint training step (retriever + reader), over a small corpus holding the passages used above
    keep = {pid for q in qs for pid in q.gold_passage_ids} | set(random.Random(args.seed).sample(corpus.ids, 64))
    sub = Corpus([p for p in corpus if p.id in keep])
    cfg = load_config(None, [f"output_dir={Path(args.out) / 'joint_run'}", f"optim.batch_size={args.batch}",
                             f"index.top_k={args.k}", "refresh.every=0", "eval_every=0", "optim.precision=fp32",
                             f"optim.steps={10 * (args.repeats + 1)}", "optim.warmup_steps=0",
                             "loss.name=rag_sequence", "retriever.lr=3e-5", "reader.lr=3e-5", "overwrite=true"])
    retriever = DualEncoder.from_pretrained(args.retriever)
    trainer = JointTrainer(cfg, retriever, cloze, sub, qs, progress=False)
    trainer.setup()
    n_ret = sum(p.numel() for p in retriever.parameters())
    for prec_name in args.precisions:
        trainer.precision = resolve_precision(prec_name, trainer.device, key="--precisions")
        emu = emulated(trainer.precision)
        trainer.cfg.optim.batch_size = min(args.emulated_questions, args.batch) if emu else args.batch
        calls = args.repeats + (0 if emu else 1)
        r0, q0 = cloze.tokens_seen, getattr(retriever, "tokens_seen", 0)

        def step():
            trainer.train_step()
            trainer.step += 1

        sec, _ = timed(step, args.repeats, not emu)
        r_tok = (cloze.tokens_seen - r0) // calls
        q_tok = (getattr(retriever, "tokens_seen", 0) - q0) // calls
        # the retriever's FLOPs ride on the reader's row as equivalent reader tokens
        add("joint_step", "train", trainer.precision.name, sec, r_tok, r_tok + q_tok * n_ret / n_body, 6,
            {"batch": trainer.cfg.optim.batch_size, "k": args.k, "retriever_tokens": q_tok, "emulated": emu})
    trainer.retrieval.close()

    def tok_s(workload, path, prec):
        return next((r["tokens_per_s"] for r in rows if (r["workload"], r["path"], r["precision"]) ==
                     (workload, path, prec)), None)

    speedups = {p: tok_s("cloze_eval", "shared_prefix", p) / tok_s("cloze_eval", "per_option", p)
                for p in {r["precision"] for r in rows if r["workload"] == "cloze_eval"}}
    auto = resolve_precision("auto", "cpu").name
    head = auto if auto in speedups else next(iter(speedups))
    bf16_vs_fp32 = {w: tok_s(w, path, "bf16") / tok_s(w, path, "fp32") for w, path in
                    (("joint_step", "train"), ("cloze_eval", "shared_prefix"), ("letter_eval", "one_position"))
                    if tok_s(w, path, "bf16") and tok_s(w, path, "fp32")}
    return {
        "rows": rows,
        "speedup_shared_prefix": speedups[head],
        "speedup_shared_prefix_precision": head,
        "speedup_shared_prefix_by_precision": speedups,
        "bf16_over_fp32_tokens_per_s": bf16_vs_fp32,
        "auto_precision": resolve_precision("auto", "cpu").as_dict(),
        "roof_flop_per_s": roof, "bf16_native": native,
        "host": host, "machine": machine_info(),
        "settings": {"reader": args.reader, "retriever": args.retriever, "template": args.template, "k": args.k,
                     "questions": len(qs), "batch": args.batch, "repeats": args.repeats,
                     "emulated_questions": args.emulated_questions,
                     "max_length": args.max_length, "quick": args.quick, "non_embedding_params": n_body,
                     "retriever_params": n_ret},
        "command": "python benchmarks/reader_throughput.py " + " ".join(sys.argv[1:]),
        "wall_s": time.perf_counter() - t_start,
    }


def report(result: dict, out: Path) -> None:
    write_json(out / "reader_throughput.json", result)
    host = result["host"]
    notes = (f"Host: {host['cpu_model']}, bf16 flags: {', '.join(host['bf16_flags']) or 'none'}; "
             f"{host['torch_threads']} torch threads; auto precision here: {result['auto_precision']['precision']} "
             f"({result['auto_precision']['reason']}).\n"
             f"Roof: fp32 matmul {result['roof_flop_per_s']['fp32'] / 1e9:.0f} GFLOP/s, bf16 "
             f"{'(native)' if result['bf16_native'] else '(emulated)'} {result['roof_flop_per_s']['bf16'] / 1e9:.0f} "
             "GFLOP/s.\n"
             f"Shared-prefix over per-option cloze tokens/s ({result['speedup_shared_prefix_precision']}): "
             f"{result['speedup_shared_prefix']:.2f}x; by precision: "
             + ", ".join(f"{k} {v:.2f}x" for k, v in sorted(result["speedup_shared_prefix_by_precision"].items()))
             + ".\nbf16 / fp32 tokens/s: "
             + ", ".join(f"{k} {v:.2f}" for k, v in result["bf16_over_fp32_tokens_per_s"].items())
             + f".\nCommand: `{result['command']}` ({result['wall_s']:.0f} s).")
    write_markdown(out / "reader_throughput.md", "Reader throughput", result["rows"],
                   ["workload", "path", "precision", "tokens", "computed_tokens", "seconds", "tokens_per_s",
                    "model_tflop_per_s", "mfu"], notes)
    fig, axes = new_figure(1, 2, figsize=(11, 3.8))
    rows = result["rows"]
    labels = sorted({(r["workload"], r["path"]) for r in rows})
    precs = sorted({r["precision"] for r in rows})
    width = 0.8 / max(len(precs), 1)
    for i, p in enumerate(precs):
        by = {(r["workload"], r["path"]): r for r in rows if r["precision"] == p}
        xs = [j + i * width for j in range(len(labels))]
        axes[0].bar(xs, [by[lab]["tokens_per_s"] if lab in by else 0 for lab in labels], width, label=p)
        axes[1].bar(xs, [100 * by[lab]["mfu"] if lab in by else 0 for lab in labels], width, label=p)
    for ax, title in ((axes[0], "tokens/s"), (axes[1], "MFU (%)")):
        ax.set_xticks([j + width * (len(precs) - 1) / 2 for j in range(len(labels))],
                      [f"{w}\n{p}" for w, p in labels], fontsize=7)
        ax.set_title(title)
        ax.legend()
    fig.suptitle(f"reader throughput on {host['cpu_model']} (bf16 flags: {', '.join(host['bf16_flags']) or 'none'})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "reader_throughput.png", dpi=110)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = run(args)
    report(result, out)
    print((out / "reader_throughput.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
