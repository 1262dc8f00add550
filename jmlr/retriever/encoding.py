"""Fast no-grad corpus encoding: length-sorted batches, ``inference_mode``, tokenisation overlapped with compute.

:func:`encode_texts` is what :meth:`DualEncoder.encode_docs` / :meth:`~DualEncoder.encode_queries` run:

1. Texts are ordered longest first by character count (a free proxy for token count), then cut into
   *chunks* of ``chunk_batches * batch_size`` texts.
2. A background thread tokenizes chunk ``c + 1`` (when a core is free of torch's intra-op threads; otherwise
   inline, see ``overlap``) while the calling thread runs the model on chunk ``c``; inside a chunk the rows are re-sorted by their true token count and
   padded batch by batch to that batch's longest row, so a batch carries almost no padding.
3. The forward passes run under ``torch.inference_mode`` with the model in eval mode; each batch's
   embeddings are written straight into the preallocated ``(n, d)`` float32 output in input order.

The embeddings equal those of :func:`jmlr.retriever.embedding.encode_token_lists` (the plain path, one
batch at a time) up to floating-point summation order: a row's embedding does not depend on which rows share
its batch, only on its own tokens (padding is masked out).
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .embedding import embed_tokens, tower_dim

__all__ = ["encode_texts", "padded_batches", "padding_stats", "spare_core"]


def padded_batches(token_lists: Sequence[Sequence[int]], rows: Sequence[int], batch_size: int, pad_id: int
                   ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """Yield ``(rows (b,), input_ids (b, T), attention_mask (b, T))`` over ``rows`` sorted by token count,
    longest first; each batch is padded to its own longest row (numpy fill, no per-row tensors)."""
    rows = np.asarray(rows, dtype=np.int64)
    lengths = np.fromiter((len(token_lists[r]) for r in rows), dtype=np.int64, count=len(rows))
    order = np.argsort(-lengths, kind="stable")
    rows, lengths = rows[order], lengths[order]
    for s in range(0, len(rows), batch_size):
        r, ln = rows[s:s + batch_size], lengths[s:s + batch_size]
        T = max(1, int(ln.max()))
        ids = np.full((len(r), T), pad_id, dtype=np.int64)
        mask = np.zeros((len(r), T), dtype=np.int64)
        for j, (row, n) in enumerate(zip(r, ln)):
            ids[j, :n] = token_lists[row]
            mask[j, :n] = 1
        yield r, torch.from_numpy(ids), torch.from_numpy(mask)


def padding_stats(lengths: Sequence[int], batch_size: int, chunk: int | None = None) -> dict[str, float]:
    """Real tokens vs padded slots when ``lengths`` are batched as :func:`encode_texts` does (``chunk`` texts
    re-sorted by token count at a time; None = one global sort)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    chunk = chunk or max(len(lengths), 1)
    real = int(lengths.sum())
    slots = 0
    for c in range(0, len(lengths), chunk):
        ln = np.sort(lengths[c:c + chunk])[::-1]
        for s in range(0, len(ln), batch_size):
            b = ln[s:s + batch_size]
            slots += int(b.max()) * len(b)
    return {"tokens": real, "slots": slots, "padding_fraction": 1.0 - real / max(slots, 1)}


def spare_core() -> bool:
    """True when this process may run on more cores than torch's intra-op thread count."""
    import os

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return cores > torch.get_num_threads()


def _tokenize(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    if not texts:
        return []
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=False, return_attention_mask=False,
                    return_token_type_ids=False)
    return enc["input_ids"]


def encode_texts(model: nn.Module, tokenizer, texts: Sequence[str], *, max_length: int, pooling: str,
                 normalize: bool, batch_size: int = 64, prefix: str = "", chunk_batches: int = 8,
                 overlap: bool | str = "auto", progress: bool = False, desc: str = "encode",
                 out: torch.Tensor | None = None, on_tokens: Callable[[int], None] | None = None) -> torch.Tensor:
    """No-grad embeddings ``(n, d)`` float32 on CPU of ``texts`` (in input order), written into ``out`` if given.

    Args:
        model: an HF encoder (its device is used); put in eval mode for the call, then restored.
        tokenizer: its HF tokenizer (``prefix`` is prepended to every text; truncation at ``max_length``).
        pooling, normalize: as :func:`jmlr.retriever.embedding.embed_tokens`.
        batch_size: rows per forward pass.
        chunk_batches: batches per tokenized chunk (the unit of overlap and of the token-count re-sort).
        overlap: tokenize the next chunk in a background thread while this one is encoded. ``"auto"``: only
            when a core is left over by torch's intra-op threads (with every core in the model's thread team, a
            tokenizer thread preempts one of them and the whole team waits at each barrier).
        on_tokens: called with the real (unpadded) token count of each batch (cost accounting, benchmarks).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    texts = list(texts)
    n = len(texts)
    if out is None:
        out = torch.empty((n, tower_dim(model, pooling)), dtype=torch.float32)  # (n, d), d = H x pooled modes
    if n == 0:
        return out
    order = np.argsort(-np.fromiter((len(t) for t in texts), dtype=np.int64, count=n), kind="stable")
    chunk = max(1, int(chunk_batches)) * batch_size
    chunks = [order[s:s + chunk] for s in range(0, n, chunk)]
    pad_id = tokenizer.pad_token_id
    if overlap == "auto":
        overlap = spare_core()

    def tokenized(rows):  # (rows, token lists): the producer's unit of work
        return rows, _tokenize(tokenizer, [prefix + texts[r] for r in rows], max_length)

    results: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def producer():
        try:
            for rows in chunks:
                item = tokenized(rows)
                while not stop.is_set():
                    try:
                        results.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            results.put(None)
        except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
            results.put(e)

    def chunk_iter():
        if not overlap or len(chunks) == 1:
            for rows in chunks:
                yield tokenized(rows)
            return
        th = threading.Thread(target=producer, name="jmlr-tokenize", daemon=True)
        th.start()
        try:
            while True:
                item = results.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            th.join()

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    bar = tqdm(total=n, desc=desc, unit="text", disable=not progress, leave=False)
    try:
        with torch.inference_mode():
            for rows, toks in chunk_iter():
                local = {int(r): t for r, t in zip(rows, toks)}
                for r, ids, mask in padded_batches(local, list(local), batch_size, pad_id):
                    emb = embed_tokens(model, ids.to(device, non_blocking=True), mask.to(device, non_blocking=True),
                                       pooling, normalize)  # (b, d)
                    out[torch.from_numpy(r)] = emb.float().cpu()
                    if on_tokens is not None:
                        on_tokens(int(mask.sum()))
                    bar.update(len(r))
    finally:
        bar.close()
        model.train(was_training)
    return out
