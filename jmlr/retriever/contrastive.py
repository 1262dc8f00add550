"""Contrastive training of a DualEncoder on (query, positive, hard negatives): the separately trained baseline.

Loss (InfoNCE with in-batch and hard negatives, as in DPR, Karpukhin et al. 2020):

    L = -1/B sum_i log exp(s(q_i, p_i) / tau) / sum_{d in P u N} exp(s(q_i, d) / tau)

where P are the B positives of the batch (the other queries' positives are in-batch negatives) and N the
hard negatives of all queries in the batch.
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

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


def info_nce(q: torch.Tensor, docs: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE where query ``i``'s positive is ``docs[i]``: ``q (B, d)``, ``docs (B + H, d)`` -> scalar."""
    if docs.shape[0] < q.shape[0]:
        raise ValueError(f"need at least one positive per query: {q.shape[0]} queries, {docs.shape[0]} docs")
    scores = q @ docs.T / temperature  # (B, B + H)
    labels = torch.arange(q.shape[0], device=q.device)
    return F.cross_entropy(scores, labels)


class ContrastiveTrainer:
    """Trains a :class:`~jmlr.retriever.DualEncoder` with :func:`info_nce`, batch by batch.

    >>> trainer = ContrastiveTrainer(dual, ContrastiveConfig(batch_size=16, epochs=2))   # doctest: +SKIP
    >>> losses = trainer.train([ContrastiveExample(q, pos, [neg]) for q, pos, neg in rows])
    """

    def __init__(self, dual, config: ContrastiveConfig | None = None, optimizer: torch.optim.Optimizer | None = None):
        self.dual = dual
        self.config = config or ContrastiveConfig()
        params = [p for p in dual.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the DualEncoder has no trainable parameters")
        self.optimizer = optimizer or torch.optim.AdamW(params, lr=self.config.lr,
                                                        weight_decay=self.config.weight_decay)
        self.step_count = 0

    def loss(self, batch: Sequence[ContrastiveExample]) -> torch.Tensor:
        """The InfoNCE loss of one batch (with gradient)."""
        cfg = self.config
        if not batch:
            raise ValueError("empty batch")
        negs = [n for ex in batch for n in ex.negatives[: cfg.hard_negatives]]
        q = self.dual.embed_queries([ex.query for ex in batch])  # (B, d)
        d = self.dual.embed_docs([ex.positive for ex in batch] + negs)  # (B + H, d)
        return info_nce(q, d, cfg.temperature)

    def step(self, batch: Sequence[ContrastiveExample], lr_scale: float = 1.0) -> float:
        """One optimizer step on ``batch``; returns the loss."""
        self.dual.train()
        for g in self.optimizer.param_groups:
            g["lr"] = self.config.lr * lr_scale
        loss = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                           self.config.max_grad_norm)
        self.optimizer.step()
        self.step_count += 1
        return float(loss.detach())

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
    from jmlr.index.rerank import text_lookup

    lookup = text_lookup(text_of)
    q = dual.encode_queries(list(queries), batch_size=batch_size, progress=False)  # (Q, d)
    _, ids = index.search(q, depth)  # (Q, depth)
    out = []
    for row, pos in zip(ids, positive_ids):
        gold = set(pos) if isinstance(pos, (list, tuple, set)) else {pos}
        cands = [c for c in row[skip_top:] if c is not None and c not in gold and not (isinstance(c, int) and c < 0)]
        out.append([lookup(c) for c in cands[:n]])
    return out
