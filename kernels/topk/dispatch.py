"""The top-k dispatcher: picks the backend for device, dtype and shape, runs the candidate pass and the exact
fp32 rerank of reduced-precision candidates. The backends are in their own modules (see the package docstring).
"""
from __future__ import annotations

import logging

import torch

from . import cpu_backend, cuda_backend, triton as triton_backend
from ._common import attach_grad, check_inputs, default_rerank_k, raise_nan_in_docs
from .quantize import QuantizedDocs
from .reference import topk_reference
from .torch_blocked import rerank_torch, topk_torch

logger = logging.getLogger("jmlr.kernels")

BACKENDS = ("auto", "cpu", "torch", "triton", "cuda", "reference")
CPU_KERNELS = ("stream", "tile", "gemm", "amx")

# Shape thresholds of the CPU dispatch, measured on a 2-core AVX-512/AMX Xeon (see docs/kernels.md).
STREAM_MAX_B = 4  # up to this batch the streaming kernel (memory-bound); above it the tile kernel (compute-bound)
GEMM_MIN_B = 192  # from this batch on, per-thread MKL sgemm + filter (1.05 s vs tile 1.16 s at B=256, N=1M, d=768)
# reduced storage: the AMX-bf16 candidate pass from this batch on; below it the stream kernel reads the rows
# faster (bf16 rows feed the tiles in place; fp16/int8 rows must be converted first)
AMX_MIN_B = {torch.bfloat16: 1, torch.float16: 4, torch.int8: 8}

_warned: set[str] = set()


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(msg)


def _as_storage(docs, scales):
    """(storage tensor, scales, exact-rerank source, exact-rerank scales, needs_rerank) for docs or QuantizedDocs."""
    if isinstance(docs, QuantizedDocs):
        if scales is not None:
            raise ValueError("pass scales inside QuantizedDocs, not as an argument")
        if docs.fp32 is not None:
            if docs.fp32.shape != docs.data.shape:
                raise ValueError(f"QuantizedDocs.fp32 has shape {tuple(docs.fp32.shape)} but data has "
                                 f"{tuple(docs.data.shape)}")
            return docs.data, docs.scales, docs.fp32, None, True
        return docs.data, docs.scales, docs.data, docs.scales, False
    return docs, scales, docs, scales, False


def available_backends(device: str | torch.device = "cpu") -> list[str]:
    """Backends that can run on ``device`` here (``"cpu"`` only if the C++ extension built)."""
    dev = torch.device(device)
    out = ["torch", "reference"]
    if dev.type == "cpu":
        if cpu_backend.load_extension() is not None:
            out.insert(0, "cpu")
    elif dev.type == "cuda":
        if cuda_backend.load_extension() is not None:
            out.insert(0, "cuda")
        if triton_backend.available():
            out.insert(0, "triton")
    return out


def _cpu_kernel(B: int, storage: torch.Tensor, feats: dict, requested: str | None) -> str:
    if requested is not None:
        if requested not in CPU_KERNELS:
            raise ValueError(f"unknown cpu_kernel {requested!r}: expected one of {CPU_KERNELS}")
        if requested == "amx" and not feats.get("amx_bf16"):
            raise ValueError("cpu_kernel='amx' needs a CPU with AMX-BF16 (and OS permission); this one has none")
        if requested == "tile" and not feats.get("avx512"):
            raise ValueError("cpu_kernel='tile' needs a CPU with AVX-512; this one has none")
        if requested == "amx" and storage.dtype == torch.float32:
            raise ValueError("cpu_kernel='amx' is for reduced-precision storage (fp16/bf16/int8), not fp32")
        return requested
    if not feats.get("avx512"):
        return "gemm"
    if storage.dtype != torch.float32 and feats.get("amx_bf16") and B >= AMX_MIN_B[storage.dtype]:
        return "amx"
    if B >= GEMM_MIN_B:
        return "gemm"
    return "stream" if B <= STREAM_MAX_B else "tile"


@torch.no_grad()
def _candidates(queries, storage, scales, kk, backend, device, cpu_kernel, block):
    """(scores, idx, nonfinite_seen, approximate) for the kk best rows of ``storage`` by the chosen backend.

    ``approximate`` is True when the pass used reduced-precision arithmetic (AMX-bf16, GPU tensor cores), so
    its candidates must be reranked exactly.
    """
    if backend == "auto":
        if device.type == "cpu":
            backend = "cpu" if cpu_backend.load_extension() is not None else "torch"
        elif device.type == "cuda":
            if triton_backend.available():
                backend = "triton"
            elif cuda_backend.load_extension() is not None and kk <= cuda_backend.MAX_K:
                backend = "cuda"
            else:
                _warn_once("cuda-fallback", "jmlr.kernels: neither Triton nor the CUDA extension is available; "
                                            "using the blocked torch path on CUDA.")
                backend = "torch"
        else:
            backend = "torch"
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"backend='cpu' needs CPU tensors, got {device}")
        if cpu_backend.load_extension() is None:
            raise RuntimeError(f"backend='cpu' requested but the C++ extension is unavailable "
                               f"({cpu_backend.unavailable_reason()}); use backend='auto' or 'torch'")
        feats = cpu_backend.features()
        kern = _cpu_kernel(queries.shape[0], storage, feats, cpu_kernel)
        q = queries.float().contiguous()
        docs = storage if storage.stride(1) == 1 else storage.contiguous()
        sc = None if scales is None else scales.float().contiguous()
        kid = {"stream": cpu_backend.STREAM, "tile": cpu_backend.TILE, "gemm": cpu_backend.GEMM,
               "amx": cpu_backend.AMX}[kern]
        s, i, nan = cpu_backend.topk_cpu(q, docs, kk, scales=sc, kernel=kid, block=block or 0)
        return s, i, nan, kern == "amx"
    if backend == "torch":
        s, i, nan = topk_torch(queries, storage, kk, scales=scales, block=block or 16384)
        return s, i, nan, False
    if backend == "triton":
        s, i, nan = triton_backend.topk_triton(queries, storage, kk, scales=scales)
        return s, i, nan, storage.dtype != torch.float32
    if backend == "cuda":
        if device.type != "cuda":
            raise ValueError(f"backend='cuda' needs CUDA tensors, got {device}")
        s, i, nan = cuda_backend.topk_cuda(queries, storage, kk, scales=scales)
        return s, i, nan, False  # fp32 accumulation of the stored values: exact for them
    if backend == "reference":
        src = storage.float() if scales is None else storage.float() * scales.float()[:, None]
        s, i = topk_reference(queries, src, kk)
        return s, i, not bool(torch.isfinite(src).all()), False  # a full check: the reference is for tests
    raise ValueError(f"unknown backend {backend!r}: expected one of {BACKENDS}")


def _rerank(queries, src, src_scales, cand, k):
    if src.device.type == "cpu":
        if cpu_backend.load_extension() is not None:
            docs = src if src.stride(1) == 1 else src.contiguous()
            sc = None if src_scales is None else src_scales.float().contiguous()
            return cpu_backend.rerank_cpu(queries.float().contiguous(), docs, cand, k, scales=sc)
    return rerank_torch(queries, src, cand, k, scales=src_scales)


def topk(queries: torch.Tensor, docs, k: int, *, backend: str = "auto", scales: torch.Tensor | None = None,
         rerank_k: int | None = None, cpu_kernel: str | None = None, block: int | None = None):
    """The k largest inner products ``queries @ docs.T`` per query, without materialising the (B, N) scores.

    Args:
        queries: (B, d) floating tensor (any float dtype; computed in fp32).
        docs: (N, d) float32 / float16 / bfloat16 / int8 tensor (int8 needs ``scales``), rows contiguous or
            any 2-D view; or a :class:`QuantizedDocs` from :func:`quantize`.
        k: number of results per query, 1 <= k <= N.
        backend: "auto" (by device, dtype and shape), "cpu", "torch", "triton", "cuda" or "reference".
        scales: (N,) per-row scales for int8 docs (score = q . docs[i] * scales[i]).
        rerank_k: candidates per query kept by a reduced-precision pass before the exact fp32 rerank
            (default max(2k, k + 32)); used for QuantizedDocs and for AMX/GPU passes over fp16/bf16/int8.
        cpu_kernel: force one CPU kernel ("stream", "tile", "gemm", "amx"); for benchmarks and tests.
        block: doc rows per block for the blocked kernels.

    Returns:
        (scores (B, k) float32, indices (B, k) int64), best first; ties go to the smaller index. Scores carry
        autograd to ``queries``/``docs`` (recomputed for the winners) when those require grad.

    Raises:
        ValueError: k outside [1, N], a dimension mismatch, NaN/Inf in queries or docs, missing int8 scales, an
            unknown backend, or a backend that cannot run these tensors.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: expected one of {BACKENDS}")
    storage, st_scales, src, src_scales, exact_rerank = _as_storage(docs, scales)
    check_inputs(queries, storage, k, st_scales)
    N = storage.shape[0]
    if rerank_k is not None:
        if isinstance(rerank_k, bool) or not isinstance(rerank_k, int) or rerank_k < k:
            raise ValueError(f"rerank_k must be an int >= k={k}, got {rerank_k!r}")
    kk = min(N, rerank_k) if rerank_k is not None else default_rerank_k(k, N)
    reduced = storage.dtype != torch.float32
    device = storage.device
    q_ng = queries.detach()
    # a reduced-precision pass always keeps kk candidates; it may be exact (then the rerank is cheap and only
    # matters when fp32 originals exist) or approximate (AMX/GPU bf16 arithmetic)
    s, i, nan, approx = _candidates(q_ng, storage.detach(), None if st_scales is None else st_scales.detach(),
                                    kk if reduced else k, backend, device, cpu_kernel, block)
    if nan:
        raise_nan_in_docs(storage, st_scales)
    if reduced and (approx or exact_rerank):
        s, i = _rerank(q_ng, src.detach(), None if src_scales is None else src_scales.detach(), i, k)
    elif s.shape[1] != k:
        s, i = s[:, :k].contiguous(), i[:, :k].contiguous()
    return attach_grad(queries, src, src_scales, s, i), i
