"""Shared pieces of the joint retriever+reader losses: the base class, input checks, masked softmax helpers.

Every loss in :mod:`jmlr.losses` is a :class:`JointLoss`: an ``nn.Module`` called as
``loss(scores, loglik, *, mask=None, **extras) -> scalar tensor`` where

* ``scores``  ``(B, K)``: retrieval scores of the K candidates of each of the B questions, with gradient into
  the retriever;
* ``loglik``  ``(B, K)``: ``log p(y | x, z_k)`` from the reader, summed over the answer tokens, with gradient
  into the reader;
* ``mask``    ``(B, K)`` bool, optional: ``True`` for a real candidate, ``False`` for padding. Padded
  candidates take no part in any softmax, sum or pair, and get exactly zero gradient. Their values may be
  anything, ``nan`` and ``inf`` included.

What a loss needs from the reader is declared once, by the loss: its ``needs`` (a :class:`ReaderNeeds`). The
joint trainer computes exactly that set and nothing else; no loss is known to it by name.

After each call ``loss.last_stats`` holds detached 0-dim tensors for logging (call ``float()`` on them; they
are kept as tensors so that logging costs no device sync unless you ask for the value). The joint trainer logs
them as ``loss/<stat>``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar

import torch
from torch import nn

__all__ = [
    "JointLoss",
    "ReaderNeeds",
    "READER_MODES",
    "check_positive",
    "masked_log_softmax",
    "reader_term",
    "optional_reader_term",
    "per_token",
    "entropy",
    "masked_kl",
]

READER_MODES = ("none", "top1", "mean", "weighted")


@dataclass(frozen=True)
class ReaderNeeds:
    """What a loss needs besides the scores: the trainer computes exactly these and passes them by keyword.

    * ``loglik``: ``(B, K)`` ``log p(y | x, z_k)``, one passage per prompt (the positional argument; ``None``
      is passed when False);
    * ``token_logp``: ``(B, K, T)`` per-token answer log-probs with their ``token_mask`` ``(B, T)`` (same pass);
    * ``reader_nll``: ``(B,)`` ``-log p(y | x, z_1..z_K)``, the K passages concatenated into one prompt;
    * ``loo_loglik``: ``(B, K)`` ``log p(y | x, Z minus z_k)``, leave-one-out;
    * ``generator``: a ``torch.Generator`` for the loss's own sampling (seeded per step: resumable).

    >>> ReaderNeeds(loglik=True, loo_loglik=True).inputs()
    ('loo_loglik',)
    """

    loglik: bool = True
    token_logp: bool = False
    reader_nll: bool = False
    loo_loglik: bool = False
    generator: bool = False

    def inputs(self) -> tuple[str, ...]:
        """The keyword inputs these needs put into the loss call (``token_logp`` brings ``token_mask``)."""
        out = []
        for f in fields(self):
            if f.name != "loglik" and getattr(self, f.name):
                out += [f.name, "token_mask"] if f.name == "token_logp" else [f.name]
        return tuple(out)


def check_positive(name: str, value: float) -> float:
    """Return ``float(value)`` or raise ``ValueError`` when it is not a finite number > 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def check_nonnegative(name: str, value: float) -> float:
    """Return ``float(value)`` or raise ``ValueError`` when it is not a finite number >= 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}") from None
    if not (v >= 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def masked_log_softmax(x: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``log_softmax`` over the entries where ``mask`` is True; masked entries come out as ``-inf``.

    Masked inputs are replaced before the softmax, so ``nan``/``inf`` there neither leak into the result
    nor send a gradient back.
    """
    x = x.masked_fill(~mask, float("-inf"))
    return torch.log_softmax(x, dim=dim)


def masked_kl(target_logp: torch.Tensor, logq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``KL(p || q) = sum_k p_k (log p_k - log q_k)`` per row over the valid entries. ``(B, K) -> (B,)``.

    Both arguments are log-probabilities with ``-inf`` at masked entries; masked entries contribute 0 and
    send no gradient (``torch.where`` keeps the ``0 * inf`` products out of the graph).
    """
    p = target_logp.exp()
    diff = torch.where(mask, target_logp - logq, torch.zeros_like(logq))
    return (torch.where(mask, p, torch.zeros_like(p)) * diff).sum(-1)


def _row_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the valid entries of each row. ``(B, K) -> (B,)``."""
    x = torch.where(mask, x, torch.zeros_like(x))
    return x.sum(-1) / mask.sum(-1).to(x.dtype)


def top1_index(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Index of the highest-scoring valid candidate of each row. ``(B, K) -> (B,)`` int64."""
    return scores.detach().masked_fill(~mask, float("-inf")).argmax(-1)


def reader_term(
    mode: str,
    scores: torch.Tensor,
    loglik: torch.Tensor | None,
    mask: torch.Tensor,
    reader_nll: torch.Tensor | float | None,
    temperature: float,
    loss_name: str,
) -> torch.Tensor:
    """The reader negative log-likelihood that some losses add to their retriever term. Returns a scalar.

    ``mode``:
      * ``"top1"``: ``-loglik`` of the highest-scoring valid candidate;
      * ``"mean"``: ``-mean_k loglik_k`` over the valid candidates;
      * ``"weighted"``: ``-sum_k stopgrad(softmax(s/tau))_k loglik_k`` (the retriever weights are detached).
    A ``reader_nll`` given by the trainer (a scalar or ``(B,)``, e.g. the NLL of the reader on the top
    documents concatenated into one prompt) replaces the computed term; it is averaged over the batch.
    """
    if reader_nll is not None:
        nll = torch.as_tensor(reader_nll, device=scores.device)
        if not torch.is_floating_point(nll):
            raise ValueError(f"{loss_name}: reader_nll must be a float tensor, got dtype {nll.dtype}")
        if nll.dim() == 1 and nll.shape[0] != scores.shape[0]:
            raise ValueError(
                f"{loss_name}: reader_nll has shape {tuple(nll.shape)}, expected a scalar or "
                f"({scores.shape[0]},) (one value per question)"
            )
        if nll.dim() > 1:
            raise ValueError(
                f"{loss_name}: reader_nll has shape {tuple(nll.shape)}, expected a scalar or ({scores.shape[0]},)"
            )
        return nll.mean()
    if loglik is None:
        raise ValueError(f"{loss_name}: the reader term (reader={mode!r}) needs loglik or reader_nll")
    if mode == "top1":
        idx = top1_index(scores, mask)  # (B,)
        return -loglik.gather(1, idx[:, None]).squeeze(1).mean()
    if mode == "mean":
        return -_row_mean(loglik, mask).mean()
    if mode == "weighted":
        w = masked_log_softmax(scores.detach() / temperature, mask).exp()  # (B, K), detached
        ll = torch.where(mask, loglik, torch.zeros_like(loglik))
        return -(w * ll).sum(-1).mean()
    raise ValueError(f"{loss_name}: unknown reader mode {mode!r}; expected one of {READER_MODES}")


def per_token(x: torch.Tensor, num_tokens: torch.Tensor | None, B: int, K: int, name: str) -> torch.Tensor:
    """Divide summed log-likelihoods by the answer length (``(B,)`` or ``(B, K)``) when it is given."""
    if num_tokens is None:
        return x
    n = torch.as_tensor(num_tokens, device=x.device)
    if n.dim() == 1:
        n = n[:, None]
    if n.dim() != 2 or n.shape[0] != B or n.shape[1] not in (1, K):
        raise ValueError(
            f"{name}: num_tokens must have shape ({B},) or ({B}, {K}), got {tuple(torch.as_tensor(num_tokens).shape)}"
        )
    if bool((n <= 0).any()):
        raise ValueError(f"{name}: num_tokens must be > 0 (answer lengths), got min {float(n.min())}")
    return x / n.to(x.dtype)


def entropy(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the entropy of a masked distribution given as log-probabilities."""
    p = logp.exp()
    return -(torch.where(mask, p * logp, torch.zeros_like(p))).sum(-1).mean()


def optional_reader_term(
    loss: JointLoss,
    scores: torch.Tensor,
    loglik: torch.Tensor | None,
    mask: torch.Tensor,
    reader_nll: torch.Tensor | float | None,
) -> torch.Tensor:
    """The reader term of the distillation losses: zero unless ``loss.reader`` asks for one."""
    if loss.reader == "none":
        if reader_nll is not None:
            raise ValueError(
                f"{loss.name}: reader_nll was given but reader='none'; construct the loss with "
                "reader='top1' (or 'mean'/'weighted') to add a reader term"
            )
        return torch.zeros((), dtype=scores.dtype, device=scores.device)
    return reader_term(loss.reader, scores, loglik, mask, reader_nll, loss.temperature, loss.name)


class JointLoss(nn.Module):
    """Base class of the joint losses. Subclasses implement ``forward`` and call :meth:`_prepare` first.

    ``needs`` (a :class:`ReaderNeeds`; a property where it depends on the loss's options) says what a trainer
    computes before calling the loss: by default only ``loglik``.
    """

    name: ClassVar[str] = ""
    needs: ReaderNeeds = ReaderNeeds()

    def __init__(self) -> None:
        super().__init__()
        self.last_stats: dict[str, torch.Tensor] = {}

    # ---------------------------------------------------------------- input checks
    def _prepare(
        self,
        scores: torch.Tensor,
        loglik: torch.Tensor | None,
        mask: torch.Tensor | None,
        *,
        need_loglik: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Check shapes, dtypes, the mask and finiteness; upcast half precision to float32.

        Returns ``(scores, loglik, mask)`` with ``mask`` a ``(B, K)`` bool tensor (all True when ``None``).
        """
        name = self.name or type(self).__name__
        if not isinstance(scores, torch.Tensor):
            raise ValueError(f"{name}: scores must be a torch.Tensor of shape (B, K), got {type(scores).__name__}")
        if scores.dim() != 2:
            raise ValueError(f"{name}: scores must have shape (B, K), got {tuple(scores.shape)}")
        if not torch.is_floating_point(scores):
            raise ValueError(f"{name}: scores must be a floating tensor, got dtype {scores.dtype}")
        B, K = scores.shape
        if B == 0 or K == 0:
            raise ValueError(f"{name}: scores has an empty dimension, shape {tuple(scores.shape)}")
        scores = _upcast(scores)
        if loglik is None:
            if need_loglik:
                raise ValueError(f"{name}: loglik (B, K) = log p(y | x, z_k) is required")
        else:
            if not isinstance(loglik, torch.Tensor):
                raise ValueError(f"{name}: loglik must be a torch.Tensor of shape (B, K), got {type(loglik).__name__}")
            if tuple(loglik.shape) != (B, K):
                raise ValueError(
                    f"{name}: loglik has shape {tuple(loglik.shape)} but scores has {(B, K)}; "
                    "expected one log-likelihood per (question, candidate)"
                )
            if not torch.is_floating_point(loglik):
                raise ValueError(f"{name}: loglik must be a floating tensor, got dtype {loglik.dtype}")
            loglik = _upcast(loglik).to(scores.dtype)
        mask = self._check_mask(mask, B, K, scores.device)
        self._check_finite("scores", scores, mask)
        if loglik is not None and need_loglik:
            self._check_finite("loglik", loglik, mask)
        # Padded entries may hold nan/inf: replace them by 0 (masked_fill sends no gradient there), so that
        # no later product such as 0 * nan can poison the backward pass. Softmaxes still mask them out.
        scores = scores.masked_fill(~mask, 0.0)
        if loglik is not None:
            loglik = loglik.masked_fill(~mask, 0.0)
        return scores, loglik, mask

    def _check_mask(self, mask: torch.Tensor | None, B: int, K: int, device: torch.device) -> torch.Tensor:
        name = self.name or type(self).__name__
        if mask is None:
            return torch.ones(B, K, dtype=torch.bool, device=device)
        if not isinstance(mask, torch.Tensor):
            raise ValueError(f"{name}: mask must be a bool tensor of shape (B, K), got {type(mask).__name__}")
        if tuple(mask.shape) != (B, K):
            raise ValueError(f"{name}: mask has shape {tuple(mask.shape)}, expected {(B, K)} like scores")
        if mask.dtype != torch.bool:
            if torch.is_floating_point(mask) or not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError(
                    f"{name}: mask must be bool (True = real candidate, False = padding), got dtype {mask.dtype}"
                )
            mask = mask.bool()
        mask = mask.to(device)
        empty = ~mask.any(-1)
        if bool(empty.any()):
            rows = empty.nonzero().flatten().tolist()
            raise ValueError(f"{name}: mask leaves no valid candidate in batch row(s) {rows[:10]}")
        return mask

    def _check_finite(self, what: str, x: torch.Tensor, mask: torch.Tensor) -> None:
        bad = ~torch.isfinite(x.detach()) & (mask if mask.dim() == x.dim() else mask[..., None])
        if bool(bad.any()):
            where = bad.nonzero()[0].tolist()
            raise ValueError(
                f"{self.name or type(self).__name__}: {what} has a non-finite value at index {tuple(where)} "
                "of a valid (unmasked) candidate"
            )

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._config().items())

    def _config(self) -> dict:
        return {}


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 inputs are computed in fp32 (softmax and logsumexp lose too much in half precision)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
