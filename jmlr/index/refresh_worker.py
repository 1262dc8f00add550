"""The refresher's worker process: a persistent spawned process that re-encodes a pre-tokenized corpus with a
doc tower held in shared memory, and the refresher's side of it (:class:`ProcessWorker`).

Started once per :class:`~jmlr.index.refresh.AsyncRefresher` (``worker="process"``) with the spawn method.
The parent copies fresh weights into the shared tensors between jobs (never during one), sends a job id,
and reads the embeddings from a shared ``(n, d)`` buffer when the worker answers. This module stays light: the
spawned process imports it (and through it torch, the precision helper and the encoding helpers) and nothing else.
"""
from __future__ import annotations

import queue
import time
import traceback
import weakref

import numpy as np
import torch
import torch.multiprocessing as mp

from jmlr.core.precision import autocast
from jmlr.retriever.embedding import EncodeCancelled, encode_token_lists

from .refresh_record import RefreshError


def process_main(cmd_q, res_q, model, token_lists, out, settings: dict) -> None:
    """Worker loop: ``cmd_q`` gets job ids, or ``(job id, positions)`` to encode only those rows into the first
    rows of ``out`` (``None`` stops); ``res_q`` gets ("ok"|"error", job, payload)."""
    torch.set_num_threads(int(settings["threads"]))
    model.eval()
    amp = settings.get("autocast_dtype")
    res_q.put(("ready", None, time.perf_counter()))
    while True:
        job = cmd_q.get()
        if job is None:
            return
        rows = None
        if isinstance(job, tuple):  # (job id, positions): a budgeted refresh encodes only those rows
            job, rows = job
        try:
            t0 = time.perf_counter()
            toks = token_lists if rows is None else [token_lists[i] for i in rows]
            with autocast(amp, model):
                encode_token_lists(model, toks, pad_id=settings["pad_id"], pooling=settings["pooling"],
                                   normalize=settings["normalize"], batch_size=settings["batch_size"],
                                   out=out if rows is None else out[: len(toks)])
            res_q.put(("ok", job, time.perf_counter() - t0))
        except BaseException:  # noqa: BLE001 - everything goes back to the training process
            res_q.put(("error", job, traceback.format_exc()))


class ProcessWorker:
    """The :class:`~jmlr.index.refresh.AsyncRefresher`'s client of :func:`process_main` (``worker="process"``).

    Uses the refresher's ``ids``, ``_snap`` (the doc-tower snapshot), ``_tokens``, ``worker_threads``,
    ``batch_size`` and ``autocast_dtype``; sets ``_proc``, its queues and the shared output buffer.
    """

    def _start_process(self) -> None:
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
        if self._proc is None:
            raise RefreshError("the refresh worker process is not running (closed?)")
        self._job_counter += 1
        job = self._job_counter
        self._cmd_q.put(job if rows is None else (job, np.asarray(rows, dtype=np.int64)))
        while True:
            try:
                kind, got, payload = self._res_q.get(timeout=0.5)
            except queue.Empty:
                if self._cancel.is_set():  # cancel(): stop the worker mid-encode; the next refresh starts one
                    self._proc.terminate()
                    self._proc.join(5)
                    if self._finalizer is not None:
                        self._finalizer.detach()
                    self._finalizer, self._proc = None, None
                    raise EncodeCancelled("the refresh worker process was stopped by cancel()") from None
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
