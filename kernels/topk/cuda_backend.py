"""CUDA backend: ``cuda/topk_cuda.cu`` + ``cuda/binding.cpp``, JIT-built with nvcc on first use (GPU machines).

Only built when torch sees a CUDA device and a CUDA toolkit; otherwise :func:`load_extension` returns None and
the dispatch uses Triton or the blocked torch path. Supports k <= 128 (``MAX_K``).
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch

from ._common import staged_sources
from .cpu_backend import cache_dir

logger = logging.getLogger("jmlr.kernels")

MAX_K = 128
_DIR = Path(__file__).with_name("cuda")
SOURCES = (_DIR / "binding.cpp", _DIR / "topk_cuda.cu")
_LOCK = threading.Lock()
_STATE: dict = {"tried": False, "ext": None, "error": None}


def load_extension(verbose: bool = False):
    """The compiled CUDA extension, or None (no CUDA device / toolkit, or a failed build, logged once)."""
    if _STATE["tried"]:
        return _STATE["ext"]
    with _LOCK:
        if _STATE["tried"]:
            return _STATE["ext"]
        ext, reason = None, None
        if not torch.cuda.is_available():
            reason = "no CUDA device"
        else:
            try:
                from torch.utils.cpp_extension import CUDA_HOME, load

                if CUDA_HOME is None:
                    reason = "no CUDA toolkit (CUDA_HOME)"
                else:
                    build_dir, sources = staged_sources(cache_dir(), "jmlr_topk_cuda", SOURCES, ["-O3"])
                    ext = load(name="jmlr_topk_cuda", sources=sources,
                               extra_cflags=["-O3"], extra_cuda_cflags=["-O3"], build_directory=str(build_dir),
                               verbose=verbose)
            except Exception as exc:  # noqa: BLE001
                reason = f"build failed: {type(exc).__name__}: {exc}"
        if ext is None and reason != "no CUDA device":
            logger.warning("jmlr.kernels: CUDA top-k extension unavailable (%s)", reason)
        _STATE.update(tried=True, ext=ext, error=reason)
        return ext


@torch.no_grad()
def topk_cuda(queries: torch.Tensor, docs: torch.Tensor, k: int, *, scales: torch.Tensor | None = None,
              docs_per_tile: int = 4096):
    """Fused CUDA top-k. Returns (scores (B, k) f32, indices (B, k) i64, nan_seen), best first.

    The kernel accumulates in fp32 from the stored values (fp16/bf16/int8 converted in registers), so its
    results are exact for the stored values.
    """
    ext = load_extension()
    if ext is None:
        raise RuntimeError(f"CUDA top-k extension unavailable: {_STATE['error']}")
    if k > MAX_K:
        raise ValueError(f"backend='cuda' supports k <= {MAX_K}; use backend='triton' or 'torch' for k={k}")
    q = queries.float().contiguous()
    x = docs if docs.stride(1) == 1 else docs.contiguous()
    sc = None if scales is None else scales.float().contiguous()
    stream = torch.cuda.current_stream(q.device).cuda_stream
    s, i, nan = ext.topk(q, x, sc, int(k), int(docs_per_tile), int(stream))
    order = i.argsort(dim=1)
    s, i = s.gather(1, order), i.gather(1, order)
    order = s.argsort(dim=1, descending=True, stable=True)
    return s.gather(1, order), i.gather(1, order), bool(nan.item() > 0)
