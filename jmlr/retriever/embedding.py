"""Embedding helpers shared by the retriever and the index (the refresher encodes with them): pooling, padding,
one-batch embedding, the plain no-grad encoding loop, tower sizes and weight digests.

A leaf module: it imports torch and :mod:`jmlr.retriever.pooling` only, so :mod:`jmlr.index` may use it
without importing the :class:`~jmlr.retriever.dual_encoder.DualEncoder`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .pooling import parse_pooling, pooling_name

__all__ = ["pool", "PooledOutput", "PooledEncoder", "pad_batch", "embed_tokens", "encode_token_lists", "EncodeCancelled",
           "hidden_size", "tower_dim", "tensor_digest", "embedding_state"]


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool token states ``hidden (B, T, H)`` under a right-padded ``mask (B, T)`` into ``(B, H)``.

    Modes (as sentence-transformers' Pooling computes them): ``cls`` (first token), ``mean``, ``max``,
    ``mean_sqrt_len_tokens`` (sum / sqrt(n)), ``weightedmean`` (token ``t`` weighted by ``t + 1``), ``lasttoken``
    (the last non-padding token). ``"a+b"`` concatenates: ``(B, 2H)``.
    """
    modes = parse_pooling(mode)
    if len(modes) > 1:
        return torch.cat([pool(hidden, mask, m) for m in modes], dim=-1)
    m_ = modes[0]
    if m_ == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    if m_ == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
    if m_ == "mean_sqrt_len_tokens":
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9).sqrt()
    if m_ == "max":
        return hidden.masked_fill(m == 0, float("-inf")).max(1).values
    if m_ == "weightedmean":
        w = m * torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=hidden.dtype).view(1, -1, 1)
        return (hidden * w).sum(1) / w.sum(1).clamp_min(1e-9)
    last = (mask.sum(1).long() - 1).clamp_min(0)  # lasttoken: (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


@dataclass
class PooledOutput:
    """What a :class:`PooledEncoder` returns: the token states and the finished sentence embedding."""

    last_hidden_state: torch.Tensor
    sentence_embedding: torch.Tensor


class PooledEncoder(nn.Module):
    """An HF encoder, a pooling mode and the sentence-transformers modules that follow the pooling (Dense,
    LayerNorm, Dropout), as one tower: ``forward`` gives the sentence embedding before normalisation.

    DualEncoder uses it only when such modules exist; a bare encoder is used as is otherwise.
    """

    def __init__(self, encoder: nn.Module, pooling: str, post: Sequence[nn.Module] = ()):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling_name(pooling)
        self.post = nn.ModuleList(post)
        dim = hidden_size(encoder) * len(parse_pooling(pooling))
        for m in self.post:
            dim = int(getattr(m, "out_features", dim))
        self.embedding_dim = dim

    @property
    def config(self):
        return self.encoder.config

    def forward(self, input_ids=None, attention_mask=None, **kwargs) -> PooledOutput:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (B, T, H)
        feats = {"sentence_embedding": pool(hidden, attention_mask, self.pooling),  # (B, H')
                 "token_embeddings": hidden, "attention_mask": attention_mask}
        for m in self.post:
            feats = m(feats)
        return PooledOutput(hidden, feats["sentence_embedding"])


def pad_batch(token_lists: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into ``input_ids (B, T)`` and ``attention_mask (B, T)``."""
    T = max(1, max(len(t) for t in token_lists))
    ids = torch.full((len(token_lists), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), T), dtype=torch.long)
    for i, t in enumerate(token_lists):
        ids[i, : len(t)] = torch.as_tensor(t, dtype=torch.long)
        mask[i, : len(t)] = 1
    return ids, mask


def embed_tokens(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 pooling: str, normalize: bool) -> torch.Tensor:
    """Run an HF encoder on a padded batch and pool: ``(B, T)`` ids -> ``(B, d)`` embeddings."""
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    emb = getattr(out, "sentence_embedding", None)  # a PooledEncoder pools (and projects) itself
    if emb is None:
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (B, T, H)
        emb = pool(hidden, attention_mask, pooling)  # (B, H)
    if normalize:
        emb = torch.nn.functional.normalize(emb.float(), dim=-1)
    return emb


class EncodeCancelled(RuntimeError):
    """Raised by :func:`encode_token_lists` when its ``should_stop`` check says to stop."""


@torch.no_grad()
def encode_token_lists(model: nn.Module, token_lists: Sequence[Sequence[int]], *, pad_id: int, pooling: str,
                       normalize: bool, batch_size: int = 64, progress: bool = False, desc: str = "encode",
                       out: torch.Tensor | None = None,
                       should_stop: Callable[[], bool] | None = None) -> torch.Tensor:
    """Encode pre-tokenized texts without gradient, longest first (little padding), in input order.

    Returns ``(n, d)`` float32 on CPU (written into ``out`` when given). The model is put in eval mode for
    the call and restored afterwards. ``should_stop`` is asked before each batch; when it returns True the
    encode stops and raises :class:`EncodeCancelled` (a background index refresh that is no longer wanted).
    """
    n = len(token_lists)
    order = sorted(range(n), key=lambda i: -len(token_lists[i]))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        bar = tqdm(total=n, desc=desc, unit="text", disable=not progress, leave=False)
        for s in range(0, n, batch_size):
            if should_stop is not None and should_stop():
                bar.close()
                raise EncodeCancelled(f"encode stopped after {s} of {n} texts")
            idx = order[s:s + batch_size]
            ids, mask = pad_batch([token_lists[i] for i in idx], pad_id)
            emb = embed_tokens(model, ids.to(device), mask.to(device), pooling, normalize).float().cpu()  # (b, d)
            if out is None:
                out = torch.empty((n, emb.shape[1]), dtype=torch.float32)
            out[torch.as_tensor(idx)] = emb
            bar.update(len(idx))
        bar.close()
    finally:
        model.train(was_training)
    if out is None:  # n == 0
        out = torch.empty((0, hidden_size(model)), dtype=torch.float32)
    return out


def hidden_size(model: nn.Module) -> int:
    if getattr(model, "embedding_dim", None):
        return int(model.embedding_dim)
    cfg = getattr(model, "config", None)
    return int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "d_model", 0) or 0)


def tower_dim(model: nn.Module, pooling: str) -> int:
    """Embedding size of a tower: a PooledEncoder's own, else hidden size times the pooled modes."""
    if isinstance(model, PooledEncoder):
        return model.embedding_dim
    return hidden_size(model) * len(parse_pooling(pooling))


def tensor_digest(state: dict[str, torch.Tensor], extra: dict | None = None) -> str:
    """A content hash (blake2b-128, hex) of named tensors plus a JSON-able ``extra``."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(extra or {}, sort_keys=True).encode())
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def embedding_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors that shape the embeddings: the state dict without a pooler head (unused by mean/CLS pooling,
    and randomly initialised when a checkpoint lacks it, which would make fingerprints differ per load)."""
    return {k: v for k, v in model.state_dict().items() if not (k.startswith("pooler.") or k.startswith("encoder.pooler."))}
