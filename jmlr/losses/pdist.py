"""Atlas perplexity distillation (Izacard et al., 2022)."""
from __future__ import annotations

import torch

from .base import per_token
from .distillation import DistillationLoss


class PerplexityDistillationLoss(DistillationLoss):
    r"""Perplexity distillation: train the retriever toward the reader's posterior over the documents.

    .. math::

        p^\text{reader}_k = \operatorname{softmax}\big(\operatorname{stopgrad}(\log p(y\mid x, z_k))/\tau'\big)_k,
        \qquad p^\text{retr}_k = \operatorname{softmax}(s/\tau)_k

    .. math::

        \mathcal{L} = \frac{1}{B}\sum_b \mathrm{KL}\big(p^\text{reader}_b \,\|\, p^\text{retr}_b\big)
                    = \frac{1}{B}\sum_b\sum_k p^\text{reader}_{b,k}\,\big(\log p^\text{reader}_{b,k} - \log p^\text{retr}_{b,k}\big)

    **Direction.** This is the direction of the Atlas code: ``nn.KLDivLoss()(log_softmax(s/tau),
    softmax(gold/tau'))``, i.e. KL(target = reader posterior ‖ retriever), the forward KL that makes the
    retriever cover every document the reader finds useful. (Some write-ups state the reverse; the reverse
    is what ``lsr`` computes.) Atlas's ``KLDivLoss`` uses ``reduction="mean"``, which divides by ``B*K``;
    here the sum over the K candidates is kept (``batchmean``), the true KL, so Atlas's value is this one
    divided by K. Atlas's "gold score" is the *per-token* mean log-likelihood: pass ``num_tokens`` (the
    answer lengths) to get the same target; without it the summed ``loglik`` is used and ``tau'`` acts on it.

    Detached: the target (``loglik``) entirely; by default the loss trains only the retriever and the
    gradient w.r.t. ``loglik`` is exactly zero. With ``reader != "none"`` a reader NLL term is added:
    ``reader_weight * NLL`` with NLL ``-loglik`` of the top-1 candidate, the mean over candidates, or the
    retriever-weighted mean (see :func:`jmlr.losses.base.reader_term`), or the ``reader_nll`` you pass.

    Paper: G. Izacard, P. Lewis, M. Lomeli, L. Hosseini, F. Petroni, T. Schick, J. Dwivedi-Yu, A. Joulin,
    S. Riedel, E. Grave, "Atlas: Few-shot Learning with Retrieval Augmented Language Models", JMLR 2023
    (arXiv:2208.03299, section 2.2, "Perplexity Distillation (PDist)").

    Args:
        temperature: :math:`\tau` of the retriever softmax (Atlas ``temperature_score``).
        target_temperature: :math:`\tau'` of the reader posterior (Atlas ``temperature_gold``).
        reader: ``"none"`` (default, retriever only), ``"top1"``, ``"mean"`` or ``"weighted"``.
        reader_weight: weight of the reader term.

    Extra inputs (keyword-only, optional): ``mask (B, K)`` bool; ``num_tokens (B,)`` or ``(B, K)`` answer
    lengths; ``reader_nll`` scalar or ``(B,)`` (needs ``reader != "none"``).

    ``last_stats``: ``loss``, ``kl``, ``reader_nll`` (0 when off), ``target_entropy``, ``retriever_entropy``.

    Example::

        >>> import torch
        >>> from jmlr.losses import get_loss
        >>> loss_fn = get_loss("pdist", temperature=0.1, target_temperature=0.1)
        >>> scores = torch.randn(2, 4, requires_grad=True)
        >>> loglik = -torch.rand(2, 4) * 5
        >>> loss = loss_fn(scores, loglik, num_tokens=torch.tensor([3, 5]))
    """

    name = "pdist"

    def target_scores(self, scores, loglik, mask, num_tokens, **inputs) -> torch.Tensor:
        B, K = mask.shape
        return per_token(loglik.detach(), num_tokens, B, K, self.name)  # (B, K) gold scores
