"""Contrastive training of a DualEncoder on (query, positive, hard negatives): the separately trained baseline.

Loss (InfoNCE with in-batch and hard negatives, as in DPR, Karpukhin et al. 2020):

    L = -1/B sum_i log exp(s(q_i, p_i) / tau) / sum_{d in P u N} exp(s(q_i, d) / tau)

where P are the B positives of the batch (the other queries' positives are in-batch negatives) and N the
hard negatives of all queries in the batch.

This is sentence-transformers' ``MultipleNegativesRankingLoss`` with ``scale = 1 / tau`` on a normalising
encoder. With ``ContrastiveConfig.mini_batch_size`` set, a step runs GradCache (Gao et al. 2021, "Scaling Deep
Contrastive Learning Batch Size under Memory Limited Setup"), as ``CachedMultipleNegativesRankingLoss`` does:
embed every text without gradient in mini-batches, back-propagate the loss to the embeddings only, then
re-embed each mini-batch with gradient (replaying its dropout randomness) and push the cached embedding
gradients through it. Memory then scales with the mini-batch, not the batch, and the loss and gradients
are those of the whole batch: ``tests/retriever/test_contrastive_cmnrl.py`` checks both against
sentence-transformers' MNRL and CMNRL on a tiny model.
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from jmlr.data.lookup import text_lookup

logger = logging.getLogger(__name__)


@dataclass
class ContrastiveExample:
    """One training query with its positive passage text and optional hard-negative texts."""

    query: str
    positive: str
    negatives: list[str] = field(default_factory=list)


@dataclass
class ContrastiveConfig:
    """Hyper-parameters of :class:`ContrastiveTrainer`."""

    lr: float = 2e-5  # AdamW learning rate
    weight_decay: float = 0.01
    temperature: float = 0.05  # tau: scores are divided by it
    batch_size: int = 32  # queries per step (in-batch negatives = batch_size - 1)
    hard_negatives: int = 1  # hard negatives used per query (from ContrastiveExample.negatives)
    epochs: int = 1
    warmup_ratio: float = 0.1  # linear warm-up, then linear decay
    max_grad_norm: float = 1.0
    seed: int = 0
    mini_batch_size: int = 0  # GradCache: embed this many texts at a time (0 = the whole batch in one pass)


def info_nce(q: torch.Tensor, docs: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE where query ``i``'s positive is ``docs[i]``: ``q (B, d)``, ``docs (B + H, d)`` -> scalar."""
    if docs.shape[0] < q.shape[0]:
        raise ValueError(f"need at least one positive per query: {q.shape[0]} queries, {docs.shape[0]} docs")
    scores = q @ docs.T / temperature  # (B, B + H)
    labels = torch.arange(q.shape[0], device=q.device)
    return F.cross_entropy(scores, labels)


def _rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _embed_cached(embed, texts: Sequence[str], mini_batch_size: int) -> tuple[torch.Tensor, list]:
    """GradCache step 1: embeddings of ``texts`` without gradient, mini-batch by mini-batch, with the RNG state
    each mini-batch started from (dropout is replayed from it in step 3)."""
    device = _device_of(embed)
    reps, states = [], []
    for s in range(0, len(texts), mini_batch_size):
        states.append(_rng_state(device))
        with torch.no_grad():
            reps.append(embed(texts[s:s + mini_batch_size]))
    return torch.cat(reps), states


def _device_of(embed) -> torch.device:
    owner = getattr(embed, "__self__", None)
    return getattr(owner, "device", torch.device("cpu"))


def _replay_backward(embed, texts: Sequence[str], grad: torch.Tensor, states: list, mini_batch_size: int) -> None:
    """GradCache step 3: re-embed each mini-batch with gradient under its step-1 RNG state and back-propagate
    the cached embedding gradient through it."""
    device = _device_of(embed)
    for j, s in enumerate(range(0, len(texts), mini_batch_size)):
        cpu, cuda = states[j]
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state(cuda, device)
            emb = embed(texts[s:s + mini_batch_size])  # (m, d), with gradient
            emb.backward(grad[s:s + mini_batch_size].to(emb.dtype))


def cached_info_nce_backward(dual, queries: Sequence[str], docs: Sequence[str], temperature: float,
                             mini_batch_size: int) -> float:
    """:func:`info_nce` of ``queries`` against ``docs`` (query ``i``'s positive is ``docs[i]``) with GradCache:
    accumulates the gradients of the whole batch into ``dual``'s parameters and returns the loss.

    Peak activation memory is that of ``mini_batch_size`` texts. Equals ``info_nce(...).backward()`` (and
    sentence-transformers' CachedMultipleNegativesRankingLoss with ``scale = 1 / temperature``).
    """
    if mini_batch_size < 1:
        raise ValueError(f"mini_batch_size must be >= 1, got {mini_batch_size}")
    q, q_states = _embed_cached(dual.embed_queries, list(queries), mini_batch_size)  # (B, d)
    d, d_states = _embed_cached(dual.embed_docs, list(docs), mini_batch_size)  # (B + H, d)
    q = q.detach().float().requires_grad_()
    d = d.detach().float().requires_grad_()
    loss = info_nce(q, d, temperature)  # step 2: the loss of the whole batch, back to the embeddings only
    loss.backward()
    _replay_backward(dual.embed_queries, list(queries), q.grad, q_states, mini_batch_size)
    _replay_backward(dual.embed_docs, list(docs), d.grad, d_states, mini_batch_size)
    return float(loss.detach())


class ContrastiveTrainer:
    """Trains a :class:`~jmlr.retriever.DualEncoder` with :func:`info_nce`, batch by batch.

    >>> trainer = ContrastiveTrainer(dual, ContrastiveConfig(batch_size=16, epochs=2))   # doctest: +SKIP
    >>> losses = trainer.train([ContrastiveExample(q, pos, [neg]) for q, pos, neg in rows])
    """

    def __init__(self, dual, config: ContrastiveConfig | None = None, optimizer: torch.optim.Optimizer | None = None):
        self.dual = dual
        self.config = config or ContrastiveConfig()
        if self.config.mini_batch_size < 0:
            raise ValueError(f"mini_batch_size must be >= 0 (0 = no GradCache), got {self.config.mini_batch_size}")
        params = [p for p in dual.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the DualEncoder has no trainable parameters")
        self.optimizer = optimizer or torch.optim.AdamW(params, lr=self.config.lr,
                                                        weight_decay=self.config.weight_decay)
        self.step_count = 0

    def _texts(self, batch: Sequence[ContrastiveExample]) -> tuple[list[str], list[str]]:
        if not batch:
            raise ValueError("empty batch")
        negs = [n for ex in batch for n in ex.negatives[: self.config.hard_negatives]]
        return [ex.query for ex in batch], [ex.positive for ex in batch] + negs

    def loss(self, batch: Sequence[ContrastiveExample]) -> torch.Tensor:
        """The InfoNCE loss of one batch (with gradient)."""
        queries, docs = self._texts(batch)
        q = self.dual.embed_queries(queries)  # (B, d)
        d = self.dual.embed_docs(docs)  # (B + H, d)
        return info_nce(q, d, self.config.temperature)

    def backward(self, batch: Sequence[ContrastiveExample]) -> float:
        """Accumulate the gradients of one batch's loss; returns the loss. GradCache when
        ``config.mini_batch_size`` is set (same loss and gradients, memory of one mini-batch)."""
        if self.config.mini_batch_size:
            queries, docs = self._texts(batch)
            return cached_info_nce_backward(self.dual, queries, docs, self.config.temperature,
                                            self.config.mini_batch_size)
        loss = self.loss(batch)
        loss.backward()
        return float(loss.detach())

    def step(self, batch: Sequence[ContrastiveExample], lr_scale: float = 1.0) -> float:
        """One optimizer step on ``batch``; returns the loss."""
        self.dual.train()
        for g in self.optimizer.param_groups:
            g["lr"] = self.config.lr * lr_scale
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.backward(batch)
        if self.config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                           self.config.max_grad_norm)
        self.optimizer.step()
        self.step_count += 1
        return loss

    def train(self, examples: Sequence[ContrastiveExample], progress: bool = True) -> list[float]:
        """Run ``epochs`` over shuffled ``examples``; returns the loss of every step."""
        from tqdm.auto import tqdm

        cfg = self.config
        examples = list(examples)
        for i, ex in enumerate(examples):
            if not isinstance(ex, ContrastiveExample):
                raise ValueError(f"example {i} is {type(ex).__name__}, expected ContrastiveExample")
            if not ex.query or not ex.positive:
                raise ValueError(f"example {i} has an empty query or positive")
        if len(examples) < 2:
            raise ValueError("contrastive training needs at least 2 examples (in-batch negatives)")
        rng = random.Random(cfg.seed)
        per_epoch = math.ceil(len(examples) / cfg.batch_size)
        total = per_epoch * cfg.epochs
        warm = max(1, int(cfg.warmup_ratio * total))
        losses: list[float] = []
        bar = tqdm(total=total, desc="contrastive", unit="step", disable=not progress)
        for _ in range(cfg.epochs):
            order = examples[:]
            rng.shuffle(order)
            for s in range(0, len(order), cfg.batch_size):
                batch = order[s:s + cfg.batch_size]
                if len(batch) < 2:
                    continue
                t = len(losses)
                scale = (t + 1) / warm if t < warm else max(0.0, (total - t) / max(1, total - warm))
                losses.append(self.step(batch, scale))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
        bar.close()
        return losses


def mine_hard_negatives(dual, index, queries: Sequence[str], positive_ids: Sequence, text_of, *, n: int = 1,
                        depth: int = 30, skip_top: int = 0, batch_size: int = 64) -> list[list[str]]:
    """Hard negatives: the top-ranked passages of ``index`` for each query that are not its positive.

    ``text_of`` maps an id to its text (callable, dict or Corpus). ``skip_top`` ignores the very top ranks
    (often unlabelled positives). Returns ``n`` negative texts per query.
    """
    lookup = text_lookup(text_of)
    q = dual.encode_queries(list(queries), batch_size=batch_size, progress=False)  # (Q, d)
    _, ids = index.search(q, depth)  # (Q, depth)
    out = []
    for row, pos in zip(ids, positive_ids):
        gold = set(pos) if isinstance(pos, (list, tuple, set)) else {pos}
        cands = [c for c in row[skip_top:] if c is not None and c not in gold and not (isinstance(c, int) and c < 0)]
        out.append([lookup(c) for c in cands[:n]])
    return out
