"""The trainer's view of the corpus index: search by corpus row, refresh by policy, save/load for resume.

It wraps :class:`jmlr.index.AsyncRefresher` (versioned, double-buffered, swapped between steps). Under
torch.distributed each rank indexes its own contiguous shard of the corpus and searches go through
:class:`jmlr.index.sharded.ShardedIndex` (a collective: every rank calls ``search`` the same number of times).
Index ids are global corpus row numbers, so results index ``corpus`` directly.

Device: the exact index lives on ``device`` (the trainer passes ``accelerator.device``, so on a GPU the
jmlr.kernels CUDA/Triton top-k runs); queries stay on their device and results come back there. Collectives
use the process group's device (:func:`jmlr.index.sharded.collective_device`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from jmlr.core.precision import resolve_precision
from jmlr.index import AsyncRefresher, IndexMismatchError, load_index, read_meta
from jmlr.index.base import texts_fingerprint
from jmlr.index.embedding_cache import EmbeddingCache
from jmlr.index.refresh_policy import policy_from_config
from jmlr.index.settings import index_kwargs
from jmlr.index.sharded import ShardedIndex, shard_range

logger = logging.getLogger(__name__)


def refresh_policy(cfg) -> str:
    """The refresh policy of a :class:`~jmlr.config.RefreshConfig` written as a spec, for messages and stats
    (the refresher gets the policy object itself: :func:`jmlr.index.refresh_policy.policy_from_config`)."""
    return str(policy_from_config(cfg))


def budget_kwargs(cfg) -> dict:
    """The AsyncRefresher arguments of a budgeted refresh (``refresh.budget``, ``full_every``, ...)."""
    return {"budget": cfg.budget or None, "full_every": int(cfg.full_every), "neighbours": int(cfg.neighbours),
            "coverage": float(cfg.coverage)}


def _embedding_cache(ic):
    """The initial-embeddings cache of ``index.embedding_cache`` (None when off)."""
    if not ic.embedding_cache:
        return None
    return EmbeddingCache()


class RetrievalState:
    """Index + refresher for one training run (see module docstring)."""

    def __init__(self, retriever, doc_texts: list[str], cfg, rank: int = 0, world: int = 1, progress: bool = False,
                 precision=None, device=None):
        self.retriever = retriever
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        # corpus encoding runs under the run's precision (a resolved Precision, or cfg.optim.precision here)
        self.precision = precision if precision is not None else resolve_precision(cfg.optim.precision, self.device)
        self.doc_texts = doc_texts
        self.cfg = cfg
        self.rank, self.world = rank, world
        n = len(doc_texts)
        if world > 1:
            self.start, self.end = shard_range(n, rank, world)
        else:
            self.start, self.end = 0, n
        self.progress = progress
        self.policy = policy_from_config(cfg.refresh)
        self.refresher = None

    # ------------------------------------------------------------------ lifecycle
    def build(self, index=None) -> None:
        """Encode this rank's rows with the current doc tower and index them (version 0), or adopt ``index``."""
        ic = self.cfg.index
        kwargs = index_kwargs(ic.type, ic.params, ic.storage)  # index.type (a factory string too), index.params
        kwargs.update(self._index_device_kwargs(ic.type))
        rows = list(range(self.start, self.end))
        self.refresher = AsyncRefresher(
            self.retriever, (rows, self.doc_texts[self.start:self.end]), policy=self.policy, index_type=ic.type,
            index_kwargs=kwargs, probe_size=self.cfg.refresh.probe_size, seed=self.cfg.seed, index=index,
            autocast_dtype=self.precision.dtype, progress=self.progress, **budget_kwargs(self.cfg.refresh),
            embedding_cache=_embedding_cache(ic))

    def _index_device_kwargs(self, kind: str) -> dict:
        """``device=`` for an exact index off the CPU (on the CPU nothing changes: the rows stay where they are)."""
        return {"device": str(self.device)} if kind == "exact" and self.device.type != "cpu" else {}

    def load(self, folder: str | Path, version: int | None = None) -> None:
        """Adopt the index saved by :meth:`save` (the exact index a checkpoint was trained against)."""
        folder = Path(folder)
        shard = folder / f"rank-{self.rank}" if self.world > 1 else folder
        # The saved index must describe THIS corpus: same rows, same texts, same order (the fingerprint the
        # refresher recorded over (row, text) pairs), else its ids point at the wrong passages.
        rows, texts = list(range(self.start, self.end)), self.doc_texts[self.start:self.end]
        meta = read_meta(shard)
        want, have = texts_fingerprint(rows, texts), meta.get("corpus_fingerprint")
        if have is not None and have != want:
            n = int(meta["count"])
            what = (f"the index holds {n} passages but the corpus has {len(rows)}" if n != len(rows) else
                    f"both hold {n} passages, but their texts or order differ (corpus fingerprint {have} in the "
                    f"index, {want} now)")
            raise IndexMismatchError(f"{shard}: the saved index was built over another corpus: {what}; use the "
                                     "corpus the run was trained on (data.corpus), or start a fresh run")
        index = load_index(shard, corpus_fingerprint=want, **self._index_device_kwargs(meta["kind"]))
        if version is not None:
            index.version = version
        self.build(index=index)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.refresher.index.save(folder / f"rank-{self.rank}" if self.world > 1 else folder)

    def finish(self) -> None:
        """End of training: bring the index in line with the final doc tower (blocking) for evaluation. A
        refresh still in flight encodes an older snapshot, so it is dropped, not waited for."""
        if self.refresher.enabled:
            self.refresher.refresh_now(blocking=True, discard_in_flight=True)

    def close(self) -> None:
        if self.refresher is not None:
            self.refresher.close()

    # ------------------------------------------------------------------ the loop's calls
    def maybe_refresh(self, step: int) -> bool:
        r = self.refresher
        if self.cfg.refresh.asynchronous:
            return r.maybe_refresh(step)
        if r.enabled and r.policy.due(step, r):  # the synchronous baseline: the loop waits for the rebuild
            r.refresh_now(blocking=True, step=step)
            return True
        return False

    @property
    def dim(self) -> int:
        """Embedding dimension of the served index."""
        return self.refresher.index.dim

    @property
    def version(self) -> int:
        return self.refresher.version if self.refresher is not None else 0

    @property
    def refreshing(self) -> bool:
        return self.refresher is not None and self.refresher.in_flight

    @property
    def last_trigger_step(self) -> int:
        return self.refresher.last_trigger_step

    @last_trigger_step.setter
    def last_trigger_step(self, step: int) -> None:
        self.refresher.last_trigger_step = int(step)

    def search(self, q: torch.Tensor, k: int, report: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` (scores (B, k) float32, corpus rows (B, k) int64) for query embeddings ``q (B, d)``, on
        ``q``'s device (a collective when ``world > 1``).

        ``report``: tell a budgeted refresher which passages were retrieved (training searches; evaluation
        passes False so that dev/test questions do not steer what gets re-encoded)."""
        index = self.refresher.index
        q = q.detach().float()  # stays on its device: the index moves it to its own
        if self.world > 1:
            scores, ids = ShardedIndex(index).search_tensors(q, k)
        else:
            scores, pos = index.search_positions(q, k)  # (B, k), (B, k)
            scores, ids = scores.to(q.device, torch.float32), index.lookup_tensor(pos.to(q.device))
        if report:
            self.refresher.report_searched(ids)  # the pools a budgeted refresh re-encodes first
        return scores, ids

    @torch.no_grad()
    def embeddings(self, rows: torch.Tensor) -> torch.Tensor:
        """Doc embeddings ``(B, K, d)`` of corpus ``rows (B, K)`` as the served index holds them (query-side-only
        scoring and candidate sampling), or freshly encoded when the index keeps no vectors locally."""
        index = self.refresher.index
        store = getattr(index, "embeddings", None)
        if self.world == 1 and store is not None and len(store) == len(self.doc_texts):
            flat = rows.reshape(-1).to(store.device)
            emb = store[flat].float()
            scales = getattr(index, "scales", None)
            if scales is not None:
                emb = emb * scales[flat].float().unsqueeze(-1)
            return emb.view(*rows.shape, -1).to(rows.device)
        texts = [self.doc_texts[j] for j in rows.reshape(-1).tolist()]
        emb = self.retriever.encode_docs(texts, batch_size=max(len(texts), 1), progress=False).float()
        return emb.view(*rows.shape, -1).to(rows.device)

    def stats(self) -> dict:
        s = self.refresher.stats() if self.refresher is not None else {}
        s.pop("records", None)
        s["policy"] = str(self.policy)
        index = self.refresher.index if self.refresher is not None else None
        where = getattr(index, "embeddings", None) if getattr(index, "kind", "") == "exact" else index
        s["index_device"] = str(getattr(where, "device", None) or "cpu")  # where the search runs
        return s
