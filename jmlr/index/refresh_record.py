"""What a refresh leaves behind: its :class:`RefreshRecord`, the :class:`RefreshError` of a failed one, and
:func:`probe_agreement`, the stale-vs-fresh measure behind staleness checks and swap records."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


class RefreshError(RuntimeError):
    """A background refresh failed; raised in the training thread at its next refresher call."""


@dataclass
class RefreshRecord:
    """One refresh: what triggered it, how long each phase took, and how long the loop waited."""

    version: int
    reason: str
    mode: str  # "async" | "sync"
    trigger_step: int | None
    swap_step: int | None = None
    snapshot_s: float = 0.0  # copying the doc-tower weights (loop waits)
    encode_s: float = 0.0  # re-encoding the corpus (background for async)
    build_s: float = 0.0  # building the new index (background for async)
    ready_s: float = 0.0  # trigger -> new index ready
    wait_s: float = 0.0  # loop blocked in wait() / refresh_now() for an in-flight refresh
    swap_s: float = 0.0  # swapping the new index in (loop waits)
    stall_s: float = 0.0  # total time the loop waited for this refresh
    probe_cosine: float | None = None  # old vs new probe embeddings at the swap
    probe_recall: float | None = None  # old vs new probe top-k at the swap
    scope: str = "full"  # "full" | "partial" (budgeted)
    encoded: int = 0  # passages re-encoded
    selected: dict = field(default_factory=dict)  # partial: passages taken from {"pool", "neighbours", "random"}
    _t_trigger: float = field(default=0.0, repr=False)
    _rows: Any = field(default=None, repr=False)  # partial: the positions to re-encode (np.int64), else None


def probe_agreement(stale, fresh, k: int, queries=None) -> tuple[float, float]:
    """Mean row cosine between ``stale (P, d)`` and ``fresh (P, d)``, and Recall@k of the stale top-k against
    the fresh top-k within the probe set, for ``queries (Q, d)`` (default: the fresh rows)."""
    stale = torch.as_tensor(np.asarray(stale), dtype=torch.float32)
    fresh = torch.as_tensor(np.asarray(fresh), dtype=torch.float32)
    cos = torch.nn.functional.cosine_similarity(stale, fresh, dim=1).mean().item()
    q = fresh if queries is None else torch.as_tensor(np.asarray(queries), dtype=torch.float32)
    kk = min(k, fresh.shape[0])
    top_stale = (q @ stale.T).topk(kk, dim=1).indices  # (Q, kk)
    top_fresh = (q @ fresh.T).topk(kk, dim=1).indices  # (Q, kk)
    hits = (top_stale.unsqueeze(2) == top_fresh.unsqueeze(1)).any(2).float().sum(1)  # (Q,)
    return float(cos), float((hits / kk).mean().item())
