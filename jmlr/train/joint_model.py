"""The joint model: retriever towers + reader LM in one module, and the reader outputs each loss asks for.

A loss declares what it needs from the reader (:class:`jmlr.losses.ReaderNeeds`); :class:`JointModel` computes
exactly that set, and :func:`loss_inputs` hands it to the loss. No loss is known here by name.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import get_scheduler

from jmlr.losses import JointLoss, ReaderNeeds, get_loss

__all__ = ["JointModel", "loss_inputs", "make_loss", "make_optimizer"]


def make_loss(cfg) -> JointLoss:
    """The loss ``cfg.loss`` names, with its options. Its temperature is ``retriever.temperature``, the one
    retrieval temperature of a run: the trainer hands the loss raw scores, and the loss divides them once."""
    return get_loss(cfg.loss.name, temperature=cfg.retriever.temperature, **dict(cfg.loss.options))


class JointModel(nn.Module):
    """Retriever towers + reader LM in one module, so DDP wraps (and syncs) both with one forward.

    ``forward`` returns the candidate scores ``scores`` (B, K), raw inner products with gradient into the towers,
    and the reader outputs of ``needs`` with gradient into the reader: ``loglik`` (B, K), ``token_logp``
    (B, K, T) with ``token_mask`` (B, T), ``reader_nll`` (B,), ``loo_loglik`` (B, K). The search itself is done
    by the trainer beforehand.
    """

    def __init__(self, retriever, reader, needs: ReaderNeeds = ReaderNeeds()):
        super().__init__()
        self.retriever = retriever
        self.reader_model = reader.model
        self._reader = reader
        self.needs = needs

    def forward(self, questions: list[str], examples: list, cand_texts: list[list[str]],
                cand_emb: torch.Tensor | None, train_docs: bool) -> dict:
        B, K = len(cand_texts), len(cand_texts[0])
        q = self.retriever.embed_queries(questions)  # (B, d)
        if train_docs:
            flat = [t for row in cand_texts for t in row]
            d = self.retriever.embed_docs(flat).view(B, K, -1)  # (B, K, d)
        else:
            d = cand_emb.to(q.dtype)  # (B, K, d), cached doc embeddings: query-side-only training
        out = {"scores": torch.einsum("bd,bkd->bk", q, d)}  # (B, K)
        out.update(self.read(examples, cand_texts))
        return out

    def read(self, examples: list, cand_texts: list[list[str]]) -> dict:
        """The reader outputs of ``self.needs`` for B examples and their K candidates (nothing else runs)."""
        need, reader, out = self.needs, self._reader, {}
        if need.token_logp:  # one pass gives the per-token log-probs and their sum
            ll, tok, mask = reader.answer_loglik(examples, cand_texts, return_token_logp=True)
            out.update(token_logp=tok, token_mask=mask)  # (B, K, T), (B, T)
            if need.loglik:
                out["loglik"] = ll  # (B, K)
        elif need.loglik:
            out["loglik"] = reader.answer_loglik(examples, cand_texts)  # (B, K)
        if need.reader_nll:
            out["reader_nll"] = -reader.concat_loglik(examples, cand_texts)  # (B,), the K passages in one prompt
        if need.loo_loglik:
            out["loo_loglik"] = reader.loo_loglik(examples, cand_texts)  # (B, K)
        return out


def loss_inputs(needs: ReaderNeeds, out: dict, seed: int = 0) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of the loss call: the raw scores and ``loglik`` (``None`` when not needed), then the
    keyword inputs of ``needs``; a loss that needs a generator gets one on the scores' device seeded with
    ``seed`` (the trainer's is step-seeded: resumable and reproducible)."""
    loglik = out["loglik"].float() if needs.loglik else None
    kwargs = {k: out[k] for k in needs.inputs() if k != "generator"}
    if needs.generator:
        kwargs["generator"] = torch.Generator(out["scores"].device).manual_seed(seed)
    return (out["scores"].float(), loglik), kwargs


def make_optimizer(cfg, retriever: nn.Module, reader_model: nn.Module):
    """AdamW over two parameter groups (``retriever`` at ``retriever.lr``, ``reader`` at ``reader.lr``; a group
    without trainable parameters is left out) and the warmup + ``optim.schedule`` learning-rate schedule."""
    groups = [
        {"params": [p for p in retriever.parameters() if p.requires_grad], "lr": cfg.retriever.lr, "name": "retriever"},
        {"params": [p for p in reader_model.parameters() if p.requires_grad], "lr": cfg.reader.lr, "name": "reader"},
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("nothing to train: retriever and reader have no trainable parameters")
    optim = torch.optim.AdamW(groups, weight_decay=cfg.optim.weight_decay)
    sched_name = {"constant": "constant_with_warmup"}.get(cfg.optim.schedule, cfg.optim.schedule)
    sched = get_scheduler(sched_name, optim, num_warmup_steps=cfg.optim.warmup_steps,
                          num_training_steps=cfg.optim.steps)
    return optim, sched
