"""EMDR^2 (Sachan et al., 2021), in the form Atlas uses."""
from __future__ import annotations

import torch

from .base import (
    READER_MODES,
    JointLoss,
    check_nonnegative,
    check_positive,
    entropy,
    masked_log_softmax,
    optional_reader_term,
)


class EMDR2Loss(JointLoss):
    r"""End-to-end training of multi-document reader and retriever (EMDR\ :sup:`2`).

    .. math::

        \mathcal{L}_\text{retr} = -\frac{1}{B}\sum_b \log\sum_k \operatorname{softmax}(s_b/\tau)_k\;
                                  \operatorname{stopgrad}\big(p(y_b\mid x_b, z_{b,k})\big)
                                = -\frac{1}{B}\sum_b \operatorname{logsumexp}_k\big(\log\operatorname{softmax}(s_b/\tau)_k
                                  + \operatorname{stopgrad}(\log p(y_b\mid x_b,z_{b,k}))\big)

    .. math::

        \mathcal{L} = \mathcal{L}_\text{retr} + w_\text{reader}\,\mathrm{NLL}

    **What is detached.** In :math:`\mathcal{L}_\text{retr}` the reader likelihoods are constants (the E-step
    posterior weights come from the current reader), so it sends gradient only to the scores. The value
    equals RAG-sequence's but the reader gets no gradient from it; the reader is trained by the separate
    NLL term, which sends gradient only to the reader (it does not touch ``scores``; ``"weighted"`` uses
    detached retriever weights). This separation is the difference from ``rag_sequence``.

    The reader term (``reader``): ``"mean"`` (default) is ``-mean_k log p(y|x,z_k)`` over the valid
    candidates, the per-document stand-in for EMDR\ :sup:`2`'s ``-log p(y | x, z_1..z_K)`` (all documents in one
    Fusion-in-Decoder input); pass that quantity as ``reader_nll`` when the trainer computes it (e.g. the
    reader on the top documents concatenated). ``"top1"``, ``"weighted"`` and ``"none"`` are also accepted.

    Atlas computes the same retriever term per answer token (marginalising each token's probability, then
    averaging over tokens, with ``temperature_gold`` on the reader logits); this class is the sequence-level
    form of the EMDR\ :sup:`2` paper, consistent with the summed ``loglik`` contract.

    Paper: D. S. Sachan, S. Reddy, W. Hamilton, C. Dyer, D. Yogatama, "End-to-End Training of
    Multi-Document Reader and Retriever for Open-Domain Question Answering", NeurIPS 2021; as used in
    Atlas (Izacard et al., 2022, section 2.2, "EMDR^2").

    Args:
        temperature: :math:`\tau` of the retriever softmax.
        reader: reader term, ``"mean"`` (default), ``"top1"``, ``"weighted"`` or ``"none"``.
        reader_weight: :math:`w_\text{reader}`.

    Extra inputs (keyword-only, optional): ``mask (B, K)`` bool; ``reader_nll`` scalar or ``(B,)``.

    ``last_stats``: ``loss``, ``retriever`` (the retriever term), ``reader_nll``, ``retriever_entropy``.

    Example::

        >>> import torch
        >>> from jmlr.losses import get_loss
        >>> loss_fn = get_loss("emdr2")
        >>> scores = torch.randn(2, 4, requires_grad=True)
        >>> loglik = -torch.rand(2, 4, requires_grad=True) * 5
        >>> loss = loss_fn(scores, loglik)
        >>> loss.backward()   # scores get the EMDR^2 retriever gradient, loglik the reader NLL gradient
    """

    name = "emdr2"

    def __init__(self, temperature: float = 1.0, reader: str = "mean", reader_weight: float = 1.0) -> None:
        super().__init__()
        if reader not in READER_MODES:
            raise ValueError(f"reader must be one of {READER_MODES}, got {reader!r}")
        self.temperature = check_positive("temperature", temperature)
        self.reader = reader
        self.reader_weight = check_nonnegative("reader_weight", reader_weight)

    def _config(self) -> dict:
        return {"temperature": self.temperature, "reader": self.reader, "reader_weight": self.reader_weight}

    def forward(
        self,
        scores: torch.Tensor,
        loglik: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        reader_nll: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        scores, loglik, mask = self._prepare(scores, loglik, mask)
        log_q = masked_log_softmax(scores / self.temperature, mask)  # (B, K)
        gold = loglik.detach().masked_fill(~mask, 0.0)  # (B, K), constant
        retr = -torch.logsumexp(log_q + gold, dim=-1).mean()
        nll = optional_reader_term(self, scores, loglik, mask, reader_nll)
        loss = retr + self.reader_weight * nll
        with torch.no_grad():
            self.last_stats = {
                "loss": loss.detach(),
                "retriever": retr.detach(),
                "reader_nll": nll.detach(),
                "retriever_entropy": entropy(log_q, mask),
            }
        return loss
