"""The ONE exact torch reference for score + top-k. Tests and benchmarks import this, never a copy."""
from __future__ import annotations

import torch


def topk_reference(queries: torch.Tensor, docs: torch.Tensor, k: int, block: int = 65536):
    """Exact inner-product top-k, computed in fp32 in blocks of ``block`` docs.

    queries: (B, d), docs: (N, d). Returns (scores (B, k) float32, indices (B, k) int64), best first.
    """
    q = queries.float()
    B, N = q.shape[0], docs.shape[0]
    best_s = torch.full((B, 0), float("-inf"), device=q.device)
    best_i = torch.empty((B, 0), dtype=torch.long, device=q.device)
    for start in range(0, N, block):
        s = q @ docs[start:start + block].float().T  # (B, n_blk)
        kk = min(k, s.shape[1])
        s_top, i_top = s.topk(kk, dim=1)
        best_s = torch.cat([best_s, s_top], 1)
        best_i = torch.cat([best_i, i_top + start], 1)
        if best_s.shape[1] > k:
            best_s, pos = best_s.topk(k, dim=1)
            best_i = best_i.gather(1, pos)
    order = best_s.argsort(dim=1, descending=True)
    return best_s.gather(1, order), best_i.gather(1, order)
