"""REPLUG LM-supervised retrieval (Shi et al., 2023)."""
from __future__ import annotations

import torch

from .base import per_token
from .distillation import DistillationLoss


class LSRLoss(DistillationLoss):
    r"""REPLUG LSR: fit the retrieval likelihood to the LM likelihood with KL(P_R ‖ Q_LM).

    .. math::

        P_R(z_k\mid x) = \operatorname{softmax}(s/\gamma)_k, \qquad
        Q_\text{LM}(z_k\mid x, y) = \operatorname{softmax}\big(\operatorname{stopgrad}(\log p(y\mid x, z_k))/\beta\big)_k

    .. math::

        \mathcal{L} = \frac{1}{B}\sum_b \mathrm{KL}\big(P_R \,\|\, Q_\text{LM}\big)
                    = \frac{1}{B}\sum_b\sum_k P_R(z_k)\,\big(\log P_R(z_k) - \log Q_\text{LM}(z_k)\big)

    **Direction.** REPLUG (eq. 3-4 of the paper) writes the loss as KL(P_R ‖ Q_LM): the retriever
    distribution comes *first*, the reverse (mode-seeking) direction of Atlas's ``pdist``. The gradient
    w.r.t. the scores therefore flows through both the weights :math:`P_R` and :math:`\log P_R`.

    **Detached:** :math:`Q_\text{LM}` (REPLUG's LM is a frozen black box). The gradient w.r.t. ``loglik`` is
    exactly zero unless ``reader != "none"`` adds a reader NLL term (``reader_weight * NLL``, see
    :func:`jmlr.losses.base.reader_term`).

    The paper's formula puts :math:`P_\text{LM}(y\mid d, x)` in the exponent; like the released
    implementations and the other losses here, the default uses the log-likelihood
    (``lm_score="loglik"``). ``lm_score="prob"`` uses ``exp(loglik)`` literally (only sensible for short
    answers, since the probabilities of long answers are all near 0). ``num_tokens`` turns the summed
    log-likelihood into a per-token mean before either.

    Paper: W. Shi, S. Min, M. Yasunaga, M. Seo, R. James, M. Lewis, L. Zettlemoyer, W. Yih, "REPLUG:
    Retrieval-Augmented Black-Box Language Models", NAACL 2024 (arXiv:2301.12652, section 4, "REPLUG LSR").

    Args:
        temperature: :math:`\gamma`, the retriever softmax temperature.
        target_temperature: :math:`\beta`, the LM softmax temperature.
        lm_score: ``"loglik"`` (default) or ``"prob"``.
        reader: ``"none"`` (default), ``"top1"``, ``"mean"`` or ``"weighted"``.
        reader_weight: weight of the reader term.

    Extra inputs (keyword-only, optional): ``mask (B, K)`` bool; ``num_tokens (B,)`` or ``(B, K)``;
    ``reader_nll`` scalar or ``(B,)`` (needs ``reader != "none"``).

    ``last_stats``: ``loss``, ``kl``, ``reader_nll``, ``target_entropy``, ``retriever_entropy``.

    Example::

        >>> import torch
        >>> from jmlr.losses import get_loss
        >>> loss_fn = get_loss("lsr", temperature=0.1, target_temperature=0.1)
        >>> scores = torch.randn(2, 4, requires_grad=True)
        >>> loglik = -torch.rand(2, 4) * 5
        >>> loss = loss_fn(scores, loglik)
    """

    name = "lsr"
    reverse_kl = True  # KL(P_R || Q_LM)

    def __init__(
        self,
        temperature: float = 1.0,
        target_temperature: float = 1.0,
        lm_score: str = "loglik",
        reader: str = "none",
        reader_weight: float = 1.0,
    ) -> None:
        if lm_score not in ("loglik", "prob"):
            raise ValueError(f"lm_score must be 'loglik' or 'prob', got {lm_score!r}")
        super().__init__(temperature, target_temperature, reader, reader_weight)
        self.lm_score = lm_score

    def _config(self) -> dict:
        return {**super()._config(), "lm_score": self.lm_score}

    def target_scores(self, scores, loglik, mask, num_tokens, **inputs) -> torch.Tensor:
        B, K = mask.shape
        lm = per_token(loglik.detach(), num_tokens, B, K, self.name)  # (B, K), detached
        return lm.exp() if self.lm_score == "prob" else lm
