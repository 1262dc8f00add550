"""JMLR's LLM-rank loss (Wang et al., 2024)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from jmlr.core.sampling import gumbel_top_k

from .base import (
    READER_MODES,
    JointLoss,
    ReaderNeeds,
    check_nonnegative,
    check_positive,
    masked_log_softmax,
    reader_term,
)


class JMLRRankLoss(JointLoss):
    r"""LLM-rank loss of JMLR: the reader's own loss ranks the sampled documents, RankNet teaches the retriever.

    For each question, sample ``m`` candidates without replacement from :math:`\operatorname{softmax}(\tilde s/\tau)`
    (detached). Let :math:`L_k = -\operatorname{stopgrad}(\log p(y \mid x, z_k))` be the reader's loss with
    document :math:`k` alone: a lower loss means a more useful document. Over the ordered pairs
    :math:`P = \{(i, j) : i, j \in \text{sample},\ L_i < L_j\}`

    .. math::

        \mathcal{L}_\text{rank} = \frac{1}{|P|}\sum_{(i,j)\in P} -\log\sigma\big((\tilde s_i - \tilde s_j)/\tau\big)

    averaged over the questions that have at least one pair (pairs with equal reader loss carry no
    preference and are skipped). The total is

    .. math::

        \mathcal{L} = w_\text{rank}\,\mathcal{L}_\text{rank} + w_\text{nll}\,\mathrm{NLL}

    where NLL is the reader's loss on the top documents concatenated into one prompt. That input is built
    by the trainer, so pass it as ``reader_nll`` (a scalar or ``(B,)``); without it the loss falls back to
    ``-loglik`` of the highest-scoring candidate (``reader="top1"``; ``"mean"``/``"weighted"`` also work,
    ``"none"`` drops the term).

    Signs and detachment: the rank term sends gradient only to the retriever (``loglik`` is detached
    there); it pushes :math:`s_i` above :math:`s_j` when document *i* gives the reader a lower loss. The NLL
    term sends gradient only to the reader. :math:`\tilde s` is ``scores`` (``score_norm="none"``) or, with
    ``score_norm="minmax"``, the scores rescaled per question to ``[-1, 1]`` over the valid candidates as in
    the JMLR code (gradient flows through the min and max).

    Relation to the reference code (believewhat/JMLR-Joint-Medical-LLM-and-Retrieval-Training): it samples 10
    documents from the softmax of the min-max scaled scores, uses binary cross-entropy on every unordered pair
    with label ``L_i < L_j`` (identical to the RankNet term above except on ties, which it labels 0 and we
    skip), divides by the number of pairs plus one, and adds the LM loss on the top-5 documents concatenated.
    ``get_loss("jmlr_rank", num_samples=10, score_norm="minmax")`` with ``reader_nll`` from 5 concatenated
    documents reproduces that recipe up to those two details.

    Paper: J. Wang, Z. Yang, Z. Yao, H. Yu, "JMLR: Joint Medical LLM and Retrieval Training for Enhancing
    Reasoning and Professional Question Answering Capability", arXiv:2402.17887, 2024 (LLM-Rank loss);
    RankNet: C. Burges et al., "Learning to Rank using Gradient Descent", ICML 2005.

    Args:
        num_samples: ``m``, documents sampled per question (all valid ones when fewer).
        temperature: :math:`\tau`, for the sampling softmax and the pairwise logits.
        rank_weight: :math:`w_\text{rank}`.
        nll_weight: :math:`w_\text{nll}`.
        score_norm: ``"none"`` or ``"minmax"``.
        reader: fallback reader term when ``reader_nll`` is not given (see above).

    Extra inputs (keyword-only, all optional):

    * ``mask`` ``(B, K)`` bool: False = padded candidate (never sampled, never paired).
    * ``generator``: a ``torch.Generator`` (on the scores' device) that seeds the sampling.
    * ``sample_idx`` ``(B, m')`` int64: explicit sampled candidates instead of sampling; ``-1`` marks an
      empty slot. Use :meth:`sample` first when the reader should score only the sampled documents: then
      ``loglik`` need only be correct at those positions (and pass ``reader_nll``).
    * ``reader_nll``: scalar or ``(B,)``, the reader's loss on the concatenated top documents.

    ``last_stats``: ``loss``, ``rank``, ``nll``, ``pairs`` (mean ordered pairs per question),
    ``pair_accuracy`` (fraction of pairs the retriever already orders correctly). ``last_sample_idx`` holds
    the ``(B, m)`` indices used (``-1`` = empty slot).

    Example::

        >>> import torch
        >>> from jmlr.losses import get_loss
        >>> loss_fn = get_loss("jmlr_rank", num_samples=4)
        >>> scores = torch.randn(2, 8, requires_grad=True)
        >>> loglik = -torch.rand(2, 8) * 5
        >>> g = torch.Generator().manual_seed(0)
        >>> idx = loss_fn.sample(scores, generator=g)            # (2, 4): documents to run the reader on
        >>> reader_nll = torch.tensor([1.3, 0.7], requires_grad=True)  # reader on top docs concatenated
        >>> loss = loss_fn(scores, loglik, sample_idx=idx, reader_nll=reader_nll)
    """

    name = "jmlr_rank"

    @property
    def needs(self) -> ReaderNeeds:  # type: ignore[override]
        """``loglik`` ranks the sample; the NLL term is the reader on the top documents concatenated (as the
        JMLR paper and code do), computed only when it counts; a generator seeds the sampling."""
        return ReaderNeeds(loglik=True, reader_nll=self.nll_weight > 0, generator=True)

    def __init__(
        self,
        num_samples: int = 10,
        temperature: float = 1.0,
        rank_weight: float = 1.0,
        nll_weight: float = 1.0,
        score_norm: str = "none",
        reader: str = "top1",
    ) -> None:
        super().__init__()
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
            raise ValueError(f"num_samples must be an int >= 2 (a pair needs two documents), got {num_samples!r}")
        if score_norm not in ("none", "minmax"):
            raise ValueError(f"score_norm must be 'none' or 'minmax', got {score_norm!r}")
        if reader not in READER_MODES:
            raise ValueError(f"reader must be one of {READER_MODES}, got {reader!r}")
        self.num_samples = num_samples
        self.temperature = check_positive("temperature", temperature)
        self.rank_weight = check_nonnegative("rank_weight", rank_weight)
        self.nll_weight = check_nonnegative("nll_weight", nll_weight)
        self.score_norm = score_norm
        self.reader = reader
        self.last_sample_idx: torch.Tensor | None = None

    def _config(self) -> dict:
        return {
            "num_samples": self.num_samples,
            "temperature": self.temperature,
            "rank_weight": self.rank_weight,
            "nll_weight": self.nll_weight,
            "score_norm": self.score_norm,
            "reader": self.reader,
        }

    # ---------------------------------------------------------------- pieces
    def normalized_scores(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The scores the rank term compares: raw, or min-max scaled to [-1, 1] per row. ``(B, K)``."""
        if self.score_norm == "none":
            return scores
        lo = scores.masked_fill(~mask, float("inf")).min(-1, keepdim=True).values  # (B, 1)
        hi = scores.masked_fill(~mask, float("-inf")).max(-1, keepdim=True).values  # (B, 1)
        span = (hi - lo).clamp_min(torch.finfo(scores.dtype).tiny)
        scaled = 2.0 * (scores - lo) / span - 1.0
        return torch.where(mask, scaled, torch.zeros_like(scaled))

    @torch.no_grad()
    def sample(
        self,
        scores: torch.Tensor,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw ``num_samples`` candidates per row without replacement from softmax(s~/tau).

        Uses the Gumbel-top-k trick (exact sampling without replacement, vectorised over the batch).
        Returns ``(B, m)`` int64 with ``m = min(num_samples, K)``; slots beyond a row's number of valid
        candidates are ``-1``.
        """
        scores, _, mask = self._prepare(scores, None, mask, need_loglik=False)
        logits = masked_log_softmax(self.normalized_scores(scores, mask) / self.temperature, mask)  # (B, K)
        keys, idx = gumbel_top_k(logits, min(self.num_samples, scores.shape[1]), generator)  # -inf stays on padding
        return torch.where(torch.isfinite(keys), idx, torch.full_like(idx, -1))  # (B, m)

    def _check_sample_idx(self, sample_idx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, K = mask.shape
        if not isinstance(sample_idx, torch.Tensor) or sample_idx.dim() != 2 or sample_idx.shape[0] != B:
            shape = tuple(sample_idx.shape) if isinstance(sample_idx, torch.Tensor) else type(sample_idx).__name__
            raise ValueError(f"jmlr_rank: sample_idx must have shape ({B}, m), got {shape}")
        if torch.is_floating_point(sample_idx) or sample_idx.dtype == torch.bool:
            raise ValueError(f"jmlr_rank: sample_idx must be an integer tensor, got dtype {sample_idx.dtype}")
        idx = sample_idx.to(device=mask.device, dtype=torch.long)
        bad = (idx < -1) | (idx >= K)
        if bool(bad.any()):
            b, j = bad.nonzero()[0].tolist()
            raise ValueError(
                f"jmlr_rank: sample_idx[{b}, {j}] = {int(idx[b, j])} is outside [0, {K}) (or -1 for an empty slot)"
            )
        used = idx >= 0
        picked_valid = mask.gather(1, idx.clamp_min(0))
        bad = used & ~picked_valid
        if bool(bad.any()):
            b, j = bad.nonzero()[0].tolist()
            raise ValueError(f"jmlr_rank: sample_idx[{b}, {j}] = {int(idx[b, j])} points at a padded candidate")
        s = idx.masked_fill(~used, -1).sort(-1).values
        dup = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)
        if bool(dup.any()):
            b = int(dup.nonzero()[0, 0])
            raise ValueError(f"jmlr_rank: sample_idx row {b} lists a candidate twice: {idx[b].tolist()}")
        return idx

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        scores: torch.Tensor,
        loglik: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        sample_idx: torch.Tensor | None = None,
        reader_nll: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        scores, loglik, mask = self._prepare(scores, loglik, mask, need_loglik=False)
        if loglik is None:
            raise ValueError("jmlr_rank: loglik (B, K) is required: the reader loss -loglik ranks the documents")
        if sample_idx is None:
            idx = self.sample(scores, mask, generator)
        else:
            idx = self._check_sample_idx(sample_idx, mask)
        used = idx >= 0  # (B, m)
        safe = idx.clamp_min(0)
        self._check_finite("loglik (sampled)", loglik.gather(1, safe), used)

        s_tilde = self.normalized_scores(scores, mask)  # (B, K)
        s = s_tilde.gather(1, safe)  # (B, m)
        reader_loss = -loglik.detach().gather(1, safe)  # (B, m), relevance: lower is better
        # ordered pairs (i, j) with L_i < L_j among the used slots
        pair = (reader_loss[:, :, None] < reader_loss[:, None, :]) & used[:, :, None] & used[:, None, :]  # (B, m, m)
        diff = (s[:, :, None] - s[:, None, :]) / self.temperature  # (B, m, m)
        terms = torch.where(pair, F.softplus(-diff), torch.zeros_like(diff))  # -log sigmoid(diff)
        n_pairs = pair.sum((1, 2))  # (B,)
        has = n_pairs > 0
        per_row = terms.sum((1, 2)) / n_pairs.clamp_min(1).to(terms.dtype)  # (B,)
        n_rows = has.sum()
        rank = (per_row * has.to(per_row.dtype)).sum() / n_rows.clamp_min(1).to(per_row.dtype)

        if self.reader == "none" and reader_nll is None:
            nll = torch.zeros((), dtype=scores.dtype, device=scores.device)
        else:
            if reader_nll is None:  # the fallback reads loglik outside the sample: it must be finite there
                used_by_nll = _onehot_top1(scores, mask) if self.reader == "top1" else mask
                self._check_finite("loglik (reader term)", loglik, used_by_nll)
            nll = reader_term(self.reader, scores, loglik, mask, reader_nll, self.temperature, self.name)
        loss = self.rank_weight * rank + self.nll_weight * nll

        with torch.no_grad():
            correct = (pair & (diff > 0)).sum()
            total = pair.sum()
            acc = correct.to(scores.dtype) / total.clamp_min(1).to(scores.dtype)
        self.last_sample_idx = idx
        self.last_stats = {
            "loss": loss.detach(),
            "rank": rank.detach(),
            "nll": nll.detach(),
            "pairs": n_pairs.to(scores.dtype).mean(),
            "pair_accuracy": acc,
        }
        return loss


def _onehot_top1(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    idx = scores.detach().masked_fill(~mask, float("-inf")).argmax(-1)
    return torch.zeros_like(mask).scatter_(1, idx[:, None], True)
