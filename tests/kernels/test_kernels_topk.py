"""Fused score + top-k on the CPU: every backend against THE reference (faiss torch_test_contrib / Liger style).

Shapes x storage dtype x backend/kernel, with odd shapes (B = 1, N not a multiple of the block, k > block,
k = N, B not a multiple of the query tile, odd d), non-contiguous inputs and the error cases.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from jmlr.kernels.topk import QuantizedDocs, quantize, topk, topk_reference

# (B, N, d, k, block): block is passed to the blocked kernels so that N % block != 0 and k > block occur
SHAPES = [
    (1, 1000, 64, 10, 256),  # B = 1
    (5, 4133, 96, 7, 1024),  # N not a multiple of the block, d not a multiple of 32
    (3, 300, 33, 300, 128),  # k = N, odd d
    (4, 2000, 48, 700, 512),  # k > block
    (35, 3001, 128, 17, 1000),  # B not a multiple of the 4-query / 16-query tiles
]
SHAPE_IDS = ["B1", "N_odd", "k_eq_N", "k_gt_block", "B35"]
STORAGE = ["fp32", "fp16", "bf16", "int8"]
BACKENDS = [("cpu", "stream"), ("cpu", "tile"), ("cpu", "gemm"), ("cpu", "amx"), ("torch", None),
            ("reference", None)]
BACKEND_IDS = ["cpu-stream", "cpu-tile", "cpu-gemm", "cpu-amx", "torch", "reference"]
TOL = {"fp32": 1e-4, "fp16": 1.5e-3, "bf16": 8e-3, "int8": 1.5e-2}  # vs the fp32 originals (unit rows)


def store(docs: torch.Tensor, kind: str):
    """(storage tensor, scales, dequantized fp32 view of exactly what is stored)."""
    if kind == "fp32":
        return docs, None, docs
    if kind == "int8":
        qd = quantize(docs, "int8", keep_fp32=False)
        return qd.data, qd.scales, qd.dequantize()
    x = docs.to({"fp16": torch.float16, "bf16": torch.bfloat16}[kind])
    return x, None, x.float()


def assert_topk(s, i, q, dref, k, tol):
    """Our (s, i) against the reference on the dequantized docs ``dref``.

    Indices must equal topk_reference's wherever the reference scores are separated by more than the
    tolerance (ties within rounding can swap), the gathered fp64 scores of our indices must equal the
    reference's k best, and our returned scores must match the fp64 scores of our indices.
    """
    B, N = q.shape[0], dref.shape[0]
    assert s.shape == (B, k) and i.shape == (B, k)
    assert s.dtype == torch.float32 and i.dtype == torch.int64
    assert bool((i >= 0).all()) and bool((i < N).all())
    for b in range(B):
        assert len(set(i[b].tolist())) == k, "duplicate indices"
    rs, ri = topk_reference(q, dref, k)
    exact = q.double() @ dref.double().T  # (B, N)
    got = exact.gather(1, i)  # (B, k)
    torch.testing.assert_close(s.double(), got, atol=tol, rtol=0)
    torch.testing.assert_close(got.sort(dim=1, descending=True).values, exact.topk(k, dim=1).values,
                               atol=tol, rtol=0)
    assert bool((s[:, :-1] >= s[:, 1:]).all()), "scores must be best first"
    padded = torch.cat([rs, torch.full((B, 1), float("-inf"))], 1)
    gap_next = padded[:, :-1] - padded[:, 1:]
    gap_prev = torch.cat([torch.full((B, 1), float("inf")), gap_next[:, :-1]], 1)
    separated = (gap_next > 10 * tol) & (gap_prev > 10 * tol)
    assert separated.any(), "test data has no separated positions"
    assert bool((i[separated] == ri[separated]).all()), "indices differ from topk_reference at separated positions"


def _skip_if_unavailable(backend, kernel, kind, feats):
    if backend == "cpu" and kernel == "amx":
        if kind == "fp32":
            pytest.skip("the amx kernel is for reduced-precision storage (fp32 raises, tested separately)")
        if not feats.get("amx_bf16"):
            pytest.skip("this CPU has no AMX-BF16")
    if backend == "cpu" and kernel in ("stream", "tile") and not feats.get("avx512"):
        pytest.skip(f"the {kernel} kernel needs AVX-512; the gemm kernel runs via dispatch there")


@pytest.mark.parametrize("backend,kernel", BACKENDS, ids=BACKEND_IDS)
@pytest.mark.parametrize("kind", STORAGE)
@pytest.mark.parametrize("B,N,d,k,block", SHAPES, ids=SHAPE_IDS)
def test_topk_matches_reference(B, N, d, k, block, kind, backend, kernel, unit_rows, request):
    feats = request.getfixturevalue("cpu_features") if backend == "cpu" else {}
    _skip_if_unavailable(backend, kernel, kind, feats)
    q = unit_rows(B, d, seed=1)
    docs = unit_rows(N, d, seed=2)
    x, scales, dref = store(docs, kind)
    s, i = topk(q, x, k, backend=backend, scales=scales, cpu_kernel=kernel, block=block)
    # exact with respect to the stored values (the amx pass is reranked against them)
    assert_topk(s, i, q, dref, k, tol=1e-4)
    # and within the storage precision of the fp32 originals
    assert float((s.double() - (q.double() @ docs.double().T).gather(1, i)).abs().max()) <= TOL[kind]


@pytest.mark.parametrize("kind", ["fp16", "bf16", "int8"])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_quantized_docs_rerank_is_exact_fp32(kind, backend, unit_rows):
    q = unit_rows(9, 96, seed=3)
    docs = unit_rows(5000, 96, seed=4)
    qd = quantize(docs, kind)
    assert isinstance(qd, QuantizedDocs) and qd.fp32 is docs and len(qd) == 5000
    s, i = topk(q, qd, 10, backend=backend)
    assert_topk(s, i, q, docs, 10, tol=1e-4)  # exact against the fp32 rows, not the stored ones
    s2, i2 = qd.search(q, 10, rerank_k=40, backend=backend)
    assert torch.equal(i, i2)


@pytest.mark.parametrize("kind", ["fp16", "bf16", "int8"])
def test_quantize_storage(kind, unit_rows):
    docs = unit_rows(700, 40, seed=5)
    qd = quantize(docs, kind, keep_fp32=False)
    assert qd.fp32 is None and qd.dtype == kind
    assert qd.nbytes == 700 * 40 * (1 if kind == "int8" else 2) + (700 * 4 if kind == "int8" else 0)
    err = (qd.dequantize() - docs).abs().max().item()
    assert err <= {"fp16": 1e-3, "bf16": 4e-3, "int8": docs.abs().max().item() / 127 / 2 + 1e-6}[kind]
    if kind == "int8":
        assert qd.data.dtype == torch.int8 and qd.scales.shape == (700,)
        assert int(qd.data.abs().max()) == 127


def test_quantize_errors():
    with pytest.raises(ValueError, match="unknown storage dtype"):
        quantize(torch.randn(4, 3), "int4")
    with pytest.raises(ValueError, match="2-D floating"):
        quantize(torch.randn(4), "bf16")
    bad = torch.randn(10, 3)
    bad[7, 1] = float("nan")
    with pytest.raises(ValueError, match="row 7"):
        quantize(bad, "int8")
    with pytest.raises(ValueError, match="float16 range"):
        quantize(torch.full((2, 2), 1e6), "fp16")


def test_zero_row_int8_scale():
    docs = torch.randn(5, 8)
    docs[2] = 0
    qd = quantize(docs, "int8")
    assert qd.scales[2] == 1.0 and bool((qd.data[2] == 0).all())


@pytest.mark.parametrize("backend", ["auto", "torch", "reference"])
def test_non_contiguous_inputs(backend, unit_rows):
    big_q = unit_rows(6, 128, seed=6)
    q = big_q[:, ::2]  # (6, 64), stride (128, 2)
    big_d = unit_rows(3000, 80, seed=7)
    docs = big_d[:, :64]  # rows strided: stride (80, 1)
    assert not q.is_contiguous() and not docs.is_contiguous()
    s, i = topk(q, docs, 12, backend=backend)
    assert_topk(s, i, q.contiguous(), docs.contiguous(), 12, tol=1e-4)
    docs_t = docs.contiguous().T.contiguous().T  # same values, column-major: stride (1, 3000)
    assert docs_t.stride(1) != 1
    s2, i2 = topk(q, docs_t, 12, backend=backend)
    assert torch.equal(i, i2)
    torch.testing.assert_close(s, s2, atol=1e-5, rtol=0)


def test_half_queries_and_sorted_ties(unit_rows):
    q = unit_rows(3, 32, seed=8).half()
    docs = unit_rows(500, 32, seed=9)
    s, i = topk(q, docs, 5)
    assert_topk(s, i, q.float(), docs, 5, tol=1e-4)
    # exact ties: duplicated rows tie; the smaller index comes first
    dup = torch.cat([docs[:10], docs[:10]])  # rows j and j + 10 are equal
    s, i = topk(q.float(), dup, 4)
    for b in range(3):
        for j in range(0, 4, 2):
            assert s[b, j] == s[b, j + 1] and i[b, j] + 10 == i[b, j + 1]


@pytest.mark.parametrize("backend", ["auto", "torch", "reference"])
def test_errors(backend):
    q, docs = torch.randn(2, 8), torch.randn(20, 8)
    with pytest.raises(ValueError, match=r"k=21 is out of range.*N=20"):
        topk(q, docs, 21, backend=backend)
    with pytest.raises(ValueError, match="out of range"):
        topk(q, docs, 0, backend=backend)
    with pytest.raises(ValueError, match=r"dimension mismatch.*d=7.*d=8"):
        topk(torch.randn(2, 7), docs, 3, backend=backend)
    with pytest.raises(ValueError, match="2-D"):
        topk(torch.randn(8), docs, 3, backend=backend)
    bad_q = q.clone()
    bad_q[1, 3] = float("nan")
    with pytest.raises(ValueError, match="queries contain NaN.*row 1"):
        topk(bad_q, docs, 3, backend=backend)
    bad_d = docs.clone()
    bad_d[13, 2] = float("nan")
    with pytest.raises(ValueError, match="docs contain NaN or Inf.*row 13"):
        topk(q, bad_d, 3, backend=backend)
    bad_d[13, 2] = float("inf")
    with pytest.raises(ValueError, match="docs contain NaN or Inf.*row 13"):
        topk(q, bad_d, 3, backend=backend)
    bad_q[1, 3] = float("-inf")
    with pytest.raises(ValueError, match="queries contain NaN or Inf.*row 1"):
        topk(bad_q, docs, 3, backend=backend)
    with pytest.raises(ValueError, match="scales"):
        topk(q, docs.to(torch.int8), 3, backend=backend)
    with pytest.raises(ValueError, match="rerank_k"):
        topk(q, docs, 5, rerank_k=4, backend=backend)
    with pytest.raises(ValueError, match="k must be an int"):
        topk(q, docs, 2.0, backend=backend)


def test_nan_docs_detected_by_every_cpu_kernel(cpu_features):
    q, docs = torch.randn(3, 64), torch.randn(3000, 64)
    docs[2222, 5] = float("nan")
    docs[2500, 1] = float("inf")  # the first bad row is named
    kernels = ["stream", "tile", "gemm"] if cpu_features["avx512"] else ["gemm"]
    for kern in kernels:
        with pytest.raises(ValueError, match="row 2222"):
            topk(q, docs, 4, backend="cpu", cpu_kernel=kern)
    if cpu_features["amx_bf16"]:
        with pytest.raises(ValueError, match="row 2222"):
            topk(q, docs.bfloat16(), 4, backend="cpu", cpu_kernel="amx")


def test_bad_options(cpu_features):
    q, docs = torch.randn(2, 8), torch.randn(20, 8)
    with pytest.raises(ValueError, match="unknown backend"):
        topk(q, docs, 3, backend="gpu")
    with pytest.raises(ValueError, match="unknown cpu_kernel"):
        topk(q, docs, 3, backend="cpu", cpu_kernel="fast")
    with pytest.raises(ValueError, match="amx"):
        topk(q, docs, 3, backend="cpu", cpu_kernel="amx")  # fp32 storage (or no AMX)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        topk(q, docs, 3, backend="cuda")
    with pytest.raises(ValueError, match="inside QuantizedDocs"):
        topk(q, quantize(docs, "int8"), 3, scales=torch.ones(20))


def test_gradient_reaches_queries_and_docs(unit_rows):
    q = unit_rows(4, 16, seed=10).requires_grad_()
    docs = unit_rows(200, 16, seed=11).requires_grad_()
    s, i = topk(q, docs, 5)
    assert s.requires_grad
    s.sum().backward()
    expect_q = docs.detach()[i].sum(dim=1)  # d/dq sum_j q . d_ij
    torch.testing.assert_close(q.grad, expect_q)
    expect_d = torch.zeros_like(docs)
    expect_d.index_add_(0, i.flatten(), q.detach().repeat_interleave(5, dim=0))
    torch.testing.assert_close(docs.grad, expect_d)
    with torch.no_grad():
        s2, _ = topk(q, docs, 5)
    assert not s2.requires_grad


def test_dispatch_by_shape_and_dtype():
    from jmlr.kernels import topk as tk

    full = {"avx512": True, "amx_bf16": True}
    f32, bf = torch.empty(1, 1), torch.empty(1, 1, dtype=torch.bfloat16)
    assert tk._cpu_kernel(1, f32, full, None) == "stream"
    assert tk._cpu_kernel(tk.STREAM_MAX_B, f32, full, None) == "stream"
    assert tk._cpu_kernel(tk.STREAM_MAX_B + 1, f32, full, None) == "tile"
    assert tk._cpu_kernel(tk.GEMM_MIN_B - 1, f32, full, None) == "tile"
    assert tk._cpu_kernel(tk.GEMM_MIN_B, f32, full, None) == "gemm"
    i8, f16 = torch.empty(1, 1, dtype=torch.int8), torch.empty(1, 1, dtype=torch.float16)
    assert tk._cpu_kernel(1, bf, full, None) == "amx"  # bf16 rows feed the AMX tiles in place
    assert tk._cpu_kernel(1, i8, full, None) == "stream"  # int8 / fp16 rows would need a conversion first
    assert tk._cpu_kernel(tk.STREAM_MAX_B, i8, full, None) == "stream"
    assert tk._cpu_kernel(tk.AMX_MIN_B[torch.int8] - 1, i8, full, None) == "tile"
    assert tk._cpu_kernel(tk.AMX_MIN_B[torch.int8], i8, full, None) == "amx"
    assert tk._cpu_kernel(tk.AMX_MIN_B[torch.float16], f16, full, None) == "amx"
    assert tk._cpu_kernel(256, bf, full, None) == "amx"
    assert tk._cpu_kernel(64, bf, {"avx512": True, "amx_bf16": False}, None) == "tile"
    assert tk._cpu_kernel(256, bf, {"avx512": True, "amx_bf16": False}, None) == "gemm"
    assert tk._cpu_kernel(1, f32, {"avx512": False, "amx_bf16": False}, None) == "gemm"
    assert tk._cpu_kernel(3, f32, full, "gemm") == "gemm"
    with pytest.raises(ValueError, match="AVX-512"):
        tk._cpu_kernel(3, f32, {"avx512": False, "amx_bf16": False}, "tile")
    assert "torch" in tk.available_backends("cpu")


def test_fallback_without_compiler_is_clean(tmp_path):
    """With the build disabled, auto falls back to blocked torch: one warning, correct results, no error."""
    script = textwrap.dedent("""
        import json, logging, torch
        logging.basicConfig(level=logging.WARNING)
        from jmlr.kernels.topk import topk, topk_reference, available_backends
        q, d = torch.randn(3, 16), torch.randn(100, 16)
        s, i = topk(q, d, 5)
        s, i = topk(q, d, 5)
        rs, ri = topk_reference(q, d, 5)
        print(json.dumps({"same": bool(torch.equal(i, ri)), "backends": available_backends("cpu")}))
    """)
    env = dict(os.environ, JMLR_KERNELS_NO_BUILD="1", JMLR_CACHE=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["same"] and "cpu" not in res["backends"]
    assert out.stderr.count("compiled CPU top-k unavailable") == 1, out.stderr
    assert "Traceback" not in out.stderr


def test_extension_cached_in_jmlr_cache(cpu_ext):
    from jmlr.kernels.topk import cpu_backend

    assert str(cpu_backend.cache_dir()) in cpu_ext.__file__
