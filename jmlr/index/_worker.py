"""The refresh worker process: re-encodes a pre-tokenized corpus with a doc tower held in shared memory.

Started once per :class:`~jmlr.index.refresh.AsyncRefresher` (``worker="process"``) with the spawn method.
The parent copies fresh weights into the shared tensors between jobs (never during one), sends a job id,
and reads the embeddings from a shared ``(n, d)`` buffer when the worker answers.
"""
from __future__ import annotations

import time
import traceback

from jmlr.core.precision import autocast
from jmlr.retriever.embedding import encode_token_lists


def process_main(cmd_q, res_q, model, token_lists, out, settings: dict) -> None:
    """Worker loop: ``cmd_q`` gets job ids, or ``(job id, positions)`` to encode only those rows into the first
    rows of ``out`` (``None`` stops); ``res_q`` gets ("ok"|"error", job, payload)."""
    import torch

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
