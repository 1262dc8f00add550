"""Fused inner-product score + top-k: ``topk(queries, docs, k)`` picks the best backend for device, dtype, shape.

Backends (each in its own module, Liger-Kernel style; ``reference.py`` is THE reference for tests/benchmarks):

* ``"cpu"``       compiled C++ (``cpu/topk_cpu.cpp``, JIT-built and cached): an AVX-512 streaming kernel for
                  small batches (memory-bound), a register-tiled AVX-512 kernel with queries in the lanes for
                  medium batches, per-thread MKL sgemm + fused threshold filter for large batches (and where
                  AVX-512 is missing), and AMX-bf16 for reduced-precision candidate passes.
* ``"torch"``     blocked torch (any device; the clean fallback when no compiler is available).
* ``"triton"``    two-stage Triton kernel (fused tile dot + per-tile candidates, then a merge), CUDA tensors.
* ``"cuda"``      a CUDA C++ extension (``cuda/``), CUDA tensors, k <= 128.
* ``"reference"`` the exact torch reference.

Reduced precision: ``quantize(docs, "fp16" | "bf16" | "int8")`` returns a :class:`QuantizedDocs` that an index keeps
and passes as ``docs``; the candidate pass streams the small copy and an exact fp32 rerank of ``rerank_k``
candidates per query gives the final scores.

Example::

    from jmlr.kernels.topk import topk, quantize
    scores, idx = topk(q, doc_emb, k=10)                  # exact fp32, (B, 10) f32 / (B, 10) i64, best first
    store = quantize(doc_emb, "int8")                     # keep this in the index
    scores, idx = topk(q, store, k=10, rerank_k=64)       # int8 candidates + exact fp32 rerank
"""
from __future__ import annotations

from . import cpu_backend, cuda_backend, triton  # noqa: F401  (backend modules, for tests and benchmarks)
from .dispatch import (AMX_MIN_B, BACKENDS, CPU_KERNELS, GEMM_MIN_B, STREAM_MAX_B, _cpu_kernel,  # noqa: F401
                       available_backends, topk)
from .quantize import QuantizedDocs, quantize
from .reference import topk_reference

__all__ = ["topk", "topk_reference", "quantize", "QuantizedDocs", "available_backends", "BACKENDS", "CPU_KERNELS"]
