"""``jmlr eval``: accuracy of a trained run with and without retrieval; ``jmlr eval retrieval`` for an index."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a run (MCQ accuracy with/without retrieval, Recall@k) or an index",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  jmlr eval --run runs/demo --data test.jsonl --format medqa\n"
               "  jmlr eval --run runs/demo --data demo --no-retrieval\n"
               "  jmlr eval retrieval --index idx/ --data dev.json --format medmcqa\n")
    p.add_argument("--run", help="run folder (its newest checkpoint is used) or a checkpoint folder")
    p.add_argument("--data", help="QA file to evaluate, or 'demo' for the bundled demo test split")
    p.add_argument("--format", default="jmlr", help="QA format of --data (see jmlr data inspect)")
    p.add_argument("--no-retrieval", action="store_true", help="closed-book only (no passages)")
    p.add_argument("--limit", type=int, default=None, help="evaluate at most this many questions")
    p.add_argument("--out", default=None, help="write the metrics as JSON here")
    p.add_argument("--device", default="auto",
                   help="where the reader, retriever and exact index run: auto (GPU when available), cpu, cuda:N")
    p.set_defaults(func=_cmd)
    sub = p.add_subparsers(dest="eval_cmd", required=False, metavar="{retrieval}")
    try:
        from jmlr.index.cli import add_eval_retrieval
    except ImportError:
        return
    add_eval_retrieval(sub)


def _cmd(args) -> int:
    if not args.run or not args.data:
        raise ValueError("jmlr eval needs --run DIR and --data F (or use `jmlr eval retrieval ...`)")
    if args.out:
        from jmlr.core.fs import check_writable_dir

        check_writable_dir(Path(args.out).absolute().parent, "the folder of --out")  # before the models load
    res = evaluate_run(args.run, args.data, args.format, retrieval=not args.no_retrieval, limit=args.limit,
                       device=args.device)
    text = json.dumps(res, indent=2, default=float)
    print(text)
    if args.out:
        from jmlr.core.fs import write_text_atomic

        write_text_atomic(args.out, text)
    return 0


def evaluate_run(run: str, data: str, fmt: str = "jmlr", retrieval: bool = True, limit: int | None = None,
                 device: str | None = "auto") -> dict:
    """Load a run's newest checkpoint and evaluate it on ``data``: closed-book, and with retrieval if asked.
    ``device`` (``auto``: the GPU when available) holds the reader, the retriever and the exact index."""
    from jmlr.index.distributed_build import resolve_device
    from jmlr.config import load_config
    from jmlr.data import Corpus, load_qa
    from jmlr.reader import Reader
    from jmlr.retriever import DualEncoder
    from jmlr.train import checkpoint as ckpt
    from jmlr.train.retrieval import RetrievalState
    from jmlr.eval.joint import evaluate_joint

    folder = Path(run)
    if not (folder / ckpt.STATE_FILE).is_file():
        found = ckpt.latest_checkpoint(folder)
        if found is None:
            raise FileNotFoundError(f"{run}: neither a checkpoint nor a run folder with checkpoints/step-N")
        folder = found
    cfg_file = folder.parent.parent / "config.yaml"
    cfg = load_config(cfg_file if cfg_file.is_file() else None, saved=True)
    if data == "demo":
        from jmlr.data.demo import demo_qa
        examples = demo_qa("test")
    else:
        examples = load_qa(fmt, data)
    examples = examples[:limit] if limit else examples
    dev = resolve_device(device)
    reader = Reader.from_pretrained(str(folder / "reader"), template=cfg.reader.template,
                                    max_length=cfg.reader.max_length, target=cfg.reader.target, device=dev)
    retriever = DualEncoder.from_pretrained(str(folder / "retriever"), device=dev)
    if cfg.data.corpus == "demo":
        from jmlr.data.demo import demo_corpus
        corpus = demo_corpus()
    else:
        corpus = Corpus.load(cfg.data.corpus, fmt=cfg.data.corpus_format)
    doc_texts = corpus.texts(with_title=True)
    state = RetrievalState(retriever, doc_texts, cfg, device=dev)
    state.load(folder / "index")
    out = {"checkpoint": str(folder), "n": len(examples)}
    out["closed_book"] = evaluate_joint(retriever, reader, state, doc_texts, corpus, examples,
                                        top_k=cfg.index.top_k, use_retrieval=False, precision=cfg.optim.precision)
    if retrieval:
        out["with_retrieval"] = evaluate_joint(retriever, reader, state, doc_texts, corpus, examples,
                                               top_k=cfg.index.top_k, use_retrieval=True, precision=cfg.optim.precision)
    return out
