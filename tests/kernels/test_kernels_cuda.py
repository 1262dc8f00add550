"""CUDA sources: compile-checked with nvcc for sm_80 and sm_90 (no GPU here); run only where CUDA exists."""
from __future__ import annotations

import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch

from jmlr.kernels.topk import cuda_backend

CU = Path(cuda_backend.__file__).with_name("cuda") / "topk_cuda.cu"
BINDING = CU.with_name("binding.cpp")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_kernel_compiles_for_sm80_and_sm90(tmp_path):
    obj = tmp_path / "topk_cuda.o"
    cmd = ["nvcc", "-c", "-O3", "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
           "-Xptxas", "-v", str(CU), "-o", str(obj)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert obj.stat().st_size > 0
    # every instantiation was assembled for both architectures, without register spills
    log = out.stderr
    assert "sm_80" in log and "sm_90" in log
    assert "spill stores" in log and " 0 bytes spill stores" in log
    assert "bytes spill stores" not in log.replace(" 0 bytes spill stores", "")
    nm = shutil.which("nm")
    if nm:
        syms = subprocess.run([nm, str(obj)], capture_output=True, text=True).stdout
        assert "jmlr_topk_cuda_launch" in syms


@pytest.mark.slow  # parsing torch/extension.h takes ~15 s of CPU
@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
def test_cuda_binding_compiles_against_torch_headers():
    from torch.utils.cpp_extension import include_paths

    cmd = ["g++", "-std=c++20", "-fsyntax-only", "-w", "-DTORCH_EXTENSION_NAME=jmlr_topk_cuda",
           f"-I{sysconfig.get_paths()['include']}"] + [f"-I{p}" for p in include_paths()] + [str(BINDING)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]


def test_cuda_backend_absent_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present; the runtime tests below cover it")
    assert cuda_backend.load_extension() is None
    with pytest.raises(RuntimeError, match="unavailable"):
        cuda_backend.topk_cuda(torch.randn(1, 4), torch.randn(4, 4), 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["cuda", "triton", "auto"])
@pytest.mark.parametrize("kind", ["fp32", "fp16", "bf16", "int8"])
def test_gpu_backends_match_reference(backend, kind):
    from jmlr.kernels.topk import quantize, topk, topk_reference

    g = torch.Generator().manual_seed(0)
    q = torch.randn(37, 200, generator=g)
    docs = torch.randn(20011, 200, generator=g)
    q, docs = q / q.norm(dim=1, keepdim=True), docs / docs.norm(dim=1, keepdim=True)
    src = docs if kind == "fp32" else quantize(docs, kind)
    s, i = topk(q.cuda(), src.to("cuda") if kind != "fp32" else docs.cuda(), 25, backend=backend)
    rs, ri = topk_reference(q, docs, 25)
    assert torch.equal(i.cpu(), ri)
    torch.testing.assert_close(s.cpu(), rs, atol=1e-4, rtol=0)
