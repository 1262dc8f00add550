"""Input checks and small helpers shared by every top-k backend."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import torch

STORAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.int8)


def check_inputs(queries: torch.Tensor, docs: torch.Tensor, k: int, scales: torch.Tensor | None) -> None:
    """Raise ``ValueError`` naming what is wrong with a (queries, docs, k, scales) call."""
    if not isinstance(queries, torch.Tensor) or not isinstance(docs, torch.Tensor):
        raise TypeError(f"queries and docs must be torch.Tensor, got {type(queries).__name__} and {type(docs).__name__}")
    if queries.dim() != 2:
        raise ValueError(f"queries must be 2-D (B, d), got shape {tuple(queries.shape)}")
    if docs.dim() != 2:
        raise ValueError(f"docs must be 2-D (N, d), got shape {tuple(docs.shape)}")
    if queries.shape[1] != docs.shape[1]:
        raise ValueError(f"dimension mismatch: queries are (B={queries.shape[0]}, d={queries.shape[1]}) but docs are "
                         f"(N={docs.shape[0]}, d={docs.shape[1]})")
    if not queries.is_floating_point():
        raise ValueError(f"queries must be floating point, got {queries.dtype}")
    if docs.dtype not in STORAGE_DTYPES:
        raise ValueError(f"docs dtype must be one of float32, float16, bfloat16, int8 (with scales); got {docs.dtype}")
    if queries.device != docs.device:
        raise ValueError(f"queries are on {queries.device} but docs are on {docs.device}")
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"k must be an int, got {k!r}")
    N = docs.shape[0]
    if N == 0:
        raise ValueError("docs is empty (N=0)")
    if k < 1 or k > N:
        raise ValueError(f"k={k} is out of range: it must be in [1, N={N}]")
    if docs.dtype == torch.int8:
        if scales is None:
            raise ValueError("int8 docs need per-row scales: pass scales=(N,) float32 (see jmlr.kernels.topk.quantize)")
    if scales is not None:
        if scales.dim() != 1 or scales.shape[0] != N:
            raise ValueError(f"scales must have shape (N,)=({N},), got {tuple(scales.shape)}")
        if scales.device != docs.device:
            raise ValueError(f"scales are on {scales.device} but docs are on {docs.device}")
    if queries.numel() and not bool(torch.isfinite(queries).all()):
        bad = (~torch.isfinite(queries)).any(dim=1).nonzero()[0, 0].item()
        raise ValueError(f"queries contain NaN or Inf (first at query row {bad})")


def raise_nan_in_docs(docs: torch.Tensor, scales: torch.Tensor | None = None, block: int = 65536) -> None:
    """Called after a kernel saw a NaN score: find the first bad doc row and raise ``ValueError`` naming it."""
    for start in range(0, docs.shape[0], block):
        blk = docs[start:start + block]
        if blk.is_floating_point():
            bad = ~torch.isfinite(blk).all(dim=1)
            if bad.any():
                raise ValueError(f"docs contain NaN or Inf (first at doc row {start + int(bad.nonzero()[0, 0])})")
    if scales is not None:
        bad = ~torch.isfinite(scales)
        if bad.any():
            raise ValueError(f"scales contain NaN or Inf (first at doc row {int(bad.nonzero()[0, 0])})")
    raise ValueError("a NaN score came out of finite inputs (overflow: inner products beyond float32 range)")


def default_rerank_k(k: int, N: int) -> int:
    """Candidates kept by a reduced-precision pass before the exact rerank: max(2k, k + 32), at most N."""
    return min(N, max(2 * k, k + 32))


def attach_grad(queries: torch.Tensor, docs: torch.Tensor, scales: torch.Tensor | None, scores: torch.Tensor,
                idx: torch.Tensor) -> torch.Tensor:
    """Scores (B, k) recomputed with autograd for the winners, when queries or docs require grad.

    The kernels run without autograd; selection is piecewise constant, so the gradient of the top-k scores is
    the gradient of ``q . d_idx`` for the selected rows (what the trainer needs for its candidate scores).
    """
    if not torch.is_grad_enabled() or not (queries.requires_grad or docs.requires_grad):
        return scores
    rows = docs[idx.clamp_min(0)].float()  # (B, k, d)
    s = torch.einsum("bd,bkd->bk", queries.float(), rows)  # (B, k)
    if scales is not None:
        s = s * scales[idx.clamp_min(0)].float()
    return s


def staged_sources(root: Path, name: str, sources: Sequence[Path], flags: Sequence[str]) -> tuple[Path, list[str]]:
    """A build folder keyed by what the build depends on, with copies of ``sources`` in it.

    ``torch.utils.cpp_extension.load`` rebuilds when a source's *path* changes, so a folder keyed by the torch
    version alone was rebuilt by every checkout of the repository (25-70 s each on 2 cores) and shared between
    builds of different sources. Here the folder is named by the torch version and a digest of the sources'
    bytes and the compiler flags; the sources are copied into it (atomically, once), so every checkout with the
    same code loads one cached build and a changed source builds into a new folder.
    Returns ``(build_dir, [staged source paths])``.
    """
    h = hashlib.sha256()
    for src in sources:
        h.update(Path(src).name.encode() + b"\0" + Path(src).read_bytes() + b"\0")
    h.update("\0".join(flags).encode())
    build_dir = Path(root) / f"{name}_torch{torch.__version__.split('+')[0]}_{h.hexdigest()[:12]}"
    build_dir.mkdir(parents=True, exist_ok=True)
    staged = []
    for src in sources:
        dst = build_dir / Path(src).name
        data = Path(src).read_bytes()
        if not dst.exists() or dst.read_bytes() != data:
            tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, dst)
        staged.append(str(dst))
    return build_dir, staged
