"""The trainer's view of the corpus index: search by corpus row, refresh by policy, save/load for resume.

It wraps :class:`jmlr.index.AsyncRefresher` (versioned, double-buffered, swapped between steps). Under
torch.distributed each rank indexes its own contiguous shard of the corpus and searches go through
:class:`jmlr.index.sharded.ShardedIndex` (a collective: every rank calls ``search`` the same number of times).
Index ids are global corpus row numbers, so results index ``corpus`` directly.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


def refresh_policy(cfg) -> str:
    """The AsyncRefresher policy string for a :class:`~jmlr.config.RefreshConfig`."""
    parts = []
    if cfg.schedule:
        parts.append(cfg.schedule)
    elif cfg.every:
        parts.append(f"every:{int(cfg.every)}")
    if cfg.staleness_threshold is not None:
        period = max(int(cfg.every or 50) // 2, 1)
        parts.append(f"recall<{cfg.staleness_threshold}@{period}")
    return "|".join(parts) or "never"


def budget_kwargs(cfg) -> dict:
    """The AsyncRefresher arguments of a budgeted refresh (``refresh.budget``, ``full_every``, ...)."""
    return {"budget": cfg.budget or None, "full_every": int(cfg.full_every), "neighbours": int(cfg.neighbours),
            "coverage": float(cfg.coverage)}


class RetrievalState:
    """Index + refresher for one training run (see module docstring)."""

    def __init__(self, retriever, doc_texts: list[str], cfg, rank: int = 0, world: int = 1, progress: bool = False,
                 precision=None):
        from jmlr.core.precision import resolve_precision

        self.retriever = retriever
        # corpus encoding runs under the run's precision (a resolved Precision, or cfg.optim.precision here)
        self.precision = precision if precision is not None else resolve_precision(cfg.optim.precision, "cpu")
        self.doc_texts = doc_texts
        self.cfg = cfg
        self.rank, self.world = rank, world
        n = len(doc_texts)
        if world > 1:
            from jmlr.index.sharded import shard_range

            self.start, self.end = shard_range(n, rank, world)
        else:
            self.start, self.end = 0, n
        self.progress = progress
        self.policy = refresh_policy(cfg.refresh)
        self.refresher = None

    # ------------------------------------------------------------------ lifecycle
    def build(self, index=None) -> None:
        """Encode this rank's rows with the current doc tower and index them (version 0), or adopt ``index``."""
        from jmlr.index import AsyncRefresher

        ic = self.cfg.index
        kwargs = {"dtype": ic.storage} if ic.type == "exact" else {}
        rows = list(range(self.start, self.end))
        self.refresher = AsyncRefresher(
            self.retriever, (rows, self.doc_texts[self.start:self.end]), policy=self.policy, index_type=ic.type,
            index_kwargs=kwargs, probe_size=self.cfg.refresh.probe_size, seed=self.cfg.seed, index=index,
            autocast_dtype=self.precision.dtype, progress=self.progress, **budget_kwargs(self.cfg.refresh))

    def load(self, folder: str | Path, version: int | None = None) -> None:
        """Adopt the index saved by :meth:`save` (the exact index a checkpoint was trained against)."""
        from jmlr.index import load_index

        folder = Path(folder)
        shard = folder / f"rank-{self.rank}" if self.world > 1 else folder
        index = load_index(shard)
        if version is not None:
            index.version = version
        self.build(index=index)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.refresher.index.save(folder / f"rank-{self.rank}" if self.world > 1 else folder)

    def finish(self) -> None:
        """End of training: bring the index in line with the final doc tower (blocking) for evaluation."""
        if self.refresher.enabled:
            self.refresher.refresh_now(blocking=True)

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
        """Top-``k`` (scores (B, k) float32, corpus rows (B, k) int64) for query embeddings ``q (B, d)``.

        ``report``: tell a budgeted refresher which passages were retrieved (training searches; evaluation
        passes False so that dev/test questions do not steer what gets re-encoded)."""
        index = self.refresher.index
        if self.world > 1:
            from jmlr.index.sharded import ShardedIndex

            index = ShardedIndex(index)
        scores, ids = index.search(q.detach().float().cpu(), k)
        if report:
            self.refresher.report_searched(ids)  # the pools a budgeted refresh re-encodes first
        return torch.as_tensor(scores, dtype=torch.float32), torch.as_tensor(ids, dtype=torch.long)

    @torch.no_grad()
    def embeddings(self, rows: torch.Tensor) -> torch.Tensor:
        """Doc embeddings ``(B, K, d)`` of corpus ``rows (B, K)`` as the served index holds them (query-side-only
        scoring and candidate sampling), or freshly encoded when the index keeps no vectors locally."""
        index = self.refresher.index
        store = getattr(index, "embeddings", None)
        if self.world == 1 and store is not None and len(store) == len(self.doc_texts):
            flat = rows.reshape(-1)
            emb = store[flat].float()
            scales = getattr(index, "scales", None)
            if scales is not None:
                emb = emb * scales[flat].float().unsqueeze(-1)
            return emb.view(*rows.shape, -1)
        texts = [self.doc_texts[j] for j in rows.reshape(-1).tolist()]
        emb = self.retriever.encode_docs(texts, batch_size=max(len(texts), 1), progress=False).float()
        return emb.view(*rows.shape, -1)

    def stats(self) -> dict:
        s = self.refresher.stats() if self.refresher is not None else {}
        s.pop("records", None)
        s["policy"] = self.policy
        return s
