"""Atlas leave-one-out perplexity distillation (Izacard et al., 2022)."""
from __future__ import annotations

import torch

from .base import ReaderNeeds, per_token
from .distillation import DistillationLoss


class LeaveOneOutLoss(DistillationLoss):
    r"""Leave-one-out perplexity distillation (LOOP): a document matters as much as removing it hurts.

    With :math:`\ell^{\setminus k} = \log p(y \mid x, Z \setminus z_k)`, the reader's log-likelihood of the
    answer given all retrieved documents *except* :math:`z_k`:

    .. math::

        p^\text{target}_k = \operatorname{softmax}\big(-\operatorname{stopgrad}(\ell^{\setminus k})/\tau'\big)_k,
        \qquad p^\text{retr}_k = \operatorname{softmax}(s/\tau)_k

    .. math::

        \mathcal{L} = \frac{1}{B}\sum_b \mathrm{KL}\big(p^\text{target}_b \,\|\, p^\text{retr}_b\big)

    A document whose removal lowers the likelihood the most (largest leave-one-out loss
    :math:`-\ell^{\setminus k}`) gets the largest target weight. The KL direction and reduction are those of
    ``pdist`` (Atlas's ``kldivloss`` on the leave-one-out losses, which Atlas averages per token: pass
    ``num_tokens`` to do the same; Atlas's ``reduction="mean"`` further divides by K).

    **Detached:** the target. The loss trains only the retriever unless ``reader != "none"``.

    Extra inputs (keyword-only):

    * ``loo_loglik`` ``(B, K)`` float, **required**: :math:`\log p(y\mid x, Z\setminus z_k)`, summed over
      answer tokens, from K reader passes that each drop one document from the full set of valid candidates
      (or one pass with K attention masks). Padded candidates are ignored.
    * ``mask (B, K)`` bool, ``num_tokens (B,)`` or ``(B, K)``, ``reader_nll`` scalar or ``(B,)``: optional.

    ``loglik`` (positional) is only read by the reader term; pass ``None`` when ``reader="none"``.

    Paper: G. Izacard et al., "Atlas: Few-shot Learning with Retrieval Augmented Language Models",
    JMLR 2023 (arXiv:2208.03299, section 2.2, "Leave-one-out Perplexity Distillation (LOOP)").

    Args:
        temperature: :math:`\tau` of the retriever softmax.
        target_temperature: :math:`\tau'` of the target softmax.
        reader: ``"none"`` (default), ``"top1"``, ``"mean"`` or ``"weighted"``.
        reader_weight: weight of the reader term.

    ``last_stats``: ``loss``, ``kl``, ``reader_nll``, ``target_entropy``, ``retriever_entropy``.

    Example::

        >>> import torch
        >>> from jmlr.losses import get_loss
        >>> loss_fn = get_loss("loop", temperature=0.1, target_temperature=0.1)
        >>> scores = torch.randn(2, 4, requires_grad=True)
        >>> loo_loglik = -torch.rand(2, 4) * 5    # log p(y | x, all documents but k)
        >>> loss = loss_fn(scores, None, loo_loglik=loo_loglik)
    """

    name = "loop"

    @property
    def needs(self) -> ReaderNeeds:  # type: ignore[override]
        """The leave-one-out log-likelihoods; ``loglik`` only for the optional reader term."""
        return ReaderNeeds(loglik=self.reader != "none", loo_loglik=True)

    def target_scores(self, scores, loglik, mask, num_tokens, *, loo_loglik=None, **inputs) -> torch.Tensor:
        B, K = mask.shape
        if not isinstance(loo_loglik, torch.Tensor) or tuple(loo_loglik.shape) != (B, K):
            shape = tuple(loo_loglik.shape) if isinstance(loo_loglik, torch.Tensor) else type(loo_loglik).__name__
            raise ValueError(f"loop: loo_loglik must have shape (B, K) = {(B, K)} like scores, got {shape}")
        if not torch.is_floating_point(loo_loglik):
            raise ValueError(f"loop: loo_loglik must be a floating tensor, got dtype {loo_loglik.dtype}")
        loo = loo_loglik.detach().to(scores.dtype)
        self._check_finite("loo_loglik", loo, mask)
        return per_token(-loo, num_tokens, B, K, self.name)  # (B, K), the leave-one-out loss

    def forward(
        self,
        scores: torch.Tensor,
        loglik: torch.Tensor | None = None,
        *,
        loo_loglik: torch.Tensor,
        mask: torch.Tensor | None = None,
        num_tokens: torch.Tensor | None = None,
        reader_nll: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        need_ll = self.reader != "none" and reader_nll is None
        return self._distill(scores, loglik, mask, num_tokens, reader_nll, need_loglik=need_ll, loo_loglik=loo_loglik)
