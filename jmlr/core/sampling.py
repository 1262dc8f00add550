"""Gumbel-top-k: sampling without replacement from a categorical, vectorised over a batch.

Adding independent Gumbel noise to the log-probabilities and keeping the ``m`` largest keys draws ``m`` items
without replacement from ``softmax(logits)`` (Kool et al., 2019). The joint trainer samples ``index.sample_m``
of the K retrieved candidates this way, and the ``jmlr_rank`` loss samples its ``num_samples`` with it.
"""
from __future__ import annotations

import torch

__all__ = ["gumbel_top_k"]


def gumbel_top_k(logits: torch.Tensor, m: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``m`` of the last dimension of ``logits`` without replacement; returns ``(keys, indices)``, each ``(..., m)``.

    ``logits`` are unnormalised log-probabilities; ``-inf`` marks an item that can't be drawn, and its key stays
    ``-inf`` (so a caller can tell the empty slots of a row with fewer than ``m`` valid items). The uniform draws
    come from ``generator`` on the generator's own device, then move to ``logits``' device, so a CPU generator gives
    the same sample on every device.

        >>> g = torch.Generator().manual_seed(0)
        >>> keys, idx = gumbel_top_k(torch.tensor([[0.0, float("-inf"), 0.0]]), 2, g)
        >>> sorted(idx[0].tolist())
        [0, 2]
    """
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= logits.shape[-1]:
        raise ValueError(f"gumbel_top_k: m must be an int in 1..{logits.shape[-1]}, got {m!r}")
    dtype = logits.dtype if logits.is_floating_point() else torch.float32
    device = generator.device if generator is not None else logits.device
    u = torch.rand(logits.shape, generator=generator, device=device, dtype=dtype).to(logits.device)
    u = u.clamp(torch.finfo(dtype).tiny, 1.0 - torch.finfo(dtype).eps)
    top = (logits.to(dtype) - torch.log(-torch.log(u))).topk(m, dim=-1)
    return top.values, top.indices
