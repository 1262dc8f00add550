"""Index scale on one machine: N = 100k .. 10M passages at d = 384, every index kind, memory from a subprocess.

Data (synthetic, realistic rather than uniform noise; written by a generator to a float32 ``.npy`` memmap in
chunks of ``--chunk`` rows, so no step holds the N x d matrix in RAM):

* ``C = N / 500`` topic centres (at least 64); centre sizes follow a Zipf law (a few big topics, a long tail);
* every vector = a shared mean direction (real sentence embeddings have one: random pairs of MiniLM passages
  have cosine ~0.1) + its topic centre + anisotropic noise (per-dimension scales falling as a power law,
  rotated by a fixed random orthogonal basis), then L2-normalised;
* queries: ``--queries`` random target rows plus anisotropic noise of 75% of the row's norm, renormalised
  (a query lands near its passage, not on it: query-target cosine about 0.8).

The ground truth (exact fp32 top-10) is computed once per N by streaming the store in chunks with plain file
reads. The same kinds then run on about 100k REAL MiniLM embeddings (``--real-n``): the passages in
``../shared/data`` (MedMCQA explanations, PubMedQA contexts, chunked) plus the bundled demo corpus, queried with
the first 12 words of random passages (skipped cleanly when ``../shared/data`` is absent).

Index kinds (each built and searched in its own fresh subprocess, so ``peak_rss_gib`` is that kind's alone;
file-backed pages of a memmap count in RSS once touched):

* ``exact_fp32``       ``jmlr.kernels.topk.topk`` over the fp32 memmap (skipped where N d 4 bytes exceeds
                       ``--max-rss-gib``).
* ``exact_int8_rerank`` / ``exact_bf16_rerank``  ``ExactIndex.write_quantized`` (chunked) then ``load_index``
                       (memory-mapped, no copy): a reduced-precision candidate pass of ``rerank_k`` = 64 rows per
                       query through jmlr.kernels, then an exact fp32 rerank against the (hard-linked) fp32 rows.
* ``faiss_flat_default`` / ``faiss_flat_blas``  faiss ``IndexFlatIP`` with faiss's default
                       ``distance_compute_blas_threshold`` (128000 in faiss-cpu 1.15, compared with B d: below it
                       the per-query SIMD scan) and with 0 (always BLAS); the value used is in each row.
* ``faiss_ivf_flat``   ``IndexIVFFlat``, nlist = 4 sqrt(N) (jmlr's ``default_nlist``), nprobe = 32.
* ``faiss_ivf_pq``     ``IndexIVFPQ``, same lists, m = 48 sub-quantisers x 8 bits (``default_pq_m``), nprobe = 32.
* ``faiss_ivf_pq_rerank``  the IVF-PQ index returning 100 candidates, reranked exactly in fp32 from the memmap.
* ``faiss_hnsw``       ``IndexHNSWFlat``, M = 32, efConstruction = 80, efSearch = 128 (jmlr's FaissIndex
                       defaults; skipped above ``--hnsw-max-n``: about an hour per 3M rows on 2 cores).

The IVF kinds share one coarse quantiser per N: spherical k-means (10 iterations) on 40 nlist sampled rows,
trained once per N (by the first IVF kind's subprocess, then cached); its time is in ``train_s`` and in every IVF
kind's ``build_s``.

Measured per (kind, N): ``build_s``, ``peak_rss_gib``, ``disk_bytes``, ``search_s_b1`` and ``search_s_b32``
(seconds per batch at k = 10; the median over repeats, at least 3, up to ~``--time-per-shape`` seconds), and
``recall_at_10`` against the exact fp32 top-10 over all queries. Kinds whose estimated resident size exceeds
``--max-rss-gib`` get a row with ``skipped`` and no figures.

    python benchmarks/index_scale.py --quick --out runs/bench/index_scale       # N = 20k, 50k (+3k real); minutes
    python benchmarks/index_scale.py --out runs/bench/index_scale               # 100k .. 10M: hours, see BENCHMARKS.md
    python benchmarks/index_scale.py --sizes 1M --kinds exact_int8_rerank,faiss_ivf_pq --out ...

Writes OUT/index_scale.json (``rows``: kind, N, d, recall_at_10, peak_rss_gib, build_s, search_s_b1,
search_s_b32, disk_bytes, ...), OUT/index_scale.md and OUT/index_scale.png (log-log search time vs N per kind).
The stores live under ``--work`` (default OUT/work; 10M x 384 fp32 is 15.4 GB, the int8 copy 3.9 GB).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import peak_rss_bytes, proc_status_bytes, rss_bytes  # noqa: E402
from jmlr.core.fs import release_pages  # noqa: E402

KINDS = ("exact_fp32", "exact_int8_rerank", "exact_bf16_rerank", "faiss_flat_default", "faiss_flat_blas",
         "faiss_ivf_flat", "faiss_ivf_pq", "faiss_ivf_pq_rerank", "faiss_hnsw")
IVF_KINDS = ("faiss_ivf_flat", "faiss_ivf_pq", "faiss_ivf_pq_rerank")
K = 10
RERANK_K = 64
PQ_CANDIDATES = 100
NPROBE = 32
HNSW = {"M": 32, "efConstruction": 80, "efSearch": 128}
KMEANS = {"niter": 10, "points_per_list": 40}
GIB = 2 ** 30


def parse_size(s: str) -> int:
    s = s.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(s[-1:], 1)
    return int(float(s[:-1] if mult > 1 else s) * mult)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--work", default=None, help="folder for the memmapped stores and indexes (default OUT/work)")
    p.add_argument("--quick", action="store_true", help="N = 20k, 50k; 200 queries; 3k real passages")
    p.add_argument("--sizes", default=None, help="comma-separated N (default 100k,300k,1M,3M,10M; quick 20k,50k; "
                   "none: only the real-embedding check)")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--kinds", default=",".join(KINDS), help=f"subset of {','.join(KINDS)}")
    p.add_argument("--queries", type=int, default=None, help="queries per N (default 1000; quick 200)")
    p.add_argument("--max-rss-gib", type=float, default=12.0,
                   help="skip a kind whose estimated resident size exceeds this (default 12 of the 24 GiB: the OS "
                        "and a training run beside it; 10M x 384 fp32 alone is 14.3 GiB)")
    p.add_argument("--hnsw-max-n", type=int, default=3_000_000, help="largest N that builds HNSW (default 3M)")
    p.add_argument("--time-per-shape", type=float, default=None, help="seconds of repeats per search shape "
                   "(default 5; quick 1)")
    p.add_argument("--nprobe-sweep", default=None, help="comma-separated nprobe values the IVF kinds are also "
                   "searched at, on the same built index (default 128,512,1024; quick none)")
    p.add_argument("--pq-candidates-sweep", default=None, help="comma-separated candidate counts for "
                   f"faiss_ivf_pq_rerank's sweep (default {PQ_CANDIDATES},400; quick none)")
    p.add_argument("--chunk", type=int, default=262_144, help="rows per generator / reader chunk")
    p.add_argument("--real-n", type=int, default=None, help="real MiniLM passages (default 100000, quick 3000; "
                   "0 = skip); capped by what ../shared/data holds")
    p.add_argument("--encoder", default="minilm", help="encoder of the real-embedding check (default minilm)")
    p.add_argument("--data", default=None, help="folder with medmcqa/ and pubmedqa/ (default ../shared/data)")
    p.add_argument("--threads", type=int, default=None, help="torch/faiss threads (default: all cores)")
    p.add_argument("--keep-work", action="store_true", help="keep the stores after the run (default: keep for "
                   "quick runs in OUT/work only when asked)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--merge", nargs="+", metavar="JSON", help="join index_scale.json files of runs split across "
                   "invocations on one host into OUT/index_scale.{json,md,png} (measures nothing)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sizes = args.sizes or ("20k,50k" if args.quick else "100k,300k,1M,3M,10M")
    args.sizes = [] if sizes.strip().lower() == "none" else [parse_size(s) for s in sizes.split(",") if s.strip()]
    args.queries = args.queries or (200 if args.quick else 1000)
    args.time_per_shape = args.time_per_shape or (1.0 if args.quick else 5.0)
    args.real_n = (3000 if args.quick else 100_000) if args.real_n is None else args.real_n
    def ints(text, default):
        try:
            vals = sorted({int(x) for x in (default if text is None else text).split(",") if x.strip()})
        except ValueError:
            p.error(f"expected comma-separated integers, got {text!r}")
        if any(v < 1 for v in vals):
            p.error(f"sweep values must be positive, got {vals}")
        return vals

    args.nprobe_sweep = ints(args.nprobe_sweep, "" if args.quick else "128,512,1024")
    args.pq_candidates_sweep = ints(args.pq_candidates_sweep, "" if args.quick else f"{PQ_CANDIDATES},400")
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    bad = [k for k in args.kinds if k not in KINDS]
    if bad:
        p.error(f"unknown kind(s) {bad}; expected some of {list(KINDS)}")
    args.threads = args.threads or os.cpu_count() or 1
    return args


# ============================================================================ memory helpers

def rss_split_gib() -> dict:
    """This process's resident set now, split into anonymous memory (heap, tensors: what the process really holds)
    and file-backed pages (memmapped stores: clean page-cache pages the kernel can drop under pressure and fault
    back in). Empty where /proc/self/status has no such fields."""
    return {f"end_{k[3:].lower()}_rss_gib": v / GIB for k, v in proc_status_bytes("RssAnon", "RssFile").items()}


def dir_bytes(path: Path) -> int:
    """Bytes on disk of a file or folder (hard links counted once per folder)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    seen, total = set(), 0
    for p in path.rglob("*"):
        if p.is_file():
            st = p.stat()
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    return total


# ============================================================================ synthetic data

class Generator:
    """Deterministic clustered, anisotropic unit vectors; chunk ``c`` depends only on (seed, c)."""

    def __init__(self, N: int, d: int, seed: int = 0):
        import numpy as np

        rng = np.random.default_rng(seed)
        self.N, self.d, self.seed = N, d, seed
        self.C = max(64, N // 500)
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        self.basis = q.astype(np.float32)  # (d, d) orthogonal
        self.scales = (np.arange(1, d + 1, dtype=np.float32) ** -0.6)  # power-law spectrum
        self.scales *= math.sqrt(d) / np.linalg.norm(self.scales)  # E|noise|^2 = 1 before the noise level
        self.mean = rng.standard_normal(d).astype(np.float32)
        self.mean *= 0.45 / np.linalg.norm(self.mean)  # shared direction: mean pair cosine ~0.1-0.2
        cent = rng.standard_normal((self.C, d)).astype(np.float32) * self.scales
        cent = cent @ self.basis
        self.centres = cent / np.linalg.norm(cent, axis=1, keepdims=True)  # (C, d)
        w = 1.0 / np.arange(1, self.C + 1) ** 0.8  # Zipf-like topic sizes
        self.topic_p = w / w.sum()
        self.noise = 0.9  # per-row spread around the topic centre
        self.query_noise = 0.75  # a query's offset from its target (query-target cosine ~0.8)

    def aniso(self, rng, n: int):
        import numpy as np

        z = rng.standard_normal((n, self.d), dtype=np.float32) * self.scales / math.sqrt(self.d)
        return z @ self.basis  # (n, d), E|row|^2 = 1

    def chunk(self, c: int, rows: int):
        import numpy as np

        rng = np.random.default_rng([self.seed, 1, c])
        topic = rng.choice(self.C, size=rows, p=self.topic_p)
        x = self.mean + self.centres[topic] + self.noise * self.aniso(rng, rows)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x.astype(np.float32)

    def queries(self, store, n: int):
        """(queries (n, d), target rows (n,)): noisy copies of random stored rows."""
        import numpy as np

        rng = np.random.default_rng([self.seed, 2])
        targets = np.sort(rng.choice(self.N, size=min(n, self.N), replace=False))
        base = np.asarray(store[targets], dtype=np.float32)
        q = base + self.query_noise * self.aniso(rng, len(targets))
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        return q.astype(np.float32), targets


def write_store(path: Path, gen: Generator, chunk: int) -> None:
    """Generate the N x d store chunk by chunk into a float32 .npy (atomic: a temporary name, then rename)."""
    import numpy as np

    tmp = path.with_suffix(".tmp.npy")
    mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(gen.N, gen.d))
    for c, s in enumerate(range(0, gen.N, chunk)):
        rows = min(chunk, gen.N - s)
        mm[s:s + rows] = gen.chunk(c, rows)
        if c % 8 == 7:
            release_pages(mm)
    mm.flush()
    del mm
    os.replace(tmp, path)


def iter_rows(path: Path, chunk: int):
    """Yield ``(start, block (n, d) float32)`` by plain file reads (no mapping, so RSS stays one chunk)."""
    import numpy as np

    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if fortran or np.dtype(dtype) != np.float32:
            raise ValueError(f"{path}: expected a C-order float32 array, got {dtype} (fortran={fortran})")
        N, d = shape
        buf = np.empty((chunk, d), dtype=np.float32)
        for s in range(0, N, chunk):
            n = min(chunk, N - s)
            view = buf[:n]
            f.readinto(memoryview(view).cast("B"))
            yield s, view


def ground_truth(path: Path, queries, k: int, chunk: int):
    """Exact fp32 top-k (scores, rows) of ``queries`` over the store, streamed chunk by chunk."""
    import torch

    q = torch.from_numpy(queries)
    best_s = torch.full((len(q), k), -float("inf"))
    best_i = torch.full((len(q), k), -1, dtype=torch.long)
    for s, blk in iter_rows(path, chunk):
        docs = torch.from_numpy(blk)
        for a in range(0, len(q), 256):  # (256, chunk) scores at a time
            sc = q[a:a + 256] @ docs.T  # (b, n)
            ts, ti = sc.topk(min(k, sc.shape[1]), dim=1)
            cs = torch.cat([best_s[a:a + 256], ts], 1)
            ci = torch.cat([best_i[a:a + 256], ti + s], 1)
            order = cs.topk(k, dim=1).indices
            best_s[a:a + 256], best_i[a:a + 256] = cs.gather(1, order), ci.gather(1, order)
    return best_s.numpy(), best_i.numpy()


def data_stats(path: Path, queries, gt_s, seed: int = 0) -> dict:
    """How the data looks: random-pair cosine, query-to-top-1 cosine, top-1 minus top-10 score gap."""
    import numpy as np

    mm = np.load(path, mmap_mode="r")
    rng = np.random.default_rng(seed)
    a = np.asarray(mm[np.sort(rng.choice(len(mm), 2000))])
    b = np.asarray(mm[np.sort(rng.choice(len(mm), 2000))])
    return {"pair_cosine_mean": float((a * b).sum(1).mean()), "query_top1_cosine_mean": float(gt_s[:, 0].mean()),
            "top1_minus_top10_mean": float((gt_s[:, 0] - gt_s[:, -1]).mean())}


def prepare_synthetic(work: Path, N: int, d: int, args) -> dict:
    """Store, queries and ground truth for one N (reused when already in ``work``)."""
    import numpy as np

    folder = work / f"synthetic-{N}-{d}-s{args.seed}"
    folder.mkdir(parents=True, exist_ok=True)
    store = folder / "emb_f32.npy"
    t0 = time.perf_counter()
    gen = Generator(N, d, args.seed)
    if not store.is_file():
        write_store(store, gen, args.chunk)
    gen_s = time.perf_counter() - t0
    return _finish_prepare(folder, store, lambda mm: gen.queries(mm, args.queries), args, gen_s,
                           {"data": "synthetic", "topics": gen.C})


def _finish_prepare(folder: Path, store: Path, make_queries, args, gen_s: float, info: dict) -> dict:
    import numpy as np

    qpath, gpath = folder / f"queries-{args.queries}.npy", folder / f"gt-{args.queries}.npz"
    if not qpath.is_file() or not gpath.is_file():
        mm = np.load(store, mmap_mode="r")
        q, targets = make_queries(mm)
        del mm
        t0 = time.perf_counter()
        gs, gi = ground_truth(store, q, K, args.chunk)
        info["ground_truth_s"] = time.perf_counter() - t0
        np.save(qpath, q)
        np.savez(gpath, scores=gs, ids=gi, targets=targets)
    gt = np.load(gpath)
    q = np.load(qpath)
    N, d = np.load(store, mmap_mode="r").shape
    info.update(N=int(N), d=int(d), store=str(store), queries=str(qpath), gt=str(gpath), generate_s=gen_s,
                target_in_top10=float(np.mean([t in row for t, row in zip(gt["targets"], gt["ids"])])),
                **data_stats(store, q, gt["scores"]))
    return info


def prepare_real(work: Path, args) -> dict | None:
    """About ``--real-n`` real MiniLM embeddings (cached in ``work``), or None when there are none to use."""
    import random

    import numpy as np

    from benchmarks._passages import DATA, real_passages

    data = Path(args.data) if args.data else DATA
    if args.real_n <= 0 or not data.is_dir():
        return None
    texts, src = real_passages(data, limit=args.real_n)
    if len(texts) < 100:
        return None
    import transformers

    from jmlr.index import EmbeddingStore
    from jmlr.retriever import DualEncoder

    transformers.logging.set_verbosity_error()
    dual = DualEncoder.from_pretrained(args.encoder, max_length=256)
    folder = work / f"real-{args.encoder.replace('/', '_')}-{len(texts)}"
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fp = f"{dual.fingerprint('doc')}/{len(texts)}"
    emb = EmbeddingStore(folder / "store").encode(lambda c: dual.encode_docs(c, batch_size=64, progress=False),
                                                   texts, fingerprint=fp, chunk_size=2048, progress=False)
    del emb
    store = folder / "store" / "embeddings.npy"
    enc_s = time.perf_counter() - t0

    def make_queries(mm):
        rng = random.Random(args.seed)
        targets = np.sort(np.array(rng.sample(range(len(texts)), min(args.queries, len(texts)))))
        qt = [" ".join(texts[t].split()[:12]) for t in targets]
        return dual.encode_queries(qt, batch_size=64, progress=False).numpy().astype(np.float32), targets

    return _finish_prepare(folder, store, make_queries, args, enc_s,
                           {"data": f"real ({args.encoder})", "sources": src, "encode_s": enc_s})


# ============================================================================ the child: one kind, one N

def estimate_gib(kind: str, N: int, d: int) -> float:
    """Resident bytes a kind needs (GiB), to skip what cannot fit."""
    fp32 = N * d * 4
    est = {"exact_fp32": fp32, "faiss_flat_default": fp32, "faiss_flat_blas": fp32, "faiss_ivf_flat": fp32 * 1.05,
           "faiss_hnsw": fp32 + N * HNSW["M"] * 2 * 4 * 1.2,
           "exact_int8_rerank": N * (d + 4) + N * 100, "exact_bf16_rerank": N * d * 2 + N * 100,
           "faiss_ivf_pq": N * (48 + 8) * 1.2, "faiss_ivf_pq_rerank": N * (48 + 8) * 1.2}[kind]
    return est / GIB + 0.5  # interpreter, torch, faiss


def _time_search(fn, queries, B: int, budget: float) -> float:
    """Median seconds of ``fn(batch)`` over batches of ``B`` queries (at least 3, up to ``budget`` seconds)."""
    import numpy as np

    times, t_end, j = [], time.perf_counter() + budget, 0
    nb = max(1, len(queries) // B)
    while len(times) < 3 or (time.perf_counter() < t_end and len(times) < 200):
        b = queries[(j % nb) * B:(j % nb) * B + B]
        t0 = time.perf_counter()
        fn(b)
        times.append(time.perf_counter() - t0)
        j += 1
    return float(np.median(times))


def _ivf_centroids(store: Path, N: int, d: int, out: Path, seed: int) -> tuple[Path, float, bool]:
    """Train (once per N) the coarse k-means shared by the IVF kinds: (centroids file, seconds, trained now)."""
    import faiss
    import numpy as np

    from jmlr.index.faiss_index import default_nlist

    if out.is_file():
        meta = json.loads(out.with_suffix(".json").read_text())
        return out, float(meta["train_s"]), False
    nlist = default_nlist(N)
    n_train = min(N, KMEANS["points_per_list"] * nlist)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(N, size=n_train, replace=False))
    mm = np.load(store, mmap_mode="r")
    t0 = time.perf_counter()
    x = np.ascontiguousarray(mm[rows], dtype=np.float32)
    release_pages(mm)  # the sampled rows' pages (and the kernel's read-around) leave the RSS
    km = faiss.Kmeans(d, nlist, niter=KMEANS["niter"], seed=seed, spherical=True,
                      max_points_per_centroid=KMEANS["points_per_list"] + 1, verbose=False)
    km.train(x)
    train_s = time.perf_counter() - t0
    np.save(out, km.centroids)
    out.with_suffix(".json").write_text(json.dumps({"train_s": train_s, "nlist": nlist, "n_train": n_train}))
    return out, train_s, True


def child(kind: str, info: dict, args) -> dict:
    """Build ``kind`` over the store in ``info`` and measure it (runs in a fresh subprocess)."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    store = Path(info["store"])
    N, d = info["N"], info["d"]
    queries = np.load(info["queries"])
    gt = np.load(info["gt"])["ids"]
    work = store.parent
    rss0 = rss_bytes()
    row = {"kind": kind, "N": N, "d": d, "data": info["data"]}
    train_s = 0.0  # k-means (shared by the IVF kinds) + PQ codebooks
    kmeans_cached = 0.0  # k-means trained by an earlier IVF kind's process: added to this one's build time
    disk = 0
    t0 = time.perf_counter()
    if kind == "exact_fp32":
        from jmlr.kernels.topk import topk

        import warnings

        with warnings.catch_warnings():  # a read-only memmap: never written
            warnings.simplefilter("ignore", UserWarning)
            docs = torch.from_numpy(np.load(store, mmap_mode="r"))  # pages load on first search

        def search(qb):
            return topk(torch.from_numpy(qb), docs, K)[1].numpy()
        disk = dir_bytes(store)
    elif kind in ("exact_int8_rerank", "exact_bf16_rerank"):
        from jmlr.index import ExactIndex, load_index

        dtype = "int8" if "int8" in kind else "bfloat16"
        folder = work / f"index-{kind}"
        if folder.exists():
            shutil.rmtree(folder)
        ExactIndex.write_quantized(folder, range(N), np.load(store, mmap_mode="r"), dtype=dtype, rerank="link",
                                   rerank_k=RERANK_K, chunk_rows=args.chunk)
        index = load_index(folder)  # memory-mapped, no copy
        row["loaded_rss_gib"] = (rss_bytes() - rss0) / GIB
        row["store_is_memmap"] = True

        def search(qb):
            return index.search_positions(qb, K)[1].numpy()
        disk = dir_bytes(folder / "embeddings.npy") + (dir_bytes(folder / "scales.npy")
                                                      if dtype == "int8" else 0)
        row["rerank_bytes_linked"] = dir_bytes(folder / "rerank_fp32.npy")
    else:
        import faiss

        faiss.omp_set_num_threads(args.threads)
        if kind in ("faiss_flat_default", "faiss_flat_blas"):
            index = faiss.IndexFlatIP(d)
            row["blas_threshold"] = int(faiss.cvar.distance_compute_blas_threshold) if kind.endswith("default") else 0
        elif kind == "faiss_hnsw":
            index = faiss.IndexHNSWFlat(d, HNSW["M"], faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW["efConstruction"]
            index.hnsw.efSearch = HNSW["efSearch"]
            row["params"] = dict(HNSW)
        else:
            from jmlr.index.faiss_index import default_pq_m

            cpath, train_s, now = _ivf_centroids(store, N, d, work / "ivf_centroids.npy", args.seed)
            kmeans_cached = 0.0 if now else train_s
            cent = np.load(cpath)
            quant = faiss.IndexFlatIP(d)
            quant.add(cent)
            nlist = len(cent)
            if kind == "faiss_ivf_flat":
                index = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
            else:
                m = default_pq_m(d)
                index = faiss.IndexIVFPQ(quant, d, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
                rng = np.random.default_rng(args.seed + 1)
                rows = np.sort(rng.choice(N, size=min(N, 65_536), replace=False))
                tp = time.perf_counter()
                src = np.load(store, mmap_mode="r")
                sample = np.ascontiguousarray(src[rows])
                release_pages(src)
                index.train(sample)  # PQ codebooks (the lists are fixed)
                train_s += time.perf_counter() - tp
                row["pq_m"] = m
            if kind == "faiss_ivf_flat":
                index.is_trained = True  # the lists are the shared centroids; IVF-Flat has nothing else to train
            index.nprobe = NPROBE
            row["params"] = {"nlist": nlist, "nprobe": NPROBE, "kmeans": KMEANS}
            keep_alive = quant  # noqa: F841 - the index refers to the quantizer without owning it
        for s, blk in iter_rows(store, args.chunk):
            index.add(blk)
        fb = work / f"index-{kind}.faiss"
        faiss.write_index(index, str(fb))
        disk = dir_bytes(fb)
        fb.unlink()
        mm = np.load(store, mmap_mode="r") if kind == "faiss_ivf_pq_rerank" else None
        cands = {"k": PQ_CANDIDATES if kind == "faiss_ivf_pq_rerank" else K}
        if kind == "faiss_ivf_pq_rerank":
            row["pq_candidates"] = PQ_CANDIDATES

        def search(qb):
            if kind == "faiss_flat_blas":
                faiss.cvar.distance_compute_blas_threshold = 0
            elif kind == "faiss_flat_default":
                faiss.cvar.distance_compute_blas_threshold = row["blas_threshold"]
            _, ids = index.search(qb, cands["k"])
            if mm is None:
                return ids
            return _rerank_rows(mm, qb, ids, K)
    build_s = time.perf_counter() - t0  # IVF: includes PQ training; the shared k-means is added below

    def recall_at_10() -> float:
        """Recall@10 of ``search`` over all queries (batches of 32) against the exact fp32 top-10."""
        found = np.concatenate([search(queries[s:s + 32]) for s in range(0, len(queries), 32)])  # (Q, k)
        return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / K for a, b in zip(found, gt)]))

    t1 = time.perf_counter()
    recall = recall_at_10()
    first_pass_s = time.perf_counter() - t1
    row.update(recall_at_10=recall, build_s=build_s + kmeans_cached, train_s=train_s,
               all_queries_s=first_pass_s,
               search_s_b1=_time_search(search, queries, 1, args.time_per_shape),
               search_s_b32=_time_search(search, queries, 32, args.time_per_shape),
               disk_bytes=int(disk), peak_rss_gib=peak_rss_bytes() / GIB, base_rss_gib=rss0 / GIB,
               threads=args.threads, **rss_split_gib())
    if kind == "faiss_flat_default":
        row["b_times_d"] = {"b1": d, "b32": 32 * d}  # faiss compares B*d with blas_threshold
    if kind in IVF_KINDS and args.nprobe_sweep:  # the same built index at other search settings
        counts = args.pq_candidates_sweep if kind == "faiss_ivf_pq_rerank" and args.pq_candidates_sweep else [
            cands["k"]]
        row["sweep"] = []
        for nprobe in args.nprobe_sweep:
            for c in counts:
                index.nprobe, cands["k"] = nprobe, c
                pt = {"nprobe": nprobe, "candidates": c, "recall_at_10": recall_at_10(),
                      "search_s_b1": _time_search(search, queries, 1, min(1.0, args.time_per_shape)),
                      "search_s_b32": _time_search(search, queries, 32, min(1.0, args.time_per_shape))}
                if mm is not None:
                    release_pages(mm)  # each point's rerank pages are its own
                row["sweep"].append(pt)
        row["sweep_peak_rss_gib"] = peak_rss_bytes() / GIB
    return row


def _rerank_rows(mm, qb, cand, k: int):
    """Exact fp32 top-k among ``cand (B, c)`` rows of the memmap (rows gathered sorted, for page locality)."""
    import numpy as np

    out = np.empty((len(qb), k), dtype=np.int64)
    flat = np.unique(cand[cand >= 0])
    vecs = np.asarray(mm[flat], dtype=np.float32)  # (u, d)
    pos = {int(r): j for j, r in enumerate(flat)}
    for b in range(len(qb)):
        c = cand[b][cand[b] >= 0]
        sc = vecs[[pos[int(r)] for r in c]] @ qb[b]
        out[b] = c[np.argsort(-sc, kind="stable")[:k]]
    return out


# ============================================================================ the parent

def run_kind(kind: str, info: dict, args) -> dict:
    est = estimate_gib(kind, info["N"], info["d"])
    base = {"kind": kind, "N": info["N"], "d": info["d"], "data": info["data"], "estimated_gib": est}
    if est > args.max_rss_gib:
        return {**base, "skipped": f"estimated {est:.1f} GiB > --max-rss-gib {args.max_rss_gib}"}
    if kind == "faiss_hnsw" and info["N"] > args.hnsw_max_n:
        return {**base, "skipped": f"N > --hnsw-max-n {args.hnsw_max_n} (build time)"}
    cmd = [sys.executable, __file__, "--child", kind, "--store", json.dumps(info), "--out", args.out,
           "--threads", str(args.threads), "--time-per-shape", str(args.time_per_shape), "--chunk", str(args.chunk),
           "--queries", str(args.queries), "--seed", str(args.seed),
           "--nprobe-sweep", ",".join(map(str, args.nprobe_sweep)),
           "--pq-candidates-sweep", ",".join(map(str, args.pq_candidates_sweep))]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if res.returncode != 0:
        return {**base, "skipped": f"failed (exit {res.returncode}): {res.stderr.strip().splitlines()[-1:]}"}
    row = json.loads(res.stdout.strip().splitlines()[-1])
    row["estimated_gib"] = est
    return row


def sweep_rows(row: dict) -> list[dict]:
    """One row per (nprobe, candidates) point of an IVF kind's sweep: the same index (build, disk, RSS), marked
    ``sweep_point``; the row at the kind's default parameters comes first and is the one the plot uses."""
    out = []
    for pt in row.get("sweep", []):
        r = {k: v for k, v in row.items() if k != "sweep"}
        r.update(pt, sweep_point=True, params={**row.get("params", {}), "nprobe": pt["nprobe"]},
                 peak_rss_gib=row.get("sweep_peak_rss_gib", row["peak_rss_gib"]))
        if row["kind"] == "faiss_ivf_pq_rerank":
            r["pq_candidates"] = pt["candidates"]
        out.append(r)
    return out


def plot(path: Path, rows: list[dict]) -> None:
    from benchmarks._report import new_figure

    fig, axes = new_figure(1, 2, figsize=(12, 4.8))
    for ax, key, B in ((axes[0], "search_s_b1", 1), (axes[1], "search_s_b32", 32)):
        for kind in KINDS:
            pts = sorted((r["N"], r[key]) for r in rows if r["kind"] == kind and r.get(key)
                         and r["data"] == "synthetic" and not r.get("sweep_point"))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                        ls="-" if kind.startswith("exact") or "flat_" in kind else "--", label=kind)
        real = [r for r in rows if r["data"] != "synthetic" and r.get(key) and not r.get("sweep_point")]
        if real:
            ax.scatter([r["N"] for r in real], [r[key] for r in real], marker="*", s=80, c="k", zorder=5,
                       label="real MiniLM (all kinds)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N passages (d = 384)")
        ax.set_ylabel(f"seconds per search, B = {B}, k = {K}")
        ax.set_title(f"search time vs N, B = {B}")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)


COLS = ["data", "kind", "N", "nprobe", "pq_candidates", "recall_at_10", "build_s", "search_s_b1", "search_s_b32",
        "peak_rss_gib", "disk_bytes", "skipped"]


def write_results(out: Path, args, datasets: list, rows: list, total_s: float, complete: bool) -> dict:
    """Write OUT/index_scale.{json,md} from the rows so far (called after every kind, so a run that dies or is
    stopped keeps what it measured; ``complete`` is False until the last kind, which also writes the plot)."""
    import faiss

    from benchmarks._report import machine_info

    for r in rows:
        r.setdefault("nprobe", (r.get("params") or {}).get("nprobe"))
    payload = {"benchmark": "index_scale", "k": K, "rerank_k": RERANK_K, "nprobe": NPROBE,
               "nprobe_sweep": args.nprobe_sweep, "pq_candidates_sweep": args.pq_candidates_sweep, "hnsw": HNSW,
               "kmeans": KMEANS, "pq_candidates": PQ_CANDIDATES, "quick": args.quick, "sizes": args.sizes,
               "queries": args.queries, "threads": args.threads, "max_rss_gib": args.max_rss_gib,
               "faiss": faiss.__version__, "faiss_default_blas_threshold": int(faiss.cvar.distance_compute_blas_threshold),
               "datasets": datasets, "rows": rows, "total_s": total_s, "complete": complete,
               "machine": machine_info()}
    _write_outputs(out, payload, with_plot=complete)
    return payload


def loglog_slopes(rows: list[dict]) -> dict:
    """Per kind, the least-squares slope of log(search seconds) against log(N) over the synthetic rows at the
    kind's default parameters (3 or more sizes): about 1 for a linear scan, about 0.5 for IVF with nlist ~ sqrt(N)
    and a fixed nprobe."""
    import numpy as np

    out = {}
    for kind in KINDS:
        pts = sorted((r["N"], r["search_s_b1"], r["search_s_b32"]) for r in rows if r["kind"] == kind
                     and r.get("data") == "synthetic" and not r.get("sweep_point") and "skipped" not in r
                     and r.get("search_s_b1") and r.get("search_s_b32"))
        if len({p[0] for p in pts}) >= 3:
            x = np.log([p[0] for p in pts])
            out[kind] = {"sizes": [p[0] for p in pts],
                         **{f"b{b}": float(np.polyfit(x, np.log([p[j] for p in pts]), 1)[0])
                            for j, b in ((1, 1), (2, 32))}}
    return out


def _write_outputs(out: Path, payload: dict, with_plot: bool = True) -> None:
    from benchmarks._report import write_json, write_markdown

    payload["loglog_slopes"] = loglog_slopes(payload["rows"])
    write_json(out / "index_scale.json", payload)
    datasets = payload["datasets"]
    notes = ("Synthetic: clustered, anisotropic unit vectors (see the module docstring); queries are noisy copies of "
             f"random rows. {payload['queries']} queries per N; recall@10 against exact fp32 top-10 computed by a "
             f"chunked scan. Each kind runs in a fresh subprocess ({payload['threads']} threads). faiss "
             f"{payload['faiss']}, default distance_compute_blas_threshold {payload['faiss_default_blas_threshold']} "
             "(faiss_flat_default) vs 0 (faiss_flat_blas). search_s_* = median seconds per batch.\n\nDatasets: "
             + "; ".join(f"{d.get('data')} N={d.get('N')}: pair cos {d.get('pair_cosine_mean', float('nan')):.3f}, "
                         f"query-top1 cos {d.get('query_top1_cosine_mean', float('nan')):.3f}, top1-top10 gap "
                         f"{d.get('top1_minus_top10_mean', float('nan')):.3f}" for d in datasets if 'N' in d))
    if payload["loglog_slopes"]:
        notes += ("\n\nLog-log slope of search time against N (B = 1 / B = 32): " + "; ".join(
            f"{k} {v['b1']:.2f} / {v['b32']:.2f}" for k, v in payload["loglog_slopes"].items()) + ".")
    if payload.get("merged_from"):
        notes += "\n\nMerged from " + ", ".join(m["path"] for m in payload["merged_from"]) + " (one host)."
    write_markdown(out / "index_scale.md", "Index scale: kinds x N at d = 384", payload["rows"], COLS, notes)
    if with_plot:  # the partial writes after each kind keep the JSON and markdown; the plot comes at the end
        plot(out / "index_scale.png", payload["rows"])


# settings that must agree for two runs' rows to share one table and plot
MERGE_SAME = ("k", "rerank_k", "nprobe", "hnsw", "kmeans", "pq_candidates", "queries", "threads", "faiss",
              "faiss_default_blas_threshold")


def _row_key(r: dict) -> tuple:
    return (r.get("data"), r["kind"], r["N"], r.get("d"), bool(r.get("sweep_point")), r.get("nprobe") if
            r.get("sweep_point") else None, r.get("pq_candidates") if r.get("sweep_point") else None)


def merge_results(paths: list[str], out: Path) -> dict:
    """Join the rows of runs split across invocations (e.g. small N first, then 10M, then a kind skipped before)
    into one OUT/index_scale.{json,md,png}. The runs must come from one host with the same settings (seconds do
    not compare across hosts); a later run's measured row replaces an earlier row of the same kind, N and search
    point, and a skipped row never replaces a measured one."""
    runs = []
    for p in paths:
        try:
            runs.append(json.loads(Path(p).read_text()))
        except (OSError, ValueError) as e:
            raise SystemExit(f"--merge: cannot read {p}: {e}")
        if runs[-1].get("benchmark") != "index_scale":
            raise SystemExit(f"--merge: {p} is not an index_scale result")
    host = [(r["machine"].get("cpu_model"), tuple(r["machine"].get("bf16_flags") or ()), r["machine"].get("cpu_count"))
            for r in runs]
    if len(set(host)) > 1:
        raise SystemExit(f"--merge: the runs come from different hosts {sorted(set(host))}; their seconds do not "
                         "compare, so they cannot share one table")
    for key in MERGE_SAME:
        vals = {json.dumps(r.get(key), sort_keys=True) for r in runs}
        if len(vals) > 1:
            raise SystemExit(f"--merge: the runs differ in {key!r}: {sorted(vals)}")
    rows: dict[tuple, dict] = {}
    datasets: dict[tuple, dict] = {}
    for run in runs:
        for r in run["rows"]:
            key = _row_key(r)
            if "skipped" in r and key in rows and "skipped" not in rows[key]:
                continue
            rows[key] = r
        for d in run["datasets"]:
            datasets[(d.get("data"), d.get("N"))] = d
    order = {k: i for i, k in enumerate(KINDS)}
    merged = sorted(rows.values(), key=lambda r: (r.get("data") != "synthetic", r["N"], order.get(r["kind"], 99),
                                                  bool(r.get("sweep_point")), r.get("nprobe") or 0,
                                                  r.get("pq_candidates") or 0))
    payload = {**runs[0], "rows": merged, "datasets": list(datasets.values()),
               "sizes": sorted({N for r in runs for N in r.get("sizes", [])}),
               "total_s": sum(r.get("total_s", 0.0) for r in runs), "complete": all(r.get("complete") for r in runs),
               "merged_from": [{"path": str(p), "sizes": r.get("sizes"), "total_s": r.get("total_s"),
                                "complete": r.get("complete")} for p, r in zip(paths, runs)]}
    _write_outputs(out, payload)
    return payload


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, json.loads(args.store), args)))
        return 0
    from benchmarks._report import markdown_table

    if args.merge:
        payload = merge_results(args.merge, Path(args.out))
        print(markdown_table(payload["rows"], COLS))
        return 0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else out / "work"
    work.mkdir(parents=True, exist_ok=True)
    datasets, rows = [], []
    t_all = time.perf_counter()
    plans = [("synthetic", N) for N in args.sizes] + ([("real", None)] if args.real_n > 0 else [])
    for what, N in plans:
        t0 = time.perf_counter()
        info = prepare_synthetic(work, N, args.dim, args) if what == "synthetic" else prepare_real(work, args)
        if info is None:
            datasets.append({"data": "real", "skipped": "no ../shared/data (or --real-n 0)"})
            print("real-embedding check: skipped (../shared/data absent)", file=sys.stderr)
            continue
        datasets.append(info)
        print(f"[{info['data']} N={info['N']}] prepared in {time.perf_counter() - t0:.1f}s "
              f"(pair cos {info['pair_cosine_mean']:.3f}, query-top1 cos {info['query_top1_cosine_mean']:.3f})",
              file=sys.stderr, flush=True)
        for kind in args.kinds:
            row = run_kind(kind, info, args)
            rows.append({k: v for k, v in row.items() if k != "sweep"})
            rows.extend(sweep_rows(row))
            if "skipped" in row:
                print(f"  {kind:22s} skipped: {row['skipped']}", file=sys.stderr, flush=True)
            else:
                print(f"  {kind:22s} recall@10 {row['recall_at_10']:.4f} build {row['build_s']:7.1f}s "
                      f"B1 {row['search_s_b1'] * 1e3:9.2f} ms B32 {row['search_s_b32'] * 1e3:9.2f} ms "
                      f"peak {row['peak_rss_gib']:.2f} GiB disk {row['disk_bytes'] / GIB:.2f} GiB",
                      file=sys.stderr, flush=True)
            write_results(out, args, datasets, rows, time.perf_counter() - t_all, complete=False)
        if not args.keep_work and what == "synthetic" and N >= 1_000_000:
            shutil.rmtree(Path(info["store"]).parent, ignore_errors=True)  # 1.5-15 GB each
    write_results(out, args, datasets, rows, time.perf_counter() - t_all, complete=True)
    print(markdown_table(rows, COLS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
