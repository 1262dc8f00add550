"""Reduced-precision doc storage for the top-k kernels: fp16, bf16, or int8 with per-row scales.

An index keeps the object that :func:`quantize` returns and passes it to ``topk`` in place of the docs tensor.
The kernels stream the small copy (2x or 4x fewer bytes than fp32) to pick ``rerank_k`` candidates per query,
then rescore those candidates exactly in fp32 against the original rows, so the returned scores are exact and
the indices are exact unless a true top-k row fell outside the candidates (``recall_at_k`` in the benchmark).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import dispatch  # dispatch imports this module first; QuantizedDocs.search calls dispatch.topk

_DTYPES = {"fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "int8": torch.int8}


@dataclass
class QuantizedDocs:
    """Doc rows in reduced precision plus what the exact rerank needs.

    Attributes:
        data: (N, d) float16 / bfloat16 / int8 storage that the candidate pass streams.
        scales: (N,) float32 per-row scales for int8 (``row ~= data[row] * scales[row]``), else None.
        dtype: "fp16", "bf16" or "int8".
        fp32: the (N, d) float32 rows used for the exact rerank (the tensor passed to :func:`quantize`, not a
            copy), or None when ``keep_fp32=False`` (then the rerank is exact with respect to the stored values).
    """

    data: torch.Tensor
    scales: torch.Tensor | None
    dtype: str
    fp32: torch.Tensor | None

    def __len__(self) -> int:
        return self.data.shape[0]

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def nbytes(self) -> int:
        """Bytes the candidate pass streams per search (storage plus scales)."""
        n = self.data.numel() * self.data.element_size()
        return n + (self.scales.numel() * 4 if self.scales is not None else 0)

    def dequantize(self) -> torch.Tensor:
        """The stored values as (N, d) float32 (a new tensor)."""
        out = self.data.float()
        if self.scales is not None:
            out.mul_(self.scales[:, None])
        return out

    def search(self, queries: torch.Tensor, k: int, *, rerank_k: int | None = None, backend: str = "auto"):
        """``topk(queries, self, k, rerank_k=rerank_k)``: (scores (B, k) f32, indices (B, k) i64), best first."""
        return dispatch.topk(queries, self, k, rerank_k=rerank_k, backend=backend)

    def to(self, device) -> "QuantizedDocs":
        """A copy on ``device`` (the fp32 rows move too when kept)."""
        return QuantizedDocs(self.data.to(device), None if self.scales is None else self.scales.to(device),
                             self.dtype, None if self.fp32 is None else self.fp32.to(device))


@torch.no_grad()
def quantize(docs: torch.Tensor, dtype: str = "bf16", *, keep_fp32: bool = True, block: int = 65536) -> QuantizedDocs:
    """Prepare reduced-precision storage of ``docs`` (N, d) for ``topk``.

    dtype: "fp16", "bf16" or "int8" (symmetric per-row: ``scale = max|row| / 127``, values rounded to
    [-127, 127]; an all-zero row gets scale 1). With ``keep_fp32`` (default) the original rows are kept by
    reference for the exact fp32 rerank; they must then stay unchanged while the object is in use.

    Raises ValueError for an unknown dtype, a non-2-D or non-floating tensor, or NaN/Inf rows (naming the row).
    """
    key = str(dtype).lower()
    if key not in _DTYPES:
        raise ValueError(f"unknown storage dtype {dtype!r}: expected one of 'fp16', 'bf16', 'int8'")
    if not isinstance(docs, torch.Tensor) or docs.dim() != 2 or not docs.is_floating_point():
        raise ValueError(f"docs must be a 2-D floating tensor (N, d), got "
                         f"{getattr(docs, 'dtype', type(docs).__name__)} {tuple(getattr(docs, 'shape', ()))}")
    target = _DTYPES[key]
    name = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.int8: "int8"}[target]
    N, d = docs.shape
    data = torch.empty((N, d), dtype=target, device=docs.device)
    scales = torch.empty((N,), dtype=torch.float32, device=docs.device) if target == torch.int8 else None
    for start in range(0, N, block):
        blk = docs[start:start + block].float()  # (n, d)
        bad = ~torch.isfinite(blk).all(dim=1)
        if bad.any():
            raise ValueError(f"docs contain NaN or Inf (first at row {start + int(bad.nonzero()[0, 0])})")
        if target == torch.int8:
            s = blk.abs().amax(dim=1) / 127.0  # (n,)
            s = torch.where(s > 0, s, torch.ones_like(s))
            data[start:start + block] = torch.round(blk / s[:, None]).clamp_(-127, 127).to(torch.int8)
            scales[start:start + block] = s
        else:
            if key in ("fp16", "float16", "half") and bool((blk.abs() > 65504).any()):
                raise ValueError("docs exceed the float16 range (|x| > 65504); use bf16 or int8 storage")
            data[start:start + block] = blk.to(target)
    fp32 = None
    if keep_fp32:
        fp32 = docs if docs.dtype == torch.float32 else docs.float()
    return QuantizedDocs(data, scales, name, fp32)
