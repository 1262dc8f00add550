"""RAG-token marginal likelihood (Lewis et al., 2020)."""
from __future__ import annotations

import torch

from .base import JointLoss, ReaderNeeds, check_positive, masked_log_softmax


class RAGTokenLoss(JointLoss):
    r"""Negative log-likelihood with the documents marginalised at every answer token (RAG-token).

    .. math::

        \mathcal{L} = -\frac{1}{B}\sum_b \sum_{t:\,m_{b,t}} \log \sum_k \operatorname{softmax}(s_b/\tau)_k\;
                      p(y_{b,t} \mid x_b, z_{b,k}, y_{b,<t})

    Unlike RAG-sequence, a different document may explain each token. Nothing is detached: the
    retriever gets gradient through the softmax, the reader through ``token_logp``.

    Paper: P. Lewis et al., "Retrieval-Augmented Generation for Knowledge-Intensive NLP Tasks", NeurIPS 2020
    (the RAG-Token model, eq. 2).

    Extra inputs (keyword-only):

    * ``token_logp`` ``(B, K, T)`` float, **required**: ``log p(y_t | x, z_k, y_<t)`` of the gold answer
      token ``t`` under candidate ``k`` (the reader's log-softmax gathered at the answer ids). All K
      candidates of a question must score the *same* answer tokens, aligned on ``T``.
    * ``token_mask`` ``(B, T)`` bool, **required**: True on real answer tokens, False on padding. A
      ``(B, K, T)`` mask is accepted when it is the same for every valid candidate of a row (it is then
      reduced to ``(B, T)``); anything else raises, since tokens must be aligned across candidates.
    * ``mask`` ``(B, K)`` bool, optional: False = padded candidate.

    ``loglik`` (positional) is not needed and may be ``None``. When given, its shape is checked, and with
    ``check_loglik=True`` its values must equal ``(token_logp * token_mask).sum(-1)`` (rtol 1e-4,
    atol 1e-3), which catches a trainer that pairs per-token and per-sequence values from different passes.

    Args:
        temperature: :math:`\tau` of the retriever softmax.
        check_loglik: validate ``loglik`` against the summed ``token_logp`` when both are given.

    ``last_stats``: ``loss``, ``retriever_entropy``, ``tokens`` (mean number of answer tokens).

    Example::

        >>> import torch
        >>> from jmlr.losses import get_loss
        >>> loss_fn = get_loss("rag_token")
        >>> B, K, T = 2, 4, 3
        >>> scores = torch.randn(B, K, requires_grad=True)
        >>> token_logp = torch.log_softmax(torch.randn(B, K, T, 10), -1)[..., 0]  # (B, K, T)
        >>> token_mask = torch.tensor([[True, True, True], [True, True, False]])
        >>> loss = loss_fn(scores, None, token_logp=token_logp, token_mask=token_mask)
    """

    name = "rag_token"
    needs = ReaderNeeds(loglik=False, token_logp=True)

    def __init__(self, temperature: float = 1.0, check_loglik: bool = False) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.check_loglik = bool(check_loglik)

    def _config(self) -> dict:
        return {"temperature": self.temperature, "check_loglik": self.check_loglik}

    def forward(
        self,
        scores: torch.Tensor,
        loglik: torch.Tensor | None = None,
        *,
        token_logp: torch.Tensor,
        token_mask: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        scores, loglik, mask = self._prepare(scores, loglik, mask, need_loglik=False)
        B, K = scores.shape
        token_logp, token_mask = self._check_tokens(token_logp, token_mask, mask, B, K)
        token_logp = token_logp.to(scores.dtype)
        valid = mask[:, :, None] & token_mask[:, None, :]  # (B, K, T)
        self._check_finite("token_logp", token_logp, valid)
        if loglik is not None and self.check_loglik:
            summed = torch.where(valid, token_logp, torch.zeros_like(token_logp)).sum(-1)  # (B, K)
            ok = torch.isclose(loglik.detach(), summed.detach(), rtol=1e-4, atol=1e-3) | ~mask
            if not bool(ok.all()):
                b, k = (~ok).nonzero()[0].tolist()
                raise ValueError(
                    f"rag_token: loglik[{b}, {k}] = {float(loglik[b, k]):.6g} but the masked sum of "
                    f"token_logp[{b}, {k}] is {float(summed[b, k]):.6g}; they must come from the same pass"
                )

        log_q = masked_log_softmax(scores / self.temperature, mask)  # (B, K)
        tok = torch.where(valid, token_logp, torch.zeros_like(token_logp))  # (B, K, T)
        joint = log_q[:, :, None] + tok  # (B, K, T); -inf on padded candidates
        per_token = torch.logsumexp(joint, dim=1)  # (B, T)
        per_token = torch.where(token_mask, per_token, torch.zeros_like(per_token))
        loss = -per_token.sum(-1).mean()
        with torch.no_grad():
            q = log_q.exp()
            ent = -(torch.where(mask, q * log_q, torch.zeros_like(q))).sum(-1).mean()
        self.last_stats = {
            "loss": loss.detach(),
            "retriever_entropy": ent,
            "tokens": token_mask.sum(-1).to(scores.dtype).mean(),
        }
        return loss

    def _check_tokens(
        self, token_logp: torch.Tensor, token_mask: torch.Tensor, mask: torch.Tensor, B: int, K: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(token_logp, torch.Tensor) or token_logp.dim() != 3 or tuple(token_logp.shape[:2]) != (B, K):
            shape = tuple(token_logp.shape) if isinstance(token_logp, torch.Tensor) else type(token_logp).__name__
            raise ValueError(f"rag_token: token_logp must have shape (B, K, T) = ({B}, {K}, T), got {shape}")
        if not torch.is_floating_point(token_logp):
            raise ValueError(f"rag_token: token_logp must be a floating tensor, got dtype {token_logp.dtype}")
        T = token_logp.shape[2]
        if not isinstance(token_mask, torch.Tensor):
            raise ValueError(f"rag_token: token_mask must be a bool tensor (B, T), got {type(token_mask).__name__}")
        if token_mask.dtype != torch.bool:
            if torch.is_floating_point(token_mask) or not bool(((token_mask == 0) | (token_mask == 1)).all()):
                raise ValueError(f"rag_token: token_mask must be bool, got dtype {token_mask.dtype}")
            token_mask = token_mask.bool()
        token_mask = token_mask.to(token_logp.device)
        if token_mask.dim() == 3:
            if tuple(token_mask.shape) not in ((B, K, T), (B, 1, T)):
                raise ValueError(
                    f"rag_token: token_mask has shape {tuple(token_mask.shape)}, expected ({B}, {T}) or ({B}, {K}, {T})"
                )
            tm = token_mask.expand(B, K, T)
            # pick the first valid candidate's mask per row and demand all valid candidates agree with it
            first = mask.float().argmax(-1)  # (B,)
            ref = tm[torch.arange(B, device=tm.device), first]  # (B, T)
            differs = (tm != ref[:, None, :]).any(-1) & mask  # (B, K)
            if bool(differs.any()):
                b, k = differs.nonzero()[0].tolist()
                raise ValueError(
                    f"rag_token: token_mask[{b}, {k}] differs from the other candidates of row {b}; "
                    "RAG-token marginalises per token, so all candidates must score the same answer tokens"
                )
            token_mask = ref
        elif tuple(token_mask.shape) != (B, T):
            raise ValueError(f"rag_token: token_mask has shape {tuple(token_mask.shape)}, expected ({B}, {T})")
        empty = ~token_mask.any(-1)
        if bool(empty.any()):
            raise ValueError(
                f"rag_token: token_mask has no answer token in batch row(s) {empty.nonzero().flatten().tolist()[:10]}"
            )
        return token_logp, token_mask
