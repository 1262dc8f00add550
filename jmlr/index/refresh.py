"""AsyncRefresher: keep a corpus index in step with a doc encoder that trains, without stopping the loop.

A refresh snapshots the doc-tower weights (one memcpy, between steps), re-encodes the corpus in a
background worker (a thread, or a persistent process), builds a new index next to the one being served
(double buffering), and the training thread swaps it in at its next :meth:`AsyncRefresher.maybe_refresh`
call; the version increments. The loop only waits for the snapshot copy and the swap.

Policies (``policy=``, :mod:`jmlr.index.refresh_policy`): ``"every:500"`` (or ``500``), a schedule
``"0-1000:500,1000-:1000"`` (interval per step range), a staleness trigger ``"recall<0.9@50"`` /
``"cosine<0.98@50"`` (measured on the probe set every 50 steps), combinations with ``|``, ``"never"``, or a
policy object (:func:`~jmlr.index.refresh_policy.policy_from_config` builds one from a training config).

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

The refresher's parts: the policies (:mod:`~jmlr.index.refresh_policy`), its records and probe measure
(:mod:`~jmlr.index.refresh_record`), snapshot / encode / build (:mod:`~jmlr.index.refresh_build`), the budgeted
row selection (:mod:`~jmlr.index.refresh_budget`) and the worker process (:mod:`~jmlr.index.refresh_worker`).

>>> refresher = AsyncRefresher(dual, corpus, policy="every:200", index_type="exact")     # doctest: +SKIP
>>> for step in range(steps):
...     refresher.maybe_refresh(step)              # swaps a finished index in, or starts a refresh
...     scores, ids = refresher.index.search(dual.embed_queries(qs).detach(), K)
...     ...                                          # train
>>> refresher.stats()["stall_s_total"]
"""
from __future__ import annotations
from __future__ import annotations

import dataclasses
import logging
import threading
import time
import traceback
from typing import Any, Callable, Sequence

import numpy as np
import torch

from jmlr.retriever.embedding import EncodeCancelled

from .base import corpus_parts
from .refresh_budget import BudgetedRefresh, _budget_rows, _index_vectors
from .refresh_build import SnapshotBuild, _amp_name, _threads
from .refresh_policy import (AnyOf, EveryN, Never, RefreshPolicy, Schedule, StalenessTrigger,  # noqa: F401
                             parse_policy, policy_from_config)
from .refresh_record import RefreshError, RefreshRecord, probe_agreement
from .refresh_worker import ProcessWorker

logger = logging.getLogger(__name__)


class AsyncRefresher(SnapshotBuild, BudgetedRefresh, ProcessWorker):
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
        self._cancel = threading.Event()  # set by cancel(): the in-flight job stops at its next batch
        self.cancelled = 0  # in-flight refreshes dropped by cancel() (their work superseded)
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

    def refresh_now(self, blocking: bool = True, step: int | None = None,
                    discard_in_flight: bool = False) -> RefreshRecord | None:
        """Refresh at once. ``blocking=True`` is the synchronous baseline: finish any in-flight refresh, then
        snapshot, re-encode and rebuild in this thread and swap; the whole time counts as stall.
        ``discard_in_flight=True`` cancels an in-flight refresh instead of finishing it (:meth:`cancel`): at the
        end of training its older snapshot would be re-encoded at once anyway, so finishing it only costs time.
        ``blocking=False`` starts a background refresh (no-op while one is in flight)."""
        self._raise_error()
        if not blocking:
            if self._job is None:
                self._trigger(self.last_trigger_step if step is None else step, "manual")
            return None
        t_all = time.perf_counter()
        if discard_in_flight:
            self.cancel()
        else:
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
            "cancelled": self.cancelled,
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

    def cancel(self) -> bool:
        """Drop the in-flight refresh, if any: its encode stops at the next batch (a worker process is stopped
        and restarted on the next refresh), nothing is swapped in, and the served index stays as it is. Returns
        True if a refresh was dropped. A refresh that finished before the call is dropped as well."""
        job = self._job
        if job is None:
            return False
        self._cancel.set()
        try:
            job.join()
        finally:
            self._cancel.clear()
        with self._lock:
            self._ready = None
            err, self._error = self._error, None
        self._job = None
        if err is not None and not isinstance(err[0], EncodeCancelled):
            self._error = err
            self._raise_error()
        self.cancelled += 1
        logger.info("in-flight refresh to version %d dropped", self.version + 1)
        return True

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
        try:
            torch.set_num_threads(self.worker_threads)  # per thread with OpenMP torch
            try:
                import faiss  # optional here: only its OpenMP thread count is set

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
