"""CPU backend: the compiled kernels of ``cpu/topk_cpu.cpp``, JIT-built once per machine and cached.

The extension is built with ``torch.utils.cpp_extension.load`` on first use (25-70 s on 2 cores) into
``$JMLR_CACHE/torch_extensions`` (default ``~/.cache/jmlr/torch_extensions``), in a folder keyed by the torch
version and a digest of the source and flags (:func:`._common.staged_sources`); later processes, from any checkout
of the same code, load the cached build in well under a second. Where no C++ compiler (or ninja) is available, or ``JMLR_KERNELS_NO_BUILD=1`` is
set, :func:`load_extension` returns ``None`` after logging one warning, and the dispatch falls back to the
blocked torch path. Nothing here raises because a compiler is missing.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

import torch

from ._common import staged_sources

logger = logging.getLogger("jmlr.kernels")

_SRC = Path(__file__).with_name("cpu") / "topk_cpu.cpp"
_LOCK = threading.Lock()
_STATE: dict = {"tried": False, "ext": None, "error": None}

# kernel ids understood by the extension
STREAM, GEMM, AMX, TILE = 0, 1, 2, 3


def cache_dir() -> Path:
    """Where compiled kernels are cached: ``$JMLR_CACHE/torch_extensions`` (default ``~/.cache/jmlr``)."""
    root = Path(os.environ.get("JMLR_CACHE", Path.home() / ".cache" / "jmlr")).expanduser()
    return root / "torch_extensions"


def _why_not_buildable() -> str | None:
    if os.environ.get("JMLR_KERNELS_NO_BUILD", "") not in ("", "0"):
        return "JMLR_KERNELS_NO_BUILD is set"
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler ({cxx!r}) on PATH"
    try:
        from torch.utils.cpp_extension import verify_ninja_availability

        verify_ninja_availability()
    except Exception:  # noqa: BLE001 - any failure means "cannot build"
        return "ninja is not installed (pip install ninja)"
    return None


def load_extension(verbose: bool = False):
    """The compiled CPU extension module, building it on first use; ``None`` if it cannot be built."""
    if _STATE["tried"]:
        return _STATE["ext"]
    with _LOCK:
        if _STATE["tried"]:
            return _STATE["ext"]
        reason = _why_not_buildable()
        ext = None
        if reason is None:
            try:
                from torch.utils.cpp_extension import load

                cflags, ldflags = ["-O3", "-fopenmp"], ["-fopenmp"]
                build_dir, sources = staged_sources(cache_dir(), "jmlr_topk_cpu", [_SRC], cflags + ldflags)
                ext = load(
                    name="jmlr_topk_cpu",
                    sources=sources,
                    extra_cflags=cflags,
                    extra_ldflags=ldflags,
                    build_directory=str(build_dir),
                    verbose=verbose,
                )
            except Exception as exc:  # noqa: BLE001 - compiler errors come in many types
                reason = f"build failed: {type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
                ext = None
        if ext is None:
            _STATE["error"] = reason
            logger.warning("jmlr.kernels: compiled CPU top-k unavailable (%s); using the blocked torch path.", reason)
        _STATE["ext"] = ext
        _STATE["tried"] = True
        return ext


def unavailable_reason() -> str | None:
    """Why the extension is not available (``None`` if it loaded or was never tried)."""
    return _STATE["error"]


def features() -> dict:
    """``{"avx512": bool, "amx_bf16": bool}`` for this CPU, or all False without the extension."""
    ext = load_extension()
    if ext is None:
        return {"avx512": False, "amx_bf16": False}
    return dict(ext.cpu_features())


def topk_cpu(queries: torch.Tensor, docs: torch.Tensor, k: int, *, scales: torch.Tensor | None = None,
             kernel: int = STREAM, block: int = 0):
    """Run one compiled kernel. ``queries`` (B, d) contiguous fp32; ``docs`` (N, d) fp32/bf16/fp16/int8 with
    contiguous rows; ``scales`` (N,) fp32 for int8; ``block`` doc rows per chunk (0: the kernel's default).
    Returns (scores (B, k) f32, idx (B, k) i64, nan_seen)."""
    ext = load_extension()
    if ext is None:
        raise RuntimeError(f"compiled CPU kernels unavailable: {unavailable_reason()}")
    s, i, nan = ext.topk(queries, docs, scales, int(k), int(kernel), int(block))
    return s, i, bool(nan.item())


def rerank_cpu(queries: torch.Tensor, docs: torch.Tensor, candidates: torch.Tensor, k: int, *,
               scales: torch.Tensor | None = None):
    """Exact fp32 rescoring of candidate ids (B, k') against ``docs``; the k best, best first."""
    ext = load_extension()
    if ext is None:
        raise RuntimeError(f"compiled CPU kernels unavailable: {unavailable_reason()}")
    return tuple(ext.rerank(queries, docs, scales, candidates.contiguous(), int(k)))
