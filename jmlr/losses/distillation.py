"""The base of the distillation losses (pdist, lsr, loop): a KL between the retriever and a reader target."""
from __future__ import annotations

from typing import ClassVar

import torch

from .base import (
    READER_MODES,
    JointLoss,
    check_nonnegative,
    check_positive,
    entropy,
    masked_kl,
    masked_log_softmax,
    optional_reader_term,
)


class DistillationLoss(JointLoss):
    r"""Train the retriever toward a distribution the reader defines over the K candidates.

    .. math::

        p^\text{target}_k = \operatorname{softmax}\big(\operatorname{stopgrad}(t_k)/\tau'\big)_k, \qquad
        p^\text{retr}_k = \operatorname{softmax}(s/\tau)_k, \qquad
        \mathcal{L} = \frac{1}{B}\sum_b \mathrm{KL}_b + w_\text{reader}\,\mathrm{NLL}

    A subclass gives only its target scores :math:`t` (:meth:`target_scores`, detached) and its KL direction
    (``reverse_kl``: False for KL(target ‖ retriever), True for KL(retriever ‖ target)). The shared parts are
    here: the options ``temperature`` (τ), ``target_temperature`` (τ′), ``reader`` and ``reader_weight``, the
    optional reader NLL term (see :func:`jmlr.losses.base.reader_term`) and ``last_stats``: ``loss``, ``kl``,
    ``reader_nll`` (0 when off), ``target_entropy``, ``retriever_entropy``.
    """

    reverse_kl: ClassVar[bool] = False

    def __init__(
        self,
        temperature: float = 1.0,
        target_temperature: float = 1.0,
        reader: str = "none",
        reader_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if reader not in READER_MODES:
            raise ValueError(f"reader must be one of {READER_MODES}, got {reader!r}")
        self.temperature = check_positive("temperature", temperature)
        self.target_temperature = check_positive("target_temperature", target_temperature)
        self.reader = reader
        self.reader_weight = check_nonnegative("reader_weight", reader_weight)

    def _config(self) -> dict:
        return {
            "temperature": self.temperature,
            "target_temperature": self.target_temperature,
            "reader": self.reader,
            "reader_weight": self.reader_weight,
        }

    def target_scores(self, scores: torch.Tensor, loglik: torch.Tensor | None, mask: torch.Tensor, num_tokens,
                      **inputs) -> torch.Tensor:
        """The detached ``(B, K)`` scores whose softmax over ``target_temperature`` is the target."""
        raise NotImplementedError

    def forward(
        self,
        scores: torch.Tensor,
        loglik: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        num_tokens: torch.Tensor | None = None,
        reader_nll: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        """The loss of ``scores`` (B, K) against the target from ``loglik`` (B, K); see the class docstring."""
        return self._distill(scores, loglik, mask, num_tokens, reader_nll)

    def _distill(
        self,
        scores: torch.Tensor,
        loglik: torch.Tensor | None,
        mask: torch.Tensor | None,
        num_tokens: torch.Tensor | None,
        reader_nll: torch.Tensor | float | None,
        need_loglik: bool = True,
        **inputs,
    ) -> torch.Tensor:
        scores, loglik, mask = self._prepare(scores, loglik, mask, need_loglik=need_loglik)
        target = self.target_scores(scores, loglik, mask, num_tokens, **inputs)  # (B, K), detached
        log_target = masked_log_softmax(target / self.target_temperature, mask)  # (B, K)
        log_retr = masked_log_softmax(scores / self.temperature, mask)  # (B, K)
        if self.reverse_kl:
            kl = masked_kl(log_retr, log_target, mask).mean()  # KL(retriever || target)
        else:
            kl = masked_kl(log_target, log_retr, mask).mean()  # KL(target || retriever)
        nll = optional_reader_term(self, scores, loglik, mask, reader_nll)
        loss = kl + self.reader_weight * nll
        with torch.no_grad():
            self.last_stats = {
                "loss": loss.detach(),
                "kl": kl.detach(),
                "reader_nll": nll.detach(),
                "target_entropy": entropy(log_target, mask),
                "retriever_entropy": entropy(log_retr, mask),
            }
        return loss
