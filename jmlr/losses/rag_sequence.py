"""RAG-sequence marginal likelihood (Lewis et al., 2020)."""
from __future__ import annotations

import torch

from .base import JointLoss, check_positive, masked_log_softmax


class RAGSequenceLoss(JointLoss):
    r"""Negative marginal log-likelihood of the answer over the retrieved documents (RAG-sequence).

    .. math::

        \mathcal{L} = -\frac{1}{B}\sum_b \log \sum_k \operatorname{softmax}(s_b/\tau)_k \; p(y_b \mid x_b, z_{b,k})
                    = -\frac{1}{B}\sum_b \operatorname{logsumexp}_k\big(\log\operatorname{softmax}(s_b/\tau)_k
                      + \log p(y_b \mid x_b, z_{b,k})\big)

    computed with ``logsumexp`` so that long answers (``loglik`` of -100 and below) do not underflow.
    Nothing is detached: the retriever gets gradient through the softmax (documents that explain the
    answer are pushed up), the reader gets gradient through ``loglik`` weighted by the posterior
    ``p(z_k | x, y)``.

    Paper: P. Lewis et al., "Retrieval-Augmented Generation for Knowledge-Intensive NLP Tasks", NeurIPS 2020
    (the RAG-Sequence model, eq. 1).

    Args:
        temperature: :math:`\tau`, divides the retrieval scores before the softmax.

    Inputs: ``scores (B, K)``, ``loglik (B, K)``, optional ``mask (B, K)`` bool (False = padded candidate).

    ``last_stats``: ``loss``, ``retriever_entropy`` (mean entropy of softmax(s/tau)), ``posterior_top1``
    (mean largest posterior weight p(z_k | x, y)).

    Example::

        >>> import torch
        >>> from jmlr.losses import get_loss
        >>> loss_fn = get_loss("rag_sequence", temperature=1.0)
        >>> scores = torch.randn(2, 4, requires_grad=True)      # from the retriever
        >>> loglik = -torch.rand(2, 4, requires_grad=True) * 5   # log p(y | x, z_k) from the reader
        >>> loss = loss_fn(scores, loglik)
        >>> loss.backward()
    """

    name = "rag_sequence"

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)

    def _config(self) -> dict:
        return {"temperature": self.temperature}

    def forward(
        self, scores: torch.Tensor, loglik: torch.Tensor, *, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        scores, loglik, mask = self._prepare(scores, loglik, mask)
        log_q = masked_log_softmax(scores / self.temperature, mask)  # (B, K), -inf on padding
        joint = log_q + loglik.masked_fill(~mask, 0.0)  # (B, K) log q_k p(y|z_k)
        log_marginal = torch.logsumexp(joint, dim=-1)  # (B,)
        loss = -log_marginal.mean()
        with torch.no_grad():
            q = log_q.exp()
            ent = -(torch.where(mask, q * log_q, torch.zeros_like(q))).sum(-1).mean()
            post = (joint - log_marginal[:, None]).exp().max(-1).values.mean()
        self.last_stats = {"loss": loss.detach(), "retriever_entropy": ent, "posterior_top1": post}
        return loss
