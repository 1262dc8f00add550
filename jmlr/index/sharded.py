"""An index sharded over ``torch.distributed`` ranks.

Each rank holds one shard (any local index kind). ``search`` is collective: every rank calls it with its
own queries (any count, possibly zero); the queries are all-gathered, each rank searches its shard for all
of them, the per-shard top-k are all-gathered, and each rank merges the ``world * k`` candidates of its own
queries into the global top-k. The result equals a single-process search over the union of the shards.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .base import BaseIndex, as_float32_matrix, load_index


def _dist():
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("ShardedIndex needs torch.distributed initialised (e.g. under torchrun)")
    return dist


def shard_range(n: int, rank: int | None = None, world: int | None = None) -> tuple[int, int]:
    """The contiguous ``[start, end)`` rows of ``n`` that ``rank`` holds (near-equal split)."""
    if rank is None or world is None:
        dist = _dist()
        rank, world = dist.get_rank(), dist.get_world_size()
    per, extra = divmod(n, world)
    start = rank * per + min(rank, extra)
    return start, start + per + (1 if rank < extra else 0)


class ShardedIndex:
    """Wraps this rank's local index; ``search`` and ``save`` are collective calls.

    >>> local = ExactIndex(384)                                   # doctest: +SKIP
    >>> s, e = shard_range(len(corpus)); local.add(ids[s:e], emb[s:e])
    >>> index = ShardedIndex(local)
    >>> scores, ids = index.search(my_queries, 10)                # every rank calls this
    """

    kind = "sharded"

    def __init__(self, local: BaseIndex, group=None):
        self.local = local
        self.group = group
        dist = _dist()
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)

    # Index protocol ------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.local.dim

    @property
    def metric(self) -> str:
        return self.local.metric

    @property
    def version(self) -> int:
        return self.local.version

    @version.setter
    def version(self, v: int) -> None:
        self.local.version = v

    def add(self, ids: Sequence, emb) -> None:
        """Add rows to this rank's shard (local; not collective)."""
        self.local.add(ids, emb)

    def __len__(self) -> int:
        """Rows over all shards (collective)."""
        import torch

        n = torch.tensor([len(self.local)], dtype=torch.long)
        _dist().all_reduce(n, group=self.group)
        return int(n.item())

    def _gather_rows(self, x):
        """all-gather ``(b_r, ...)`` tensors with different b_r: pad to the max, gather, strip."""
        import torch

        dist = _dist()
        b = torch.tensor([x.shape[0]], dtype=torch.long)
        sizes = [torch.zeros_like(b) for _ in range(self.world)]
        dist.all_gather(sizes, b, group=self.group)
        sizes = [int(s.item()) for s in sizes]
        m = max(sizes) if sizes else 0
        padded = torch.zeros((m,) + tuple(x.shape[1:]), dtype=x.dtype)
        padded[: x.shape[0]] = x
        bufs = [torch.zeros_like(padded) for _ in range(self.world)]
        dist.all_gather(bufs, padded, group=self.group)
        return torch.cat([buf[:s] for buf, s in zip(bufs, sizes)], 0), sizes

    def search(self, q, k: int):
        """Collective top-k over all shards: ``(scores (B, k) tensor, ids (B, k) ndarray)`` for this rank's B."""
        import torch

        dist = _dist()
        x = torch.from_numpy(as_float32_matrix(q, self.dim, what="queries"))  # (B, d)
        allq, sizes = self._gather_rows(x)  # (sum B, d)
        s, pos = self.local.search_positions(allq, k)  # (sum B, k) on this shard
        ids = self.local.lookup(pos)
        gathered_s = [torch.zeros_like(s) for _ in range(self.world)]
        dist.all_gather(gathered_s, s.contiguous(), group=self.group)
        if ids.dtype == object:
            gathered_ids: list[Any] = [None] * self.world
            dist.all_gather_object(gathered_ids, ids, group=self.group)
        else:
            t = torch.from_numpy(np.ascontiguousarray(ids))
            bufs = [torch.zeros_like(t) for _ in range(self.world)]
            dist.all_gather(bufs, t, group=self.group)
            gathered_ids = [b.numpy() for b in bufs]
        lo = sum(sizes[: self.rank])
        hi = lo + sizes[self.rank]
        cand_s = torch.cat([g[lo:hi] for g in gathered_s], 1)  # (B, world * k)
        cand_ids = np.concatenate([g[lo:hi] for g in gathered_ids], 1)  # (B, world * k)
        largest = self.metric == "ip"
        top_s, top_j = cand_s.topk(k, dim=1, largest=largest, sorted=True)  # (B, k)
        return top_s, np.take_along_axis(cand_ids, top_j.numpy(), 1)

    # persistence -------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Collective: each rank writes ``DIR/shard-RRRRR-of-WWWWW``; rank 0 then writes ``DIR/meta.json``."""
        from ._atomic import write_json_atomic

        dist = _dist()
        folder = Path(directory)
        self.local.save(folder / f"shard-{self.rank:05d}-of-{self.world:05d}")
        counts: list[Any] = [None] * self.world
        dist.all_gather_object(counts, len(self.local), group=self.group)
        if self.rank == 0:
            write_json_atomic(folder / "meta.json", {
                "kind": "sharded", "format_version": 1, "dim": self.dim, "metric": self.metric,
                "count": int(sum(counts)), "world_size": self.world, "shard_counts": counts,
                "version": self.version, "encoder_fingerprint": self.local.encoder_fingerprint,
                "corpus_fingerprint": self.local.corpus_fingerprint, "local_kind": self.local.kind})
        dist.barrier(group=self.group)
        return folder

    @classmethod
    def _load_payload(cls, folder: Path, meta: dict, group=None, **kw) -> "ShardedIndex":
        dist = _dist()
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        if int(meta["world_size"]) != world:
            raise ValueError(f"{folder}: saved with {meta['world_size']} shards, but this job has {world} ranks")
        local = load_index(folder / f"shard-{rank:05d}-of-{world:05d}", **kw)
        return cls(local, group=group)

    def __repr__(self) -> str:
        return f"ShardedIndex(rank={self.rank}, world={self.world}, local={self.local!r})"

