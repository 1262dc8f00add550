"""``jmlr index build|search`` and ``jmlr eval retrieval``.

Heavy imports happen inside the command functions, so registering the parsers costs nothing.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

TYPES = ("exact", "flat", "ivf", "ivfpq", "hnsw", "sq8", "sq16", "bm25")

_BUILD_EPILOG = """examples:
  jmlr index build --corpus corpus.jsonl --encoder minilm --out idx/
  jmlr index build --corpus corpus.jsonl --encoder minilm --out idx/ --type hnsw
  jmlr index build --corpus notes/ --corpus-format folder --encoder runs/demo/retriever --out idx/ --type ivf
  jmlr index build --corpus corpus.jsonl --out bm25/ --type bm25
  jmlr index build --corpus corpus.jsonl --out idx/ --type "IVF1024,PQ32x4fs" --param nprobe=32
  jmlr index build --corpus pubmed_hf/ --corpus-format hf --hf-mapping id=pmid --hf-mapping text=abstract --out idx/
An interrupted build resumes: embeddings are written chunk by chunk to OUT.store/ (removed when done).
On N ranks each encodes one shard and rank 0 merges them and writes OUT (see docs/distributed.md):
  torchrun --nproc_per_node 8 -m jmlr.cli index build --corpus corpus.jsonl --encoder minilm --out idx/
"""

_SEARCH_EPILOG = """examples:
  jmlr index search --index idx/ --query "first-line drug for absence seizures" -k 5
  jmlr index search --index idx/ --query "q1" --query "q2" -k 3 --json
"""

_EVAL_EPILOG = """examples:
  jmlr eval retrieval --index idx/ --data medmcqa/dev.json --format medmcqa
  jmlr eval retrieval --index idx/ --data ori_pqal.json --format pubmedqa -k 1,5,20 --out metrics.json
Questions without gold passage ids are skipped (their count is reported).
"""


def add_cli(subparsers) -> None:
    """Register ``jmlr index build`` and ``jmlr index search``."""
    p = subparsers.add_parser("index", help="build and search an index over a corpus",
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=_BUILD_EPILOG + "\n" + _SEARCH_EPILOG)
    sub = p.add_subparsers(dest="index_cmd", required=True, metavar="{build,search,import}")

    b = sub.add_parser("build", help="encode a corpus and build an index", epilog=_BUILD_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--corpus", required=True, help="corpus file or folder (JSONL {id,title?,text}, TSV, text, folder)")
    b.add_argument("--corpus-format", default=None, help="jsonl, tsv, text or folder (default: from the path)")
    b.add_argument("--encoder", default="minilm",
                   help="DualEncoder: alias (minilm), sentence-transformers / HF / jmlr folder (default: minilm)")
    b.add_argument("--out", required=True, help="index folder to write (replaced atomically)")
    b.add_argument("--type", default="flat", help=f"index type: {', '.join(TYPES)}, or a faiss index_factory string "
                   "such as 'HNSW32,Flat' (default: flat)")
    b.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="faiss parameter, e.g. nprobe=32 or efSearch=256 (repeat for several)")
    b.add_argument("--hf-mapping", action="append", default=[], metavar="FIELD=COLUMN",
                   help="corpus field from a column: id=pmid, text=abstract, title=heading (hf and jsonl corpora)")
    b.add_argument("--metric", default="ip", choices=("ip", "l2"), help="faiss metric (default: ip)")
    b.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                   help="embedding store / exact index precision (default: float32)")
    b.add_argument("--batch-size", type=int, default=64, help="encoding batch size (default: 64)")
    b.add_argument("--max-length", type=int, default=None, help="max tokens per passage (default: the encoder's)")
    b.add_argument("--chunk-size", type=int, default=4096, help="passages per resumable chunk (default: 4096)")
    b.add_argument("--store", default=None, help="embedding store folder (default: OUT.store, removed when done)")
    b.add_argument("--keep-store", action="store_true", help="keep the memory-mapped embeddings after the build")
    b.add_argument("--nlist", type=int, default=None, help="IVF lists (default: 4*sqrt(N))")
    b.add_argument("--nprobe", type=int, default=None, help="IVF lists probed per query (default: 32)")
    b.add_argument("--hnsw-m", type=int, default=None, help="HNSW neighbours per node (default: 32)")
    b.add_argument("--ef-search", type=int, default=None, help="HNSW search depth (default: 128)")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.add_argument("--device", default="auto",
                   help="encoder device: auto (this rank's GPU when CUDA is available), cpu, cuda, cuda:N")
    b.set_defaults(func=cmd_build)

    s = sub.add_parser("search", help="search an index with query texts", epilog=_SEARCH_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--index", required=True, help="index folder written by `jmlr index build`")
    s.add_argument("--query", required=True, action="append", help="query text (repeat for several)")
    s.add_argument("-k", type=int, default=5, help="results per query (default: 5)")
    s.add_argument("--encoder", default=None, help="query encoder (default: the one recorded in the index)")
    s.add_argument("--corpus", default=None, help="corpus to print passage texts from (default: the recorded one)")
    s.add_argument("--force", action="store_true", help="use the index even if the encoder fingerprint differs")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=cmd_search)
    _add_import(sub)


def add_eval_retrieval(eval_subparsers) -> None:
    """Register ``jmlr eval retrieval`` under the ``eval`` command's subparsers."""
    e = eval_subparsers.add_parser("retrieval", help="Recall@k, MRR@10, nDCG@10 of an index against gold passage ids",
                                   epilog=_EVAL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_eval_retrieval_args(e)
    e.set_defaults(func=cmd_eval_retrieval)


def add_eval_retrieval_args(e: argparse.ArgumentParser) -> None:
    """The options of ``jmlr eval retrieval`` (for a parser built elsewhere)."""
    e.add_argument("--index", required=True, help="index folder written by `jmlr index build`")
    e.add_argument("--data", required=True, help="QA file whose examples carry gold passage ids")
    e.add_argument("--format", required=True, help="QA format of --data: jmlr, medmcqa, pubmedqa, jsonl, ...")
    e.add_argument("-k", default="1,5,20", help="comma-separated cutoffs for Recall@k (default: 1,5,20)")
    e.add_argument("--encoder", default=None, help="query encoder (default: the one recorded in the index)")
    e.add_argument("--force", action="store_true", help="use the index even if the encoder fingerprint differs")
    e.add_argument("--batch-size", type=int, default=64, help="query encoding batch size (default: 64)")
    e.add_argument("--limit", type=int, default=None, help="evaluate at most this many questions")
    e.add_argument("--out", default=None, help="also write the metrics as JSON here")


# ------------------------------------------------------------------------------------------- commands

def _load_corpus(path: str, fmt: str | None, mapping: list[str] | None = None):
    from jmlr.data import Corpus
    from jmlr.data.hf import corpus_load_kwargs, parse_mapping

    kw = corpus_load_kwargs(fmt, parse_mapping(mapping or [], "--hf-mapping"), path) if mapping else {}
    return Corpus.load(path, fmt=fmt, **kw)


def _check_out(out: Path) -> None:
    """Refuse a bad ``--out`` before anything is encoded: a file, a folder that is not an index, an
    unwritable parent."""
    from jmlr.core.fs import check_writable_dir

    if out.exists() and not out.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "--out is a file, not an index folder", str(out))
    if out.is_dir() and any(out.iterdir()) and not (out / "meta.json").is_file():
        raise FileExistsError(errno.EEXIST, "--out is a folder that is not a jmlr index (no meta.json); refusing "
                                            "to replace it", str(out))
    check_writable_dir(out.absolute().parent, "the folder of --out")


def cmd_build(args) -> int:
    """``jmlr index build``: one writer per ``--out`` (a lock beside it), checked before anything loads."""
    from jmlr.core.fs import clean_stale_tmp, output_lock

    out = Path(args.out)
    _check_out(out)
    for name in ("batch_size", "chunk_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.type != "bm25":
        from jmlr.models import require

        require(args.encoder, "--encoder")
    import os

    from jmlr.index import distributed_build as dbuild

    if dbuild.launched_distributed() and os.environ.get("RANK", "0") != "0":
        return _build(args)  # under torchrun rank 0 alone holds the lock: it alone writes OUT
    with output_lock(out, f"index output {out}"):
        clean_stale_tmp(out.absolute().parent, [out.name], locked=True)
        return _build(args)


def _build(args) -> int:
    from jmlr.index.build import build_index, remove_store

    progress = not args.quiet
    corpus = _load_corpus(args.corpus, args.corpus_format, args.hf_mapping)
    info = {"corpus_path": str(Path(args.corpus).resolve()), "corpus_format": args.corpus_format}
    if args.hf_mapping:
        info["corpus_mapping"] = list(args.hf_mapping)
    store = args.store or (str(Path(args.out)) + ".store")
    if args.type == "bm25":
        if args.param:
            raise ValueError(f"--param {args.param[0]!r}: faiss parameters do not apply to --type bm25")
        index = build_index(None, corpus, index_type="bm25", out=args.out, info=info)
    else:
        from jmlr.retriever import DualEncoder

        from jmlr.index.settings import index_kwargs, parse_params

        kw = index_kwargs(args.type, parse_params(args.param))
        if args.type in ("ivf", "ivfpq"):
            if args.nlist is not None:
                kw["nlist"] = args.nlist
            if args.nprobe is not None:
                kw["nprobe"] = args.nprobe
        if args.type == "hnsw":
            if args.hnsw_m is not None:
                kw["hnsw_m"] = args.hnsw_m
            if args.ef_search is not None:
                kw["ef_search"] = args.ef_search
        if args.type != "exact" and args.metric != "ip":
            kw["metric"] = args.metric
        from jmlr.index import distributed_build as dbuild

        encoder = DualEncoder.from_pretrained(args.encoder, max_length=args.max_length,
                                              device=dbuild.resolve_device(args.device))
        info["encoder"] = args.encoder if not os.path.isdir(args.encoder) else str(Path(args.encoder).resolve())
        if dbuild.launched_distributed():  # torchrun: one shard per rank, merged into `store` on rank 0
            if not dbuild.encode_store_distributed(encoder, corpus, store, dtype=args.dtype,
                                                   batch_size=args.batch_size, chunk_size=args.chunk_size,
                                                   progress=progress):
                return 0  # ranks > 0: their shard is encoded; rank 0 builds and writes OUT
        index = build_index(encoder, corpus, index_type=args.type, out=args.out, store_dir=store, dtype=args.dtype,
                            batch_size=args.batch_size, chunk_size=args.chunk_size, progress=progress, info=info,
                            **kw)
        if not args.keep_store:
            remove_store(store)  # the saved index holds its own copy of what it needs
    print(f"wrote {args.out}: {index!r}")
    return 0


def _query_side(index, encoder_name: str | None, force: bool):
    """The query encoder for ``index`` (None for BM25), checked against the index's encoder fingerprint."""
    if index.kind == "bm25":
        return None
    from jmlr.index.base import check_fingerprints
    from jmlr.retriever import DualEncoder

    name = encoder_name or index.info.get("encoder")
    if not name:
        raise ValueError("the index records no encoder; pass --encoder")
    kw = {}
    if index.info.get("max_length"):
        kw["max_length"] = int(index.info["max_length"])
    encoder = DualEncoder.from_pretrained(name, **kw)
    check_fingerprints({"encoder_fingerprint": index.encoder_fingerprint}, "index", encoder.fingerprint("doc"),
                       None, force)
    return encoder


def _encode_queries(encoder, texts, batch_size=64, progress=False):
    if encoder is None:
        return list(texts)
    return encoder.encode_queries(list(texts), batch_size=batch_size, progress=progress)


def cmd_search(args) -> int:
    """``jmlr index search``."""
    from jmlr.index import load_index

    index = load_index(args.index)
    encoder = _query_side(index, args.encoder, args.force)
    scores, ids = index.search(_encode_queries(encoder, args.query), args.k)
    corpus = None
    cpath = args.corpus or index.info.get("corpus_path")
    if cpath and Path(cpath).exists():
        try:
            corpus = _load_corpus(cpath, None if args.corpus else index.info.get("corpus_format"),
                                  None if args.corpus else index.info.get("corpus_mapping"))
        except (ValueError, FileNotFoundError) as e:
            print(f"(passage texts unavailable: {e})", file=sys.stderr)
    results = []
    for qi, q in enumerate(args.query):
        hits = []
        for r in range(args.k):
            pid = ids[qi, r]
            if pid is None or (not isinstance(pid, str) and int(pid) < 0):
                continue
            hit = {"rank": r + 1, "id": pid if isinstance(pid, str) else int(pid), "score": float(scores[qi, r])}
            if corpus is not None:
                try:
                    p = corpus.get(pid)
                    hit["text"] = (p.title + ". " if p.title else "") + p.text
                except (KeyError, ValueError):
                    pass
            hits.append(hit)
        results.append({"query": q, "hits": hits})
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        for res in results:
            print(f"query: {res['query']}")
            for h in res["hits"]:
                text = h.get("text", "")
                text = (text[:117] + "...") if len(text) > 120 else text
                print(f"  {h['rank']:>3}  {h['score']:8.4f}  {h['id']}  {text}")
    return 0


def cmd_eval_retrieval(args) -> int:
    """``jmlr eval retrieval``."""
    from jmlr.data import load_qa
    from jmlr.eval.retrieval import evaluate_index
    from jmlr.index import load_index

    try:
        ks = sorted({int(x) for x in str(args.k).split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"-k {args.k!r}: expected comma-separated integers like 1,5,20") from None
    if not ks or ks[0] < 1:
        raise ValueError(f"-k {args.k!r}: cutoffs must be >= 1")
    if args.out:
        from jmlr.core.fs import check_writable_dir

        check_writable_dir(Path(args.out).absolute().parent, "the folder of --out")  # before anything is encoded
    examples = load_qa(args.format, args.data)
    with_gold = [ex for ex in examples if ex.gold_passage_ids]
    if args.limit:
        with_gold = with_gold[: args.limit]
    if not with_gold:
        raise ValueError(f"{args.data}: none of the {len(examples)} examples has gold_passage_ids "
                         "(expected e.g. MedMCQA with 'exp' or PubMedQA)")
    index = load_index(args.index)
    encoder = _query_side(index, args.encoder, args.force)
    queries = _encode_queries(encoder, [ex.question for ex in with_gold], args.batch_size, progress=True)
    metrics = evaluate_index(index, queries, [ex.gold_passage_ids for ex in with_gold], ks=ks)
    metrics.update(skipped_without_gold=len(examples) - len(with_gold) if not args.limit else None,
                   index=str(args.index), data=str(args.data), format=args.format)
    width = max(len(k) for k in metrics)
    for key, v in metrics.items():
        print(f"{key:<{width}}  {v:.4f}" if isinstance(v, float) else f"{key:<{width}}  {v}")
    if args.out:
        from jmlr.core.fs import write_json_atomic

        write_json_atomic(args.out, metrics)
    return 0


# ------------------------------------------------------------------------------------------- import

_IMPORT_EPILOG = """examples:
  jmlr index import pubmed.faiss --ids pubmed_ids.txt --encoder minilm --corpus pubmed.jsonl --out idx/
  jmlr index import idmap.faiss --encoder runs/demo/retriever --out idx/     # an IndexIDMap carries its ids
Then `jmlr index search --index idx/ ...` and `jmlr eval retrieval --index idx/ ...` use it like a built index.
"""


def _add_import(sub) -> None:
    i = sub.add_parser("import", help="adopt an existing .faiss file (with its ids) as a jmlr index",
                       epilog=_IMPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("faiss_file", help="a file written by faiss.write_index")
    i.add_argument("--ids", default=None, help="text file, one id per line in the index's row order (optional for an "
                                               "IndexIDMap, whose own labels are used)")
    i.add_argument("--out", required=True, help="index folder to write (replaced atomically)")
    i.add_argument("--encoder", default=None,
                   help="the DualEncoder the vectors came from: its dimension and normalisation are checked against "
                        "the index, and it is recorded for `jmlr index search`")
    i.add_argument("--corpus", default=None, help="corpus the ids belong to (checked; passage texts for search)")
    i.add_argument("--corpus-format", default=None, help="jsonl, tsv, text, folder or hf (default: from the path)")
    i.add_argument("--hf-mapping", action="append", default=[], metavar="FIELD=COLUMN",
                   help="corpus field from a column (hf and jsonl corpora)")
    i.add_argument("--metric", default=None, choices=("ip", "l2"), help="the metric you expect (checked)")
    i.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="faiss search parameter, e.g. nprobe=32 (repeat for several)")
    i.set_defaults(func=cmd_import)


def cmd_import(args) -> int:
    """``jmlr index import``."""
    from jmlr.index.faiss_files import read_ids_file
    from jmlr.index.faiss_index import FaissIndex, idmap_labels, read_faiss_file
    from jmlr.index.settings import parse_params

    ids = read_ids_file(args.ids) if args.ids else None
    corpus = _load_corpus(args.corpus, args.corpus_format, args.hf_mapping) if args.corpus else None
    encoder = None
    if args.encoder:
        from jmlr.retriever import DualEncoder

        encoder = DualEncoder.from_pretrained(args.encoder)
    raw = read_faiss_file(args.faiss_file)
    if ids is None:
        labels = idmap_labels(raw)
        if labels is None:
            raise ValueError(f"{args.faiss_file}: pass --ids (one id per line, in row order); only an IndexIDMap "
                             "carries its own ids")
        ids = [str(i) for i in labels]  # strings, like corpus ids
    index = FaissIndex.from_faiss(raw, ids, encoder=encoder, metric=args.metric, source=args.faiss_file)
    if args.param:
        index.set_search_params(**parse_params(args.param))
    if corpus is not None:
        missing = [pid for pid in index.ids if pid not in corpus]
        if missing:
            raise ValueError(f"{args.corpus}: {len(missing)} of the {len(index)} index ids are not in the corpus "
                             f"(first: {missing[0]!r}); expected the corpus the index was built from")
        index.corpus_fingerprint = corpus.fingerprint() if len(corpus) == len(index) else None
        index.info.update(corpus_path=str(Path(args.corpus).resolve()), corpus_format=args.corpus_format)
        if args.hf_mapping:
            index.info["corpus_mapping"] = list(args.hf_mapping)
    if encoder is not None:
        index.encoder_fingerprint = encoder.fingerprint("doc")
        index.info.update(encoder=args.encoder if not os.path.isdir(args.encoder) else
                          str(Path(args.encoder).resolve()), pooling=encoder.pooling, normalize=encoder.normalize,
                          max_length=encoder.max_length)
    index.info["imported_from"] = str(Path(args.faiss_file).resolve())
    index.save(args.out)
    print(f"wrote {args.out}: {index!r}")
    return 0
