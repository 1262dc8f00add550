"""Score + top-k: ``topk(queries, docs, k)`` dispatches to the best backend for device, dtype and shape.

Stub dispatch: only the torch reference exists so far (issue 5 builds the fused backends).
"""
from __future__ import annotations

from .reference import topk_reference


def topk(queries, docs, k: int, *, backend: str = "auto", **kwargs):
    """Exact (scores (B, k) float32, indices (B, k) int64) of the k largest inner products per query."""
    return topk_reference(queries, docs, k)


__all__ = ["topk", "topk_reference"]
