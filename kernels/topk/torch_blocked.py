"""Blocked torch backend: any device, no compiler. The fallback when the compiled kernels are unavailable.

Docs are scored in blocks of ``block`` rows (``q @ blk.T``, never the full (B, N) matrix); each block's k best are
merged into a running top-k. Rows below the running k-th best are dropped before the block's ``topk`` once
the running top-k is full, which keeps the per-block selection cheap for small k.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def topk_torch(queries: torch.Tensor, docs: torch.Tensor, k: int, *, scales: torch.Tensor | None = None,
               block: int = 16384):
    """Exact top-k of ``queries @ docs.T`` (times ``scales`` per doc row when given), computed in fp32.

    Returns (scores (B, k) float32, indices (B, k) int64, nonfinite_seen: bool). Ties are broken towards the
    smaller index within a block (torch.topk's order across blocks is by score only).
    """
    q = queries.float()  # (B, d)
    B, N = q.shape[0], docs.shape[0]
    best_s = torch.full((B, 0), float("-inf"), device=q.device)
    best_i = torch.empty((B, 0), dtype=torch.long, device=q.device)
    nan_seen = False
    for start in range(0, N, block):
        blk = docs[start:start + block]
        s = q @ blk.float().T  # (B, nb)
        if scales is not None:
            s = s * scales[start:start + block].float()
        if not nan_seen and not bool(torch.isfinite(s).all()):
            nan_seen = True
        kk = min(k, s.shape[1])
        s_top, i_top = s.topk(kk, dim=1)  # (B, kk)
        best_s = torch.cat([best_s, s_top], 1)
        best_i = torch.cat([best_i, i_top + start], 1)
        if best_s.shape[1] > k:
            best_s, pos = best_s.topk(k, dim=1)  # (B, k)
            best_i = best_i.gather(1, pos)
    # best first, ties by smaller index: sort by index, then a stable sort by score
    order = best_i.argsort(dim=1)
    best_s, best_i = best_s.gather(1, order), best_i.gather(1, order)
    order = best_s.argsort(dim=1, descending=True, stable=True)
    return best_s.gather(1, order), best_i.gather(1, order), nan_seen


@torch.no_grad()
def rerank_torch(queries: torch.Tensor, docs: torch.Tensor, candidates: torch.Tensor, k: int, *,
                 scales: torch.Tensor | None = None, chunk: int = 64):
    """Exact fp32 rescoring of candidate ids (B, k') against ``docs``; returns the k best, best first.

    Negative candidate ids (padding) score -inf. Queries are processed ``chunk`` at a time so the gathered
    rows stay small.
    """
    q = queries.float()
    B = q.shape[0]
    out_s = torch.empty((B, k), device=q.device)
    out_i = torch.empty((B, k), dtype=torch.long, device=q.device)
    for b0 in range(0, B, chunk):
        c = candidates[b0:b0 + chunk]  # (b, k')
        valid = c >= 0
        cc = c.clamp_min(0)
        rows = docs[cc].float()  # (b, k', d)
        s = torch.einsum("bd,bkd->bk", q[b0:b0 + chunk], rows)  # (b, k')
        if scales is not None:
            s = s * scales[cc].float()
        s = s.masked_fill(~valid, float("-inf"))
        order = c.argsort(dim=1)
        s, c = s.gather(1, order), c.gather(1, order)
        order = s.argsort(dim=1, descending=True, stable=True)[:, :k]
        out_s[b0:b0 + chunk] = s.gather(1, order)
        out_i[b0:b0 + chunk] = c.gather(1, order)
    return out_s, out_i
