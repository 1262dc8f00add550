"""Corpus encoding over ``torch.distributed`` ranks for ``jmlr index build`` (and the ``--device`` rule).

``torchrun --nproc_per_node N -m jmlr.cli index build --corpus C --encoder E --out OUT`` runs the ordinary
build command on N ranks. :func:`encode_store_distributed` is the only distributed part:

1. every rank encodes its contiguous shard (:func:`jmlr.index.sharded.shard_range`) into its own resumable
   :class:`~jmlr.index.store.EmbeddingStore`, ``STORE/rank-RRRRR-of-WWWWW/``; a rank turns only its own rows
   into Python strings;
2. a barrier;
3. rank 0 concatenates the shards, in row order, into ``STORE`` itself: the very layout (fingerprint
   ``"<encoder>/<corpus>"``, row count, dtype) a single-process build writes. The shard folders are removed.

Rank 0 then continues with the single-process code path (:func:`jmlr.index.build.build_index`), which finds
the store complete, encodes nothing and builds and saves the index: the same index as one process would
write, and only rank 0 writes ``OUT``. The other ranks return and exit. An interrupted run resumes: a complete
merged store is reused as is, and each shard store resumes at its last finished chunk (same world size).

``STORE`` (default ``OUT.store``) must be on a filesystem every rank can read (one node: any local disk;
several nodes: a shared filesystem), because rank 0 reads the other ranks' shards.
"""
from __future__ import annotations

import datetime
import logging
import os
import shutil
from pathlib import Path

from .sharded import shard_range
from .store import EmbeddingStore

logger = logging.getLogger(__name__)

# Ranks wait at one barrier while the slowest shard is encoded (hours for tens of millions of passages).
BARRIER_TIMEOUT = datetime.timedelta(hours=12)


def launched_distributed() -> bool:
    """True under torchrun / accelerate with more than one process (``WORLD_SIZE > 1``)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size() > 1
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def resolve_device(name: str | None = "auto"):
    """A torch device from ``--device``: ``auto`` (this rank's GPU when CUDA is available, else the CPU),
    ``cpu``, ``cuda`` (this rank's GPU: ``LOCAL_RANK`` under torchrun) or an explicit ``cuda:N``."""
    import torch

    name = (name or "auto").strip().lower()
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available here (a CPU-only torch, or no GPU); "
                             "use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        if dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def _init_group(device):
    """(rank, world, created): join the default process group, creating it for ``device`` if needed."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=BARRIER_TIMEOUT)
    return dist.get_rank(), dist.get_world_size(), True


def shard_store_dir(store_dir: str | os.PathLike, rank: int, world: int) -> Path:
    """Where rank ``rank`` of ``world`` keeps its shard's embeddings."""
    return Path(store_dir) / f"rank-{rank:05d}-of-{world:05d}"


def store_fingerprint(encoder, corpus_fingerprint: str) -> str:
    """The fingerprint :func:`jmlr.index.build.build_index` gives a store (so it adopts a merged one)."""
    return f"{encoder.fingerprint('doc')}/{corpus_fingerprint}"


def merge_shards(store_dir: str | os.PathLike, world: int, n: int, *, fingerprint: str, dtype: str = "float32",
                 chunk_size: int = 4096, progress: bool = False):
    """Concatenate the ``world`` shard stores under ``store_dir`` into ``store_dir`` itself (resumable, chunk by
    chunk) and return the merged ``(n, d)`` memmap."""
    import numpy as np

    shards = []
    for r in range(world):
        s, e = shard_range(n, r, world)
        st = EmbeddingStore(shard_store_dir(store_dir, r, world))
        state = st.state or {}
        if e > s and not (st.complete and int(state.get("n", -1)) == e - s):
            raise RuntimeError(f"{st.directory}: shard {r} of {world} should hold rows {s}..{e - 1} ({e - s} rows) "
                               f"but holds {state.get('done', 0)} of {state.get('n', 0)}")
        shards.append((s, e, st.array() if e > s else None))

    def rows(chunk):  # chunk: consecutive row numbers
        a, b = int(chunk[0]), int(chunk[-1]) + 1
        parts = [arr[max(a, s) - s:min(b, e) - s] for s, e, arr in shards if arr is not None and s < b and a < e]
        return np.concatenate(parts, 0) if len(parts) > 1 else np.asarray(parts[0])

    return EmbeddingStore(store_dir).encode(rows, list(range(n)), fingerprint=fingerprint, dtype=dtype,
                                            chunk_size=chunk_size, progress=progress)


def encode_store_distributed(encoder, corpus, store_dir: str | os.PathLike, *, dtype: str = "float32",
                             batch_size: int = 64, chunk_size: int = 4096, progress: bool = True) -> bool:
    """Encode ``corpus`` into the embedding store ``store_dir``, one shard per rank, merged on rank 0 (see the
    module doc). Collective. Returns True on rank 0, which goes on to build and write the index, and False on
    the other ranks, which are done."""
    import torch.distributed as dist

    device = next(encoder.parameters()).device
    rank, world, created = _init_group(device)
    try:
        n = len(corpus)
        fp = store_fingerprint(encoder, corpus.fingerprint())
        merged = EmbeddingStore(store_dir)
        st = merged.state
        already = bool(st) and merged.complete and (st.get("n"), st.get("dtype"), st.get("fingerprint")) == (
            n, dtype, fp)
        if not already:
            s, e = shard_range(n, rank, world)
            texts = corpus.texts(with_title=True, start=s, stop=e)  # this rank's strings only
            if texts:
                EmbeddingStore(shard_store_dir(store_dir, rank, world)).encode(
                    lambda chunk: encoder.encode_docs(chunk, batch_size=batch_size, progress=False), texts,
                    fingerprint=f"{fp}/shard-{rank}-of-{world}", dtype=dtype, chunk_size=chunk_size,
                    progress=progress and rank == 0)
            del texts
            logger.info("rank %d/%d: encoded rows %d..%d", rank, world, s, e)
        dist.barrier()
        if rank != 0:
            return False
        if not already:
            merge_shards(store_dir, world, n, fingerprint=fp, dtype=dtype, chunk_size=chunk_size, progress=False)
        for r in range(world):
            shutil.rmtree(shard_store_dir(store_dir, r, world), ignore_errors=True)
        return True
    finally:
        if created:
            dist.destroy_process_group()
