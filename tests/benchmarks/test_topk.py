"""benchmarks/topk.py end to end on a tiny grid: every method, the JSON row schema, markdown and PNG."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "topk.py"
FIELDS = {"method", "d", "N", "B", "k", "seconds", "pct_stream_bw", "gflops", "ratio_vs_best_baseline", "recall_at_k"}


def test_topk_benchmark_tiny_grid(tmp_path):
    pytest.importorskip("faiss", reason="faiss-cpu is not installed")
    out = tmp_path / "bench"
    cmd = [sys.executable, str(SCRIPT), "--d", "32", "--N", "3000", "--B", "1,5", "--k", "4", "--repeats", "1",
           "--stream-gib", "0.125", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    payload = json.loads((out / "topk.json").read_text())
    rows = payload["rows"]
    methods = {r["method"] for r in rows}
    assert {"jmlr_fp32", "jmlr_bf16_rerank", "jmlr_fp16_rerank", "jmlr_int8_rerank", "faiss_default",
            "faiss_blas", "torch_mm_topk"} <= methods
    assert len(rows) == 2 * len(methods)
    for r in rows:
        assert FIELDS <= set(r), r
        assert r["seconds"] > 0 and r["gflops"] > 0 and r["pct_stream_bw"] > 0
        assert r["recall_at_k"] >= 0.99, r  # every method is exact or reranked exactly on this easy data
    # ratios are against the fastest baseline of the same shape, so one baseline sits at exactly 1.0
    for B in (1, 5):
        base = [r["ratio_vs_best_baseline"] for r in rows if r["B"] == B and r["method"] in
                ("faiss_default", "faiss_blas", "torch_mm_topk")]
        assert min(base) == pytest.approx(1.0)
    assert payload["stream_gbps"] > 0 and payload["goals"]
    assert "| method |" in (out / "topk.md").read_text()
    assert (out / "topk.png").stat().st_size > 1000
