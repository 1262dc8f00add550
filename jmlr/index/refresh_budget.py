"""Refresh under a compute budget: the pools the training loop reports, and which passages a partial refresh
re-encodes (the :class:`~jmlr.index.refresh.AsyncRefresher` takes these methods from :class:`BudgetedRefresh`).

A due refresh with ``budget=`` re-encodes at most ``budget`` passages: first those the loop searched since the
last refresh (most often retrieved first), then their nearest neighbours in the served index, then a random slice
for coverage (at least ``coverage`` of the budget); a full one when ``full_every`` steps have passed since the last.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from jmlr.kernels.topk import topk

from .refresh_record import RefreshRecord


class BudgetedRefresh:
    """Uses the refresher's ``ids``, ``budget``, ``full_every``, ``neighbours``, ``coverage``, ``_hits``, ``_served``,
    ``_index`` and ``_rng``; all of it is a no-op or a full refresh without a budget."""

    def report_searched(self, ids) -> None:
        """Note the passages a search returned (``ids (B, K)`` as the index gives them, e.g. the top-K' pools).

        The next budgeted refresh re-encodes these first (most often retrieved first). Ids this refresher does
        not hold (another rank's shard, empty slots) are ignored. A no-op without a budget.
        """
        if self._hits is None:
            return
        pos = self._positions_of(ids)
        if len(pos):
            np.add.at(self._hits, pos, 1)

    def _positions_of(self, ids) -> np.ndarray:
        """Row positions (int64) of the ids this refresher holds, among ``ids`` (any shape)."""
        flat = np.asarray(ids.cpu() if hasattr(ids, "cpu") else ids).reshape(-1)
        n = len(self.ids)
        if self._pos_of is None:
            first = self.ids[0]
            contiguous = isinstance(first, (int, np.integer)) and not isinstance(first, bool) and \
                np.array_equal(np.asarray(self.ids, dtype=object).astype(np.int64), np.arange(first, first + n))
            # contiguous int ids (the trainer's corpus rows): position = id - first; else a dict
            self._pos_of = int(first) if contiguous else {i: j for j, i in enumerate(self.ids)}
        if isinstance(self._pos_of, int):
            if flat.dtype == object:
                flat = np.array([x if isinstance(x, (int, np.integer)) else -1 for x in flat], dtype=np.int64)
            pos = flat.astype(np.int64, copy=False) - self._pos_of
            return pos[(flat >= 0) & (pos >= 0) & (pos < n)]
        got = [self._pos_of.get(x.item() if hasattr(x, "item") else x) for x in flat]
        return np.array([g for g in got if g is not None], dtype=np.int64)

    def _plan(self, rec: RefreshRecord, step: int | None) -> None:
        """Decide in the training thread whether this refresh is full or budgeted, and which rows it encodes."""
        n = len(self.ids)
        full_due = self.full_every > 0 and step is not None and step - self.last_full_step >= self.full_every
        if self.budget is None or self.budget >= n or full_due or self._served is None:
            rec.scope, rec._rows, rec.encoded = "full", None, n
            if step is not None:
                self.last_full_step = step
        else:
            rec.scope = "partial"
            rec._rows = self._hits.copy()  # the pools so far; turned into rows by the worker (_select_rows)
        if self._hits is not None:
            self._hits[:] = 0  # pools reported from now on count towards the next refresh

    def _rows_to_encode(self, rec: RefreshRecord):
        """Positions a partial refresh encodes (computed off the training thread), or None for a full one."""
        if rec.scope != "partial":
            return None
        rec._rows, rec.selected = self._select_rows(rec._rows)
        rec.encoded = len(rec._rows)
        return rec._rows

    def _select_rows(self, hits: np.ndarray) -> tuple[np.ndarray, dict]:
        """Pool (most retrieved first), then neighbours, then a random slice: at most ``budget`` positions."""
        n, B = len(self.ids), self.budget
        reserve = min(B, int(np.ceil(self.coverage * B)))
        hit = np.flatnonzero(hits)
        pool = hit[np.argsort(-hits[hit], kind="stable")][: B - reserve]
        chosen = np.zeros(n, dtype=bool)
        chosen[pool] = True
        neigh = np.empty(0, dtype=np.int64)
        room = B - reserve - len(pool)
        if room > 0 and self.neighbours > 0 and len(pool):
            # the most retrieved pooled passages' neighbours; twice what the room needs, bounding the search cost
            seeds = pool[: 2 * int(np.ceil(room / self.neighbours))]
            nb = self._neighbours_of(seeds)  # (P, neighbours) positions in the served index, best first
            order = nb.T.reshape(-1)  # every pooled passage's nearest neighbour first, then the second ...
            order = order[order >= 0]
            _, first = np.unique(order, return_index=True)
            order = order[np.sort(first)]
            neigh = order[~chosen[order]][:room]
            chosen[neigh] = True
        rest = np.flatnonzero(~chosen)
        k = min(B - len(pool) - len(neigh), len(rest))
        rand = np.sort(self._rng.choice(rest, size=k, replace=False)) if k > 0 else np.empty(0, dtype=np.int64)
        rows = np.sort(np.concatenate([pool, neigh, rand]).astype(np.int64))
        return rows, {"pool": int(len(pool)), "neighbours": int(len(neigh)), "random": int(len(rand)),
                      "pool_available": int(len(hit))}

    def _neighbours_of(self, pool: np.ndarray) -> np.ndarray:
        """The ``neighbours`` nearest passages (positions) of each pooled passage by the served embeddings."""
        index = self._index
        q = self._served[torch.from_numpy(pool)]  # (P, d)
        kk = min(self.neighbours + 1, len(self.ids))
        if hasattr(index, "search_positions"):
            _, pos = index.search_positions(q, kk)  # (P, kk)
            pos = pos.numpy()
        else:
            pos = topk(q, self._served, kk)[1].numpy()
        out = np.full((len(pool), self.neighbours), -1, dtype=np.int64)
        for j, (p, row) in enumerate(zip(pool, pos)):
            row = row[(row != p) & (row >= 0)][: self.neighbours]
            out[j, : len(row)] = row
        return out


def _budget_rows(budget, n: int) -> int | None:
    """Rows per budgeted refresh: a fraction of ``n`` (``0 < budget < 1``) or a count (``>= 1``); None = full."""
    if budget is None or budget is False or budget == 0:
        return None
    b = float(budget)
    if not math.isfinite(b) or b < 0:
        raise ValueError(f"refresh budget must be a fraction in (0, 1) or a count >= 1, got {budget!r}")
    rows = int(math.ceil(b * n)) if b < 1 else int(b)
    if b >= 1 and b != int(b):
        raise ValueError(f"refresh budget {budget!r}: a count must be a whole number (or give a fraction < 1)")
    return max(1, rows)


def _index_vectors(index, n: int):
    """The ``(n, d)`` float32 vectors an index holds (for an adopted index in budgeted mode)."""
    if hasattr(index, "vectors"):
        return index.vectors(np.arange(n)).float()
    if hasattr(index, "reconstruct_all"):
        return torch.as_tensor(index.reconstruct_all(), dtype=torch.float32)
    raise ValueError(f"a budgeted refresh needs the served vectors, but {type(index).__name__} cannot give them "
                     "back; use an exact index, or let the refresher build the first index")
