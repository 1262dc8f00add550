"""An index sharded over ``torch.distributed`` ranks.

Each rank holds one shard (any local index kind). ``search`` is collective: every rank calls it with its
own queries (any count, possibly zero); the queries are all-gathered, each rank searches its shard for all
of them, the per-shard top-k are all-gathered, and each rank merges the ``world * k`` candidates of its own
queries into the global top-k. The result equals a single-process search over the union of the shards.

Every collective takes tensors on the process group's device (:func:`collective_device`): the CPU for gloo,
the rank's GPU for NCCL. Queries stay on their device; the local index gets them on its own device, and the
results come back on the queries' device. Object gathers happen only for str ids (off the training path,
whose ids are int corpus rows).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jmlr.core.fs import write_json_atomic

from .base import BaseIndex, as_float32_tensor, load_index


def _dist():
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("ShardedIndex needs torch.distributed initialised (e.g. under torchrun)")
    return dist


# Device types whose tensors each backend's collectives take. gloo also has CUDA paths for a few ops, but
# its CPU path is the complete one; NCCL takes only CUDA tensors.
_BACKEND_DEVICES = {"gloo": ("cpu",), "mpi": ("cpu",), "nccl": ("cuda",), "ucc": ("cpu", "cuda"),
                    "xccl": ("xpu",), "hccl": ("npu",)}


def backend_device_types(backend: str) -> tuple[str, ...]:
    """Device types a backend string takes: ``"gloo"`` -> ``("cpu",)``, ``"nccl"`` -> ``("cuda",)``, and a
    per-device string ``"cpu:gloo,cuda:nccl"`` -> ``("cpu", "cuda")``."""
    b = str(backend).lower().strip()
    if ":" in b:
        return tuple(part.split(":", 1)[0].strip() for part in b.split(",") if part.strip())
    if b not in _BACKEND_DEVICES:
        raise ValueError(f"unknown torch.distributed backend {backend!r}: expected one of "
                         f"{sorted(_BACKEND_DEVICES)} or a 'cpu:gloo,cuda:nccl' string")
    return _BACKEND_DEVICES[b]


def collective_device(group=None, prefer=None):
    """The device of the tensors that collectives on ``group`` take: the CPU for gloo, this rank's current
    GPU (``torch.cuda.current_device()``, set by accelerate / ``torch.cuda.set_device``) for NCCL.

    A group that takes several device types (``"cpu:gloo,cuda:nccl"``, ucc) uses ``prefer`` (the device the
    data already lives on) when it is one of them, else the accelerator.
    """
    import torch

    types = backend_device_types(_dist().get_backend(group))
    if prefer is not None:
        prefer = torch.device(prefer)
        if prefer.type in types:
            if prefer.type == "cuda" and prefer.index is None:
                return torch.device("cuda", torch.cuda.current_device())
            return prefer
    accel = [t for t in types if t != "cpu"]
    if not accel:
        return torch.device("cpu")
    t = accel[0]
    return torch.device(t, getattr(torch, t).current_device())


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
    >>> scores, rows = index.search_tensors(q_on_gpu, 10)         # int ids: tensors on q's device
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

    def device(self, prefer=None):
        """The device this index's collectives use (see :func:`collective_device`)."""
        return collective_device(self.group, prefer)

    def __len__(self) -> int:
        """Rows over all shards (collective)."""
        import torch

        n = torch.tensor([len(self.local)], dtype=torch.long, device=self.device())
        _dist().all_reduce(n, group=self.group)
        return int(n.item())

    def _str_ids(self) -> bool:
        return len(self.local) > 0 and not getattr(self.local, "int_ids", True)

    def _gather_rows(self, x, flag: bool = False):
        """all-gather ``(b_r, ...)`` tensors with different b_r (on the collective device): pad to the max,
        gather, strip. ``flag`` rides along with the sizes; returns ``(rows, sizes, any rank's flag)``."""
        import torch

        dist = _dist()
        head = torch.tensor([x.shape[0], int(flag)], dtype=torch.long, device=x.device)
        heads = [torch.zeros_like(head) for _ in range(self.world)]
        dist.all_gather(heads, head, group=self.group)
        heads = torch.stack(heads).tolist()  # one host sync: the sizes decide the shapes below
        sizes = [int(h[0]) for h in heads]
        m = max(sizes) if sizes else 0
        padded = torch.zeros((m,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
        padded[: x.shape[0]] = x
        bufs = [torch.zeros_like(padded) for _ in range(self.world)]
        dist.all_gather(bufs, padded, group=self.group)
        return torch.cat([buf[:s] for buf, s in zip(bufs, sizes)], 0), sizes, any(h[1] for h in heads)

    def _search(self, q, k: int):
        """The collective search: ``(scores (B, k), ids (B, k) tensor or ndarray of str, query device)``."""
        import torch

        dist = _dist()
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        x = as_float32_tensor(q, self.dim, what="queries")  # (B, d) on the queries' device
        out_dev = x.device
        dev = self.device(prefer=out_dev)
        allq, sizes, str_ids = self._gather_rows(x.to(dev), flag=self._str_ids())  # (sum B, d)
        s, pos = self.local.search_positions(allq, k)  # (sum B, k); the local index moves the queries itself
        s, pos = s.to(dev, torch.float32).contiguous(), pos.to(dev)
        gathered_s = [torch.zeros_like(s) for _ in range(self.world)]
        dist.all_gather(gathered_s, s, group=self.group)
        lo = sum(sizes[: self.rank])
        hi = lo + sizes[self.rank]
        cand_s = torch.cat([g[lo:hi] for g in gathered_s], 1)  # (B, world * k)
        top_s, top_j = cand_s.topk(k, dim=1, largest=self.metric == "ip", sorted=True)  # (B, k)
        if str_ids:  # object gather (str ids are for tools, not the training loop)
            ids = self.local.lookup(pos.cpu())
            gathered_ids: list[Any] = [None] * self.world
            dist.all_gather_object(gathered_ids, ids, group=self.group)
            cand_ids = np.concatenate([np.asarray(g[lo:hi], dtype=object) for g in gathered_ids], 1)
            return top_s.to(out_dev), np.take_along_axis(cand_ids, top_j.cpu().numpy(), 1), out_dev
        t = self.local.lookup_tensor(pos).contiguous()  # (sum B, k) int64 on dev
        bufs = [torch.zeros_like(t) for _ in range(self.world)]
        dist.all_gather(bufs, t, group=self.group)
        cand_ids = torch.cat([b[lo:hi] for b in bufs], 1)  # (B, world * k)
        return top_s.to(out_dev), cand_ids.gather(1, top_j).to(out_dev), out_dev

    def search(self, q, k: int):
        """Collective top-k over all shards: ``(scores (B, k) tensor, ids (B, k) ndarray)`` for this rank's B.
        Scores are on the queries' device (the CPU for array queries)."""
        scores, ids, _ = self._search(q, k)
        return scores, ids if isinstance(ids, np.ndarray) else ids.cpu().numpy()

    def search_tensors(self, q, k: int):
        """Collective top-k for int ids: ``(scores (B, k) float32, ids (B, k) int64)``, both on the queries'
        device, with no host round trip beyond the gathered batch sizes."""
        scores, ids, _ = self._search(q, k)
        if isinstance(ids, np.ndarray):
            raise ValueError("search_tensors needs int ids; a shard holds str ids (use search)")
        return scores, ids

    # persistence -------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Collective: each rank writes ``DIR/shard-RRRRR-of-WWWWW``; rank 0 then writes ``DIR/meta.json``."""
        dist = _dist()
        folder = Path(directory)
        self.local.save(folder / f"shard-{self.rank:05d}-of-{self.world:05d}")
        import torch

        n = torch.tensor([len(self.local)], dtype=torch.long, device=self.device())
        bufs = [torch.zeros_like(n) for _ in range(self.world)]
        dist.all_gather(bufs, n, group=self.group)
        counts = [int(c) for c in torch.cat(bufs).tolist()]
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

