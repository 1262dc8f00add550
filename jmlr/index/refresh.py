"""AsyncRefresher: keep a corpus index in step with a doc encoder that trains, without stopping the loop.

A refresh snapshots the doc-tower weights (one memcpy, between steps), re-encodes the corpus in a
background worker (a thread, or a persistent process), builds a new index next to the one being served
(double buffering), and the training thread swaps it in at its next :meth:`AsyncRefresher.maybe_refresh`
call; the version increments. The loop only waits for the snapshot copy and the swap.

Policies (``policy=``): ``"every:500"`` (or ``500``), a schedule ``"0-1000:500,1000-:1000"`` (interval
per step range), a staleness trigger ``"recall<0.9@50"`` / ``"cosine<0.98@50"`` (measured on the probe
set every 50 steps), combinations with ``|``, or ``"never"``.

Staleness is measured on a probe set of a few hundred corpus passages: the cosine between their embeddings
in the served index (stale) and under the current doc tower (fresh), and Recall@k of the top-k under the
stale embeddings against the top-k under the fresh ones, within the probe set.

Refresh under a compute budget (``budget=``, ``full_every=``): a due refresh re-encodes only ``budget``
passages (a fraction of the corpus, or a count): first those the loop searched since the last refresh (the
top-K' pools it reported through :meth:`AsyncRefresher.report_searched`, most often retrieved first), then
their nearest neighbours in the served index (``neighbours`` per pooled passage), then a random slice for
coverage (at least ``coverage`` of the budget). The new index is built from the served embeddings with those
rows replaced, next to the served one, and swapped in exactly like a full refresh (one reference assignment
between steps), so a search sees either the old or the new index. A full re-encode still happens when
``full_every`` steps have passed since the last full one (0: never after the initial build).

>>> refresher = AsyncRefresher(dual, corpus, policy="every:200", index_type="exact")     # doctest: +SKIP
>>> for step in range(steps):
...     refresher.maybe_refresh(step)              # swaps a finished index in, or starts a refresh
...     scores, ids = refresher.index.search(dual.embed_queries(qs).detach(), K)
...     ...                                          # train
>>> refresher.stats()["stall_s_total"]
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import re
import threading
import time
import traceback
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .base import corpus_parts

logger = logging.getLogger(__name__)


class RefreshError(RuntimeError):
    """A background refresh failed; raised in the training thread at its next refresher call."""


# ============================================================================ policies

class RefreshPolicy:
    """Decides, between steps, whether a refresh is due. ``due`` returns a reason string or None."""

    def due(self, step: int, refresher: "AsyncRefresher") -> str | None:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class Never(RefreshPolicy):
    """Never refresh (e.g. query-side-only training)."""

    def due(self, step, refresher):
        return None


def _grid_due(step: int, start: int, interval: int, last_trigger: int) -> bool:
    """Due when the latest grid point ``start + j * interval <= step`` (not step 0) is after the last trigger;
    a refresh still in flight at a grid point starts at the first call after it."""
    g = start + (step - start) // interval * interval
    return g > 0 and g > last_trigger


@dataclass
class EveryN(RefreshPolicy):
    """Refresh at steps n, 2n, 3n, ..."""

    n: int

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"refresh interval must be >= 1 step, got {self.n}")

    def due(self, step, refresher):
        return f"every {self.n}" if _grid_due(step, 0, self.n, refresher.last_trigger_step) else None


@dataclass
class Schedule(RefreshPolicy):
    """Interval per step range ``[(start, end or None, interval), ...]``: refreshes at ``start + j * interval``
    inside each range (``"0-1000:500,1000-:1000"`` gives 500, 1000, 2000, ...); no refresh outside the ranges."""

    ranges: list[tuple[int, int | None, int]]

    def range_of(self, step: int) -> tuple[int, int | None, int] | None:
        for a, b, r in self.ranges:
            if step >= a and (b is None or step < b):
                return a, b, r
        return None

    def due(self, step, refresher):
        rng = self.range_of(step)
        if rng is None:
            return None
        a, _, r = rng
        return f"schedule {r}" if _grid_due(step, a, r, refresher.last_trigger_step) else None


@dataclass
class StalenessTrigger(RefreshPolicy):
    """Measure staleness every ``check_every`` steps; refresh when recall or cosine falls below a floor."""

    min_recall: float | None = None
    min_cosine: float | None = None
    check_every: int = 50
    _last_check: int = field(default=-(10 ** 12), repr=False)

    def due(self, step, refresher):
        if step - self._last_check < self.check_every:
            return None
        self._last_check = step
        st = refresher.staleness()
        if self.min_recall is not None and st["recall"] < self.min_recall:
            return f"recall@{st['k']} {st['recall']:.3f} < {self.min_recall}"
        if self.min_cosine is not None and st["cosine"] < self.min_cosine:
            return f"cosine {st['cosine']:.4f} < {self.min_cosine}"
        return None


@dataclass
class AnyOf(RefreshPolicy):
    """Due when any of the policies is due."""

    policies: list[RefreshPolicy]

    def due(self, step, refresher):
        for p in self.policies:
            r = p.due(step, refresher)
            if r:
                return r
        return None


_GRAMMAR = ("expected 'never', an interval ('500' or 'every:500'), a schedule ('0-1000:500,1000-:1000'), "
            "a staleness trigger ('recall<0.9@50', 'cosine<0.98@20'), or several joined by '|'")


def parse_policy(spec) -> RefreshPolicy:
    """Build a :class:`RefreshPolicy` from a spec string, an int (every N), None (never), or a policy (any
    object with ``due(step, refresher) -> reason or None``)."""
    if isinstance(spec, RefreshPolicy) or callable(getattr(spec, "due", None)):
        return spec
    if spec is None or spec is False:
        return Never()
    if isinstance(spec, int):
        return EveryN(spec) if spec > 0 else Never()
    if not isinstance(spec, str):
        raise ValueError(f"refresh policy {spec!r}: {_GRAMMAR}")
    s = spec.replace(" ", "").lower()
    if "|" in s:
        return AnyOf([parse_policy(p) for p in s.split("|")])
    if s in ("never", "none", "off", "0", ""):
        return Never()
    m = re.fullmatch(r"(?:every:)?(\d+)", s)
    if m:
        return EveryN(int(m.group(1)))
    m = re.fullmatch(r"(recall|cosine)<([0-9.]+)(?:@(\d+))?", s)
    if m:
        floor, every = float(m.group(2)), int(m.group(3) or 50)
        return (StalenessTrigger(min_recall=floor, check_every=every) if m.group(1) == "recall"
                else StalenessTrigger(min_cosine=floor, check_every=every))
    if ":" in s and "-" in s:
        ranges = []
        for part in s.split(","):
            m = re.fullmatch(r"(\d+)-(\d*):(\d+)", part)
            if not m:
                raise ValueError(f"refresh schedule {spec!r}: part {part!r} is not START-END:INTERVAL "
                                 "(END may be empty for 'until the end')")
            a, b, r = int(m.group(1)), int(m.group(2)) if m.group(2) else None, int(m.group(3))
            if r < 1 or (b is not None and b <= a):
                raise ValueError(f"refresh schedule {spec!r}: part {part!r} needs END > START and INTERVAL >= 1")
            ranges.append((a, b, r))
        return Schedule(ranges)
    raise ValueError(f"refresh policy {spec!r}: {_GRAMMAR}")


# ============================================================================ records

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
    import torch

    stale = torch.as_tensor(np.asarray(stale), dtype=torch.float32)
    fresh = torch.as_tensor(np.asarray(fresh), dtype=torch.float32)
    cos = torch.nn.functional.cosine_similarity(stale, fresh, dim=1).mean().item()
    q = fresh if queries is None else torch.as_tensor(np.asarray(queries), dtype=torch.float32)
    kk = min(k, fresh.shape[0])
    top_stale = (q @ stale.T).topk(kk, dim=1).indices  # (Q, kk)
    top_fresh = (q @ fresh.T).topk(kk, dim=1).indices  # (Q, kk)
    hits = (top_stale.unsqueeze(2) == top_fresh.unsqueeze(1)).any(2).float().sum(1)  # (Q,)
    return float(cos), float((hits / kk).mean().item())


# ============================================================================ the refresher

def _amp_name(dtype: Any) -> str | None:
    """``None`` (fp32), ``"bfloat16"`` or ``"float16"``: a picklable name for the worker process."""
    import torch

    names = {None: None, "fp32": None, "float32": None, torch.float32: None, "bf16": "bfloat16",
             "bfloat16": "bfloat16", torch.bfloat16: "bfloat16", "fp16": "float16", "float16": "float16",
             torch.float16: "float16"}
    try:
        return names[dtype]
    except (KeyError, TypeError):
        raise ValueError(f"autocast_dtype must be None, 'bfloat16', 'float16' or a torch dtype, got {dtype!r}") from None


class AsyncRefresher:
    """Versioned, double-buffered corpus index that follows a training doc tower.

    Args:
        dual: the :class:`~jmlr.retriever.DualEncoder` being trained (its doc tower is snapshotted).
        corpus: a ``jmlr.data.Corpus`` or an ``(ids, texts)`` pair.
        policy: when to refresh (see the module doc); ``"never"`` for a fixed index.
        index_type: ``exact`` or a faiss type (``flat``, ``ivf``, ``hnsw``, ...); ``index_kwargs`` go to it.
            ``index_factory(dim) -> index`` replaces both.
        worker: ``"thread"`` (a background thread in this process) or ``"process"`` (a persistent spawned
            process; weights and embeddings travel through shared memory).
        worker_threads: intra-op threads of the worker (default: half of ``torch.get_num_threads()``).
            With OpenMP builds of torch this is per thread, so the training thread keeps its own count.
        batch_size, autocast_dtype: encoding batch size and autocast dtype (``None``/``"fp32"``, ``"bfloat16"``,
            ``"float16"`` or a torch dtype; the trainer passes its resolved ``optim.precision``), applied on the
            doc tower's device through :func:`jmlr.core.precision.autocast`.
        probe_size, probe_k, probe_queries: the staleness probe (passages, k, optional query texts).
        index: an already built index for the current weights (else one is built now, synchronously).
        start_step: the step the index is fresh at (set it when resuming, so that no refresh is due at once).
        budget: passages re-encoded per refresh: a fraction of the corpus (``0 < budget < 1``) or a count
            (``>= 1``); ``None``/``0`` re-encodes everything each time (see the module doc).
        full_every: with a budget, a full refresh when this many steps have passed since the last full one
            (0: never after the initial build).
        neighbours: served-index neighbours taken per pooled passage (budgeted refresh).
        coverage: the share of the budget kept for the random slice (budgeted refresh).
    """

    def __init__(self, dual, corpus, *, policy="every:1000", index_type: str = "exact",
                 index_kwargs: dict[str, Any] | None = None, index_factory: Callable[[int], Any] | None = None,
                 worker: str = "thread", worker_threads: int | None = None, batch_size: int = 64,
                 autocast_dtype: Any = None, probe_size: int = 256, probe_k: int = 10,
                 probe_queries: Sequence[str] | None = None, seed: int = 0, index=None, start_step: int = 0,
                 progress: bool = False, budget: float | int | None = None, full_every: int = 0,
                 neighbours: int = 4, coverage: float = 0.2, embedding_cache=None):
        import torch

        if worker not in ("thread", "process"):
            raise ValueError(f"worker must be 'thread' or 'process', got {worker!r}")
        autocast_dtype = _amp_name(autocast_dtype)
        self.dual = dual
        self.ids, self.texts, self.corpus_fingerprint = corpus_parts(corpus)
        if not self.ids:
            raise ValueError("the corpus is empty")
        self.policy = parse_policy(policy)
        self.index_type = index_type
        self.index_kwargs = dict(index_kwargs or {})
        self.index_factory = index_factory
        self.worker = worker
        self.worker_threads = int(worker_threads or max(1, torch.get_num_threads() // 2))
        self.batch_size = int(batch_size)
        self.autocast_dtype = autocast_dtype
        self.probe_k = int(probe_k)
        self.progress = progress
        self.last_trigger_step = int(start_step)

        rng = np.random.default_rng(seed)
        n = len(self.ids)
        self.probe_rows = np.sort(rng.choice(n, size=min(int(probe_size), n), replace=False))
        self.probe_queries = list(probe_queries) if probe_queries is not None else None
        self.budget = _budget_rows(budget, n)
        if int(full_every) < 0 or int(neighbours) < 0 or not 0.0 <= float(coverage) <= 1.0:
            raise ValueError(f"full_every and neighbours must be >= 0 and coverage in [0, 1]; got full_every="
                             f"{full_every}, neighbours={neighbours}, coverage={coverage}")
        self.full_every = int(full_every)
        self.neighbours = int(neighbours)
        self.coverage = float(coverage)
        self.last_full_step = int(start_step)
        self._rng = np.random.default_rng([seed, 17])
        self._hits = np.zeros(n, dtype=np.int32) if self.budget is not None else None  # searches since a refresh
        self._pos_of: dict | None = None
        self._served: Any = None  # (n, d) float32 torch: the embeddings the served index holds (budgeted mode)

        self._tokens = dual.tokenize(self.texts, "doc")  # once: the corpus does not change
        self._snap = dual.doc_snapshot()  # the worker's private copy of the doc tower
        self._lock = threading.Lock()
        self._job: threading.Thread | None = None
        self._ready: tuple | None = None
        self._error: tuple[BaseException, str, RefreshRecord] | None = None
        self._records: list[RefreshRecord] = []
        self._staleness_checks: list[float] = []
        self._proc = None
        self._finalizer = None
        self._warned_frozen = False

        t0 = time.perf_counter()
        self.initial_from_cache = False
        self.full_encode_s: float | None = None  # one full encode of this corpus (measured, or as the cache recorded)
        if index is None:
            emb = self._initial_embeddings(embedding_cache)
            index = self._build(emb, version=0, fingerprint=self._snapshot_fingerprint())
            self._probe_emb = emb[self.probe_rows].clone()
            if self.budget is not None:
                self._served = emb
        else:
            self._probe_emb = self._encode_probe_with(self._snap.doc_model)
            if self.budget is not None:
                self._served = _index_vectors(index, n)
        self._index = index
        self.initial_build_s = time.perf_counter() - t0
        if worker == "process" and not self.dual.doc_frozen and not isinstance(self.policy, Never):
            self._start_process()

    # ------------------------------------------------------------------ public state
    @property
    def index(self):
        """The index being served (swapped only inside :meth:`maybe_refresh`, :meth:`wait`, :meth:`refresh_now`)."""
        return self._index

    @property
    def version(self) -> int:
        return int(self._index.version)

    @property
    def in_flight(self) -> bool:
        """True while a background refresh runs or waits to be swapped in."""
        return self._job is not None

    @property
    def served_embeddings(self):
        """Budgeted mode: the ``(n, d)`` float32 rows the served index holds (do not modify); else None."""
        return self._served

    @property
    def records(self) -> list[RefreshRecord]:
        return list(self._records)

    @property
    def enabled(self) -> bool:
        """False in query-side-only mode (frozen doc tower) or with policy 'never'."""
        return not self.dual.doc_frozen and not isinstance(self.policy, Never)

    # ------------------------------------------------------------------ the training-thread API
    def maybe_refresh(self, step: int) -> bool:
        """Call between steps. Raises a failed worker's error, swaps a finished index in, starts a refresh
        when the policy says so. Returns True when a new index was swapped in."""
        self._raise_error()
        swapped = self._swap_if_ready(step)
        if self._job is None:
            if self.dual.doc_frozen:
                if not self._warned_frozen:
                    logger.info("doc tower frozen (query-side-only): the index never goes stale; no refresh")
                    self._warned_frozen = True
            else:
                reason = self.policy.due(step, self)
                if reason:
                    self._trigger(step, reason)
        return swapped

    def refresh_now(self, blocking: bool = True, step: int | None = None) -> RefreshRecord | None:
        """Refresh at once. ``blocking=True`` is the synchronous baseline: finish any in-flight refresh, then
        snapshot, re-encode and rebuild in this thread and swap; the whole time counts as stall.
        ``blocking=False`` starts a background refresh (no-op while one is in flight)."""
        self._raise_error()
        if not blocking:
            if self._job is None:
                self._trigger(self.last_trigger_step if step is None else step, "manual")
            return None
        t_all = time.perf_counter()
        self.wait()
        rec = RefreshRecord(version=self.version + 1, reason="manual" if step is None else "sync", mode="sync",
                            trigger_step=step)
        t0 = time.perf_counter()
        self._copy_weights()
        rec.snapshot_s = time.perf_counter() - t0
        self._plan(rec, step)
        rows = self._rows_to_encode(rec)
        emb, index = self._encode_and_build(rec, lambda: self._encode_here(rows))
        rec.ready_s = time.perf_counter() - t_all
        if step is not None:
            self.last_trigger_step = step
        self._swap(index, rec, emb[self.probe_rows].clone(), step, emb)
        rec.stall_s = time.perf_counter() - t_all
        return rec

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the in-flight refresh is built, then swap it in. Returns True if one was swapped."""
        job = self._job
        if job is None:
            return False
        t0 = time.perf_counter()
        job.join(timeout)
        if job.is_alive():
            return False
        self._raise_error()
        with self._lock:
            if self._ready is not None:
                self._ready[1].wait_s += time.perf_counter() - t0
        return self._swap_if_ready(None)

    def staleness(self, k: int | None = None) -> dict[str, Any]:
        """Cosine and Recall@k between the served (stale) probe embeddings and the current doc tower's.

        Costs one encode of the probe passages (and of ``probe_queries`` if given) with the live towers.
        """
        import torch

        k = int(k or self.probe_k)
        t0 = time.perf_counter()
        fresh = self._encode_probe_with(self.dual.doc_model)
        queries = None
        if self.probe_queries:
            queries = self.dual.encode_queries(self.probe_queries, batch_size=self.batch_size, progress=False)
        with torch.no_grad():
            cos, rec = probe_agreement(self._probe_emb, fresh, k, queries)
        seconds = time.perf_counter() - t0
        self._staleness_checks.append(seconds)
        return {"cosine": cos, "recall": rec, "k": k, "n_probe": len(self.probe_rows), "version": self.version,
                "seconds": seconds}

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

    def stats(self) -> dict[str, Any]:
        """Counts, durations and the loop's stall time per refresh."""
        recs = self._records
        stall = [r.stall_s for r in recs]
        return {
            "budget": self.budget,
            "full_every": self.full_every,
            "partial_refreshes": sum(r.scope == "partial" for r in recs),
            "encoded_total": int(sum(r.encoded for r in recs)),
            "refreshes": len(recs),
            "async_refreshes": sum(r.mode == "async" for r in recs),
            "sync_refreshes": sum(r.mode == "sync" for r in recs),
            "version": self.version,
            "in_flight": self.in_flight,
            "worker": self.worker,
            "worker_threads": self.worker_threads,
            "initial_build_s": self.initial_build_s,
            "initial_from_cache": self.initial_from_cache,
            "stall_s": stall,
            "stall_s_total": float(sum(stall)),
            "stall_s_mean": float(np.mean(stall)) if stall else 0.0,
            "ready_s": [r.ready_s for r in recs],
            "encode_s": [r.encode_s for r in recs],
            "build_s": [r.build_s for r in recs],
            "staleness_checks": len(self._staleness_checks),
            "staleness_s_total": float(sum(self._staleness_checks)),
            "records": [{k: v for k, v in dataclasses.asdict(r).items() if not k.startswith("_")} for r in recs],
        }

    def close(self) -> None:
        """Finish any in-flight refresh (not swapped) and stop the worker process."""
        job = self._job
        if job is not None:
            job.join()
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self._proc = None

    def __enter__(self) -> "AsyncRefresher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ internals: snapshot / encode / build
    def _copy_weights(self) -> None:
        """Copy the live doc tower into the worker's snapshot (between steps; the worker is idle).

        One thread: the copy is memory-bound, and an OpenMP team per tensor costs more than it saves (on a busy
        2-core machine, 2 threads made the MiniLM copy 18x slower: 0.63 s vs 0.035 s).
        """
        import torch

        dst = self._snap.doc_model.state_dict(keep_vars=True)
        with torch.no_grad(), _threads(1):
            for name, src in self.dual.doc_model.state_dict(keep_vars=True).items():
                dst[name].data.copy_(src.data)

    def _snapshot_fingerprint(self) -> str:
        from jmlr.retriever.dual_encoder import embedding_state, tensor_digest

        d = self._snap
        return tensor_digest(embedding_state(d.doc_model), {"pooling": d.pooling, "normalize": d.normalize,
                                                        "max_length": d.max_length, "prefix": d.doc_prefix})

    def _amp(self):
        from jmlr.core.precision import autocast

        return autocast(self.autocast_dtype, self._snap.doc_model)

    def _initial_embeddings(self, cache):
        """Version 0's ``(n, d)`` embeddings: from ``cache`` (an :class:`~jmlr.index.embedding_cache.EmbeddingCache`)
        when it holds this doc tower's vectors of this corpus at this dtype, else encoded here (and stored)."""
        if cache is None:
            t0 = time.perf_counter()
            emb = self._encode_here()
            self.full_encode_s = time.perf_counter() - t0
            return emb
        key = cache.key(self._snapshot_fingerprint(), self.corpus_fingerprint, self.autocast_dtype)
        emb = cache.get(key, rows=len(self.ids))
        if emb is not None:
            self.initial_from_cache = True
            self.full_encode_s = (cache.meta(key) or {}).get("encode_s")
            return emb
        t0 = time.perf_counter()
        emb = self._encode_here()
        self.full_encode_s = time.perf_counter() - t0
        cache.put(key, emb, encode_s=self.full_encode_s)
        return emb

    def _encode_here(self, rows=None):
        """Encode the corpus (or the positions ``rows``) with the snapshot in the calling thread."""
        from jmlr.retriever.dual_encoder import encode_token_lists

        d = self._snap
        toks = self._tokens if rows is None else [self._tokens[i] for i in rows]
        with self._amp():
            return encode_token_lists(d.doc_model, toks, pad_id=d.tokenizer.pad_token_id,
                                      pooling=d.pooling, normalize=d.normalize, batch_size=self.batch_size,
                                      progress=self.progress, desc="refresh: encode corpus")

    # ------------------------------------------------------------------ internals: budgeted refresh
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
        import torch

        index = self._index
        q = self._served[torch.from_numpy(pool)]  # (P, d)
        kk = min(self.neighbours + 1, len(self.ids))
        if hasattr(index, "search_positions"):
            _, pos = index.search_positions(q, kk)  # (P, kk)
            pos = pos.numpy()
        else:
            from jmlr.kernels.topk import topk

            pos = topk(q, self._served, kk)[1].numpy()
        out = np.full((len(pool), self.neighbours), -1, dtype=np.int64)
        for j, (p, row) in enumerate(zip(pool, pos)):
            row = row[(row != p) & (row >= 0)][: self.neighbours]
            out[j, : len(row)] = row
        return out

    def _encode_and_build(self, rec: RefreshRecord, encode: Callable[[], Any]):
        """Encode (all rows, or ``rec._rows``), splice into the served embeddings if partial, build the index."""
        import torch

        t0 = time.perf_counter()
        fresh = encode()
        rec.encode_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        if rec._rows is None:
            emb = fresh
        else:
            emb = self._served.clone()  # the served rows stay untouched: the new index gets its own copy
            emb[torch.from_numpy(rec._rows)] = fresh
        index = self._build(emb, rec.version, self._snapshot_fingerprint())
        rec.build_s = time.perf_counter() - t0
        return emb, index

    def _encode_probe_with(self, model):
        from jmlr.retriever.dual_encoder import encode_token_lists

        d = self._snap
        with self._amp():
            return encode_token_lists(model, [self._tokens[i] for i in self.probe_rows],
                                      pad_id=d.tokenizer.pad_token_id, pooling=d.pooling, normalize=d.normalize,
                                      batch_size=self.batch_size)

    def _build(self, emb, version: int, fingerprint: str):
        from .build import make_index

        if self.index_factory is not None:
            index = self.index_factory(emb.shape[1])
        elif self.budget is not None and self.index_type == "exact" and \
                self.index_kwargs.get("dtype", "float32") in ("float32", "fp32"):
            from .exact import ExactIndex

            # budgeted mode keeps ``emb`` as the served rows: the index wraps it instead of a second copy (each
            # refresh builds a new ``emb``, so the served index's rows are never written)
            kw = {k: v for k, v in self.index_kwargs.items() if k != "dtype"}
            index = ExactIndex.from_array(self.ids, emb.numpy(), **kw)
        else:
            index = make_index(self.index_type, emb.shape[1], **self.index_kwargs)
        if not len(index):
            index.add(self.ids, emb)
        index.version = version
        index.encoder_fingerprint = fingerprint
        index.corpus_fingerprint = self.corpus_fingerprint
        return index

    # ------------------------------------------------------------------ internals: async machinery
    def _trigger(self, step: int, reason: str) -> None:
        if self.worker == "process" and self._proc is None:
            self._start_process()
        t0 = time.perf_counter()
        self._copy_weights()
        rec = RefreshRecord(version=self.version + 1, reason=reason, mode="async", trigger_step=step)
        rec.snapshot_s = time.perf_counter() - t0
        rec._t_trigger = t0
        self.last_trigger_step = step
        self._plan(rec, step)
        self._job = threading.Thread(target=self._run_job, args=(rec,), name=f"jmlr-refresh-v{rec.version}",
                                     daemon=True)
        self._job.start()
        logger.info("refresh to version %d started at step %s (%s)", rec.version, step, reason)

    def _run_job(self, rec: RefreshRecord) -> None:
        import torch

        try:
            torch.set_num_threads(self.worker_threads)  # per thread with OpenMP torch
            try:
                import faiss

                faiss.omp_set_num_threads(self.worker_threads)
            except ImportError:  # pragma: no cover
                pass
            rows = self._rows_to_encode(rec)
            emb, index = self._encode_and_build(
                rec, (lambda: self._encode_here(rows)) if self.worker == "thread" else
                (lambda: self._encode_in_process(rows)))
            probe = emb[self.probe_rows].clone()
            rec.ready_s = time.perf_counter() - rec._t_trigger
            with self._lock:
                self._ready = (index, rec, probe, emb if self.budget is not None else None)
        except BaseException as e:  # noqa: BLE001 - re-raised in the training thread
            with self._lock:
                self._error = (e, traceback.format_exc(), rec)

    def _raise_error(self) -> None:
        with self._lock:
            err, self._error = self._error, None
        if err is None:
            return
        exc, tb, rec = err
        if self._job is not None:
            self._job.join()
            self._job = None
        raise RefreshError(f"background refresh to version {rec.version} (started at step {rec.trigger_step}) "
                           f"failed: {type(exc).__name__}: {exc}\n--- worker traceback ---\n{tb}") from exc

    def _swap_if_ready(self, step: int | None) -> bool:
        with self._lock:
            ready, self._ready = self._ready, None
        if ready is None:
            return False
        index, rec, probe, emb = ready
        self._job.join()
        self._job = None
        self._swap(index, rec, probe, step, emb)
        rec.stall_s = rec.snapshot_s + rec.wait_s + rec.swap_s
        return True

    def _swap(self, index, rec: RefreshRecord, probe, step: int | None, emb=None) -> None:
        t0 = time.perf_counter()
        old_probe = self._probe_emb
        self._index = index  # the swap: one reference assignment, in the training thread
        self._probe_emb = probe
        if self.budget is not None and emb is not None:
            self._served = emb  # what the new index holds: the base of the next partial refresh
        rec.swap_step = step
        rec.swap_s = time.perf_counter() - t0
        with _threads(1):  # small matrices: not worth an OpenMP team
            rec.probe_cosine, rec.probe_recall = probe_agreement(old_probe, probe, self.probe_k)
        self._records.append(rec)
        logger.info("swapped in index version %d at step %s (ready after %.2fs, stall %.4fs)", rec.version,
                    step, rec.ready_s, rec.snapshot_s + rec.wait_s + rec.swap_s)

    # ------------------------------------------------------------------ process worker
    def _start_process(self) -> None:
        import torch
        import torch.multiprocessing as mp

        from ._worker import process_main

        ctx = mp.get_context("spawn")
        self._snap.doc_model.share_memory()
        self._out = torch.zeros((len(self.ids), self._snap.dim), dtype=torch.float32).share_memory_()
        self._cmd_q, self._res_q = ctx.Queue(), ctx.Queue()
        d = self._snap
        settings = {"threads": self.worker_threads, "pad_id": d.tokenizer.pad_token_id, "pooling": d.pooling,
                    "normalize": d.normalize, "batch_size": self.batch_size, "autocast_dtype": self.autocast_dtype}
        self._proc = ctx.Process(target=process_main, name="jmlr-refresh-worker", daemon=True,
                                 args=(self._cmd_q, self._res_q, d.doc_model, self._tokens, self._out, settings))
        self._proc.start()
        self._job_counter = 0
        self._finalizer = weakref.finalize(self, _stop_process, self._proc, self._cmd_q)

    def _encode_in_process(self, rows=None):
        import queue

        if self._proc is None:
            raise RefreshError("the refresh worker process is not running (closed?)")
        self._job_counter += 1
        job = self._job_counter
        self._cmd_q.put(job if rows is None else (job, np.asarray(rows, dtype=np.int64)))
        while True:
            try:
                kind, got, payload = self._res_q.get(timeout=0.5)
            except queue.Empty:
                if not self._proc.is_alive():
                    raise RefreshError(f"the refresh worker process died (exit code {self._proc.exitcode})") from None
                continue
            if kind == "ready":
                continue
            if got != job:
                continue  # a stale answer
            if kind == "error":
                raise RefreshError(f"the refresh worker process failed:\n{payload}")
            n = len(self.ids) if rows is None else len(rows)
            return self._out[:n].clone()  # (n, d): the buffer is reused by the next job


@contextlib.contextmanager
def _threads(n: int):
    """Run a block with ``n`` intra-op threads in this thread, then restore the count."""
    import torch

    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if before != n:
            torch.set_num_threads(before)


def _stop_process(proc, cmd_q) -> None:
    try:
        if proc.is_alive():
            cmd_q.put(None)
            proc.join(5)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
    except (OSError, ValueError, AssertionError):  # interpreter shutdown
        pass


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
    import torch

    if hasattr(index, "vectors"):
        return index.vectors(np.arange(n)).float()
    if hasattr(index, "reconstruct_all"):
        return torch.as_tensor(index.reconstruct_all(), dtype=torch.float32)
    raise ValueError(f"a budgeted refresh needs the served vectors, but {type(index).__name__} cannot give them "
                     "back; use an exact index, or let the refresher build the first index")
