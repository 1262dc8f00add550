"""Triton backend: fused tile dot + per-tile candidates, then a merge (two stages).

Stage 1 (one program per BLOCK_B queries x BLOCK_N docs): accumulate the score tile with ``tl.dot`` over d,
apply the int8 row scales, and keep the tile's KK best per query (KK = next power of two >= k, at most
BLOCK_N) with ``tl.topk`` on packed 64-bit keys (order-preserving score bits | inverted tile-local index),
so values and indices come out of one selection. Stage 2 merges the (B, n_tiles * KK) candidates with
``torch.topk``. A per-tile selection instead of a streaming per-row heap: a streaming ``tl.topk`` per tile
that keeps a running state is known to be slow.

Runs on CUDA tensors; on CPU tensors only under ``TRITON_INTERPRET=1`` (tests use tiny shapes there; the
interpreter's bf16 ``tl.dot`` is wrong, so it computes in fp32). fp32 docs use IEEE fp32 dots (exact path);
fp16/bf16/int8 docs use bf16/fp16 tensor-core dots and are reranked exactly by the dispatch.
"""
from __future__ import annotations

import os

import torch


def available() -> bool:
    """True when Triton imports and can run here (a CUDA device, or the interpreter)."""
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") == "1"


_KERNEL = None


def _build_kernel():
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    import triton
    import triton.language as tl

    @triton.jit
    def _tile_topk_kernel(Q, D, S, OUT_S, OUT_I, NAN, B, N, d, stride_q, stride_d, n_tiles,
                          HAS_SCALES: tl.constexpr, CAST_F32: tl.constexpr, IEEE: tl.constexpr,
                          LOW_PRECISION_BF16: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_D: tl.constexpr, KK: tl.constexpr):
        pid_b = tl.program_id(0)
        pid_n = tl.program_id(1)
        offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        for d0 in range(0, d, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            q = tl.load(Q + offs_b[:, None] * stride_q + offs_d[None, :],
                        mask=(offs_b[:, None] < B) & (offs_d[None, :] < d), other=0.0)
            x = tl.load(D + offs_n[:, None] * stride_d + offs_d[None, :],
                        mask=(offs_n[:, None] < N) & (offs_d[None, :] < d), other=0)
            if CAST_F32:
                q = q.to(tl.float32)
                x = x.to(tl.float32)
            elif LOW_PRECISION_BF16:
                q = q.to(tl.bfloat16)
                x = x.to(tl.bfloat16)
            else:
                q = q.to(tl.float16)
                x = x.to(tl.float16)
            if IEEE:
                acc = tl.dot(q, tl.trans(x), acc, input_precision="ieee")  # (BLOCK_B, BLOCK_N)
            else:
                acc = tl.dot(q, tl.trans(x), acc)
        if HAS_SCALES:
            sc = tl.load(S + offs_n, mask=offs_n < N, other=1.0)
            acc = acc * sc[None, :]
        bad = (acc != acc) | (tl.abs(acc) == float("inf"))  # NaN or +-Inf
        bad = bad & (offs_n[None, :] < N) & (offs_b[:, None] < B)
        nan_count = tl.sum(tl.sum(tl.where(bad, 1, 0), axis=1), axis=0)
        if nan_count > 0:
            tl.atomic_add(NAN, nan_count)
        acc = tl.where(offs_n[None, :] < N, acc, float("-inf"))
        out_base = offs_b[:, None] * (n_tiles * KK) + pid_n * KK
        if KK == BLOCK_N:
            offs_k = tl.arange(0, BLOCK_N)
            tl.store(OUT_S + out_base + offs_k[None, :], acc, mask=offs_b[:, None] < B)
            tl.store(OUT_I + out_base + offs_k[None, :], offs_n[None, :].to(tl.int64), mask=offs_b[:, None] < B)
        else:
            # order-preserving int32 of the score, then (key << 32) | (BLOCK_N - 1 - local): larger is better,
            # ties go to the smaller index
            bits = acc.to(tl.int32, bitcast=True)
            key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
            local = tl.arange(0, BLOCK_N)
            packed = (key.to(tl.int64) << 32) | (BLOCK_N - 1 - local)[None, :].to(tl.int64)
            best = tl.topk(packed, KK, dim=1)  # (BLOCK_B, KK), largest first
            key32 = (best >> 32).to(tl.int32)
            sbits = key32 ^ ((key32 >> 31) & 0x7FFFFFFF)
            score = sbits.to(tl.float32, bitcast=True)
            idx = pid_n * BLOCK_N + (BLOCK_N - 1 - (best & 0xFFFFFFFF))
            offs_k = tl.arange(0, KK)
            tl.store(OUT_S + out_base + offs_k[None, :], score, mask=offs_b[:, None] < B)
            tl.store(OUT_I + out_base + offs_k[None, :], idx, mask=offs_b[:, None] < B)

    _KERNEL = _tile_topk_kernel
    return _KERNEL


def _next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


@torch.no_grad()
def topk_triton(queries: torch.Tensor, docs: torch.Tensor, k: int, *, scales: torch.Tensor | None = None,
                block_b: int | None = None, block_n: int | None = None, block_d: int | None = None):
    """Two-stage Triton top-k. Returns (scores (B, k) f32, indices (B, k) i64, nan_seen), best first.

    fp32 docs: exact IEEE fp32 dots. fp16/bf16/int8 docs: reduced-precision dots (int8 via bf16, exact for the
    stored values up to the query's rounding), so callers rerank.
    """
    if not available():
        raise RuntimeError("Triton backend needs triton and a CUDA device (or TRITON_INTERPRET=1)")
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if docs.device.type != "cuda" and not interpret:
        raise ValueError(f"backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1), got {docs.device}")
    kernel = _build_kernel()
    q = queries.float().contiguous()
    x = docs if docs.stride(1) == 1 else docs.contiguous()
    B, d = q.shape
    N = x.shape[0]
    if interpret:
        bb, bn, bd = block_b or 16, block_n or 32, block_d or 32
    else:
        # untuned guesses (no GPU was available while writing this): ~8x more docs per tile than candidates
        # kept, and a (BLOCK_B, BLOCK_N) int64 selection that stays within a program's registers
        bn = block_n or max(128, min(1024, 8 * _next_pow2(k)))
        bb = block_b or (32 if (B > 16 and bn <= 256) else 16)
        bd = block_d or 64
    bb, bn, bd = max(16, _next_pow2(bb)), max(16, _next_pow2(bn)), max(16, _next_pow2(bd))
    kk_tile = min(_next_pow2(k), bn)
    n_tiles = (N + bn - 1) // bn
    out_s = torch.empty((B, n_tiles * kk_tile), dtype=torch.float32, device=q.device)
    out_i = torch.empty((B, n_tiles * kk_tile), dtype=torch.int64, device=q.device)
    nan = torch.zeros((1,), dtype=torch.int32, device=q.device)
    sc = scales.float().contiguous() if scales is not None else out_s  # dummy pointer when unused
    reduced = x.dtype != torch.float32
    grid = ((B + bb - 1) // bb, n_tiles)
    kernel[grid](q, x, sc, out_s, out_i, nan, B, N, d, q.stride(0), x.stride(0), n_tiles,
                 HAS_SCALES=scales is not None, CAST_F32=interpret or not reduced, IEEE=not reduced,
                 LOW_PRECISION_BF16=x.dtype != torch.float16, BLOCK_B=bb, BLOCK_N=bn, BLOCK_D=bd, KK=kk_tile)
    # stage 2: merge the per-tile candidates
    out_i = torch.where(torch.isneginf(out_s), torch.full_like(out_i, -1), out_i)
    s, pos = out_s.topk(k, dim=1)  # (B, k)
    i = out_i.gather(1, pos)
    order = i.argsort(dim=1)
    s, i = s.gather(1, order), i.gather(1, order)
    order = s.argsort(dim=1, descending=True, stable=True)
    return s.gather(1, order), i.gather(1, order), bool(nan.item() > 0)
