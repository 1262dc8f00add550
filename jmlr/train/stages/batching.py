"""Batching for the stages: right padding, per-sequence log-probs over the labelled positions, the
micro-batch record the loop trains on, and the GLOBAL batch schedules the loop shards over the ranks.

A schedule answers ``batch(k, world)``: the ``k``-th global micro-batch as ``(items, epoch)`` (``None`` once
the data is done), ``batch_size * world`` items that the loop splits into one contiguous share per rank
(:func:`jmlr.train.loop.shard`) and gives to ``collate``. Because ``k`` alone fixes the batch, a resumed run
continues at ``k = step * grad_accum`` with exactly the data the uninterrupted run would have seen, and one
process with batch 4 sees the batches that two ranks with batch 2 share.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from jmlr.reader.prefix import unwrap_peft

__all__ = ["IGNORE_INDEX", "right_pad", "sequence_logps", "StepBatch", "epoch_batches", "IndexedBatches",
           "ScheduledBatches", "StreamBatches"]

IGNORE_INDEX = -100
"""Label value of positions that carry no loss (prompt and padding)."""


def right_pad(seqs: Sequence[Sequence[int]], labels: Sequence[Sequence[int]] | None, pad_id: int) -> dict:
    """Right-pad token lists into ``input_ids``/``attention_mask`` (and ``labels`` with ``-100``), all ``(B, L)``.

    Right padding keeps positions ``0..len-1`` for every row, so no ``position_ids`` are needed.
    """
    import torch

    if not seqs:
        raise ValueError("cannot build an empty batch")
    B, L = len(seqs), max(len(s) for s in seqs)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    lab = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
    for i, s in enumerate(seqs):
        n = len(s)
        ids[i, :n] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, :n] = 1
        if labels is not None:
            if len(labels[i]) != n:
                raise ValueError(f"row {i}: {n} tokens but {len(labels[i])} labels")
            lab[i, :n] = torch.as_tensor(list(labels[i]), dtype=torch.long)
    out = {"input_ids": ids, "attention_mask": mask}
    if labels is not None:
        out["labels"] = lab
    return out


def sequence_logps(model, input_ids, attention_mask, labels, full_logits: bool = False, position_ids=None):
    """Per-sequence ``sum log p(token)`` over the labelled positions, and the number of those positions.

    Args:
        model: a transformers causal LM (optionally peft-wrapped).
        input_ids, attention_mask, labels: ``(B, L)``; ``labels[b, t]`` is the token expected at position
            ``t`` (usually ``input_ids[b, t]``) or ``-100`` for no loss. Position ``t`` is predicted by the
            hidden state at ``t - 1``. ``attention_mask`` may also be a 4-D ``(B, 1, L, L)`` mask or None
            (document-masked packing, see :func:`jmlr.train.stages.pretrain.document_attention`).
        full_logits: compute logits at every position through ``model(...)`` (the reference path used by
            the tests) instead of projecting only the labelled positions.
        position_ids: ``(B, L)`` positions, when they are not ``0..L-1`` (packed documents).

    Returns:
        ``(logp (B,) float32, n_tokens (B,) long)``.
    """
    import torch
    import torch.nn.functional as F

    tgt = labels[:, 1:]  # (B, L-1): token t+1 predicted from position t
    sel = tgt != IGNORE_INDEX  # (B, L-1)
    B = input_ids.shape[0]
    lm = unwrap_peft(model)
    body = lm.get_decoder() if hasattr(lm, "get_decoder") else None
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    extra = {} if position_ids is None else {"position_ids": position_ids}
    if full_logits or body is None or head is None or body is lm:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra).logits[:, :-1]
        logits = logits[sel].float()  # (M, V)
    else:
        hidden = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra)[0]  # (B, L, H)
        logits = head(hidden[:, :-1][sel]).float()  # (M, V): only the labelled positions
        cap = getattr(getattr(lm, "config", None), "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
    token_logp = -F.cross_entropy(logits, tgt[sel], reduction="none")  # (M,)
    rows = torch.arange(B, device=input_ids.device).unsqueeze(1).expand_as(sel)[sel]  # (M,)
    logp = torch.zeros(B, device=token_logp.device, dtype=token_logp.dtype).index_add(0, rows, token_logp)
    return logp, sel.sum(-1)


@dataclass
class StepBatch:
    """One micro-batch: tensors for the loss function plus its bookkeeping.

    Attributes:
        tensors: whatever the stage's loss function needs (``input_ids``, ``labels``...).
        n_units: loss units it holds (labelled tokens for LM stages, pairs for DPO); the step's loss is the
            sum over its micro-batches divided by their total units.
        n_tokens: non-padding tokens the policy forwards (for throughput and the FLOPs estimate).
        epoch: the data epoch it came from (a float, for the ``epochs`` limit).
    """

    tensors: dict
    n_units: int
    n_tokens: int
    epoch: float = 0.0



def epoch_batches(n: int, batch_size: int, seed: int, shuffle: bool = True) -> Iterator[tuple[list[int], float]]:
    """Endless ``(indices, epoch_position)`` over ``range(n)``: a fresh permutation per epoch from ``seed``.

    ``epoch_position`` is the fractional number of epochs done once this batch is consumed.
    """
    import numpy as np

    if n <= 0:
        raise ValueError("no training examples")
    epoch = 0
    while True:
        order = np.random.default_rng(seed + epoch).permutation(n) if shuffle else np.arange(n)
        for s in range(0, n, batch_size):
            idx = order[s: s + batch_size].tolist()
            yield idx, epoch + min(s + batch_size, n) / n
        epoch += 1



class IndexedBatches:
    """Epochs over ``items`` (a fresh seeded permutation per epoch, as :func:`epoch_batches`), ``batch_size``
    items per rank; random access, so resuming costs nothing."""

    def __init__(self, items: Sequence, batch_size: int, seed: int, collate: Callable[[list], StepBatch],
                 shuffle: bool = True):
        if not items:
            raise ValueError("no training examples")
        self.items, self.batch_size, self.seed, self.collate, self.shuffle = items, batch_size, seed, collate, shuffle
        self._order: tuple[int, list[int]] | None = None

    def batch(self, k: int, world: int = 1) -> tuple[list, float]:
        import numpy as np

        n, bs = len(self.items), self.batch_size * world
        per_epoch = -(-n // bs)
        epoch, s = divmod(k, per_epoch)
        s *= bs
        if self._order is None or self._order[0] != epoch:
            order = np.random.default_rng(self.seed + epoch).permutation(n) if self.shuffle else np.arange(n)
            self._order = (epoch, order.tolist())
        idx = self._order[1][s: s + bs]
        return [self.items[i] for i in idx], epoch + min(s + bs, n) / n


class ScheduledBatches:
    """A fixed list of global batches ``[(indices, epoch), ...]`` over ``items`` (DPO scores its reference on
    exactly these before training)."""

    def __init__(self, schedule: Sequence[tuple[list[int], float]], collate: Callable[[list], StepBatch]):
        self.schedule, self.collate = list(schedule), collate

    def batch(self, k: int, world: int = 1) -> tuple[list, float] | None:
        if k >= len(self.schedule):
            return None
        idx, epoch = self.schedule[k]
        return list(idx), epoch


class StreamBatches:
    """Consecutive items of an endless iterator (packed windows): batch ``k`` holds items
    ``k*B .. (k+1)*B - 1`` with ``B = batch_size * world``. Asked for a later batch, it reads past the skipped
    ones (a resumed run re-reads the stream up to where it stopped); ``epoch()`` gives the position after a
    batch."""

    def __init__(self, make_iter: Callable[[], Iterator], batch_size: int, epoch: Callable[[], float],
                 collate: Callable[[list], StepBatch]):
        self.make_iter, self.batch_size, self.epoch, self.collate = make_iter, batch_size, epoch, collate
        self._it: Iterator | None = None
        self._next = 0  # the index of the next item the iterator yields

    def batch(self, k: int, world: int = 1) -> tuple[list, float]:
        bs = self.batch_size * world
        if self._it is None or k * bs < self._next:
            self._it, self._next = iter(self.make_iter()), 0
        while self._next < k * bs:
            next(self._it)
            self._next += 1
        rows = [next(self._it) for _ in range(bs)]
        self._next += bs
        return rows, self.epoch()
