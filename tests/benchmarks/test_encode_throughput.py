"""benchmarks/encode_throughput.py --quick on a tiny sentence-transformers encoder: one row per max length,
the ratio against SentenceTransformer.encode measured in the same run, and matching embeddings."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_writes_ratio_rows(tmp_path):
    from jmlr.retriever.testing import tiny_encoder_dir

    enc = tiny_encoder_dir(tmp_path / "enc", max_length=128)
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "encode_throughput.py"), "--quick", "--model",
                        str(enc), "--texts", "96", "--max-lengths", "32,64", "--batch-size", "16", "--repeats", "1",
                        "--threads", "1", "--chunk-chars", "300", "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "out" / "encode_throughput.json").read_text())
    assert [row["max_length"] for row in res["rows"]] == [32, 64]
    for row in res["rows"]:
        assert row["ratio_vs_sentence_transformers"] > 0
        assert row["ratio_vs_sentence_transformers"] == row["jmlr_tokens_per_s"] / row["st_tokens_per_s"]
        assert row["embeddings_match"] and row["max_abs_diff"] <= 1e-5
        assert row["tokens"] > 0 and row["texts"] == 96
        assert 0.0 <= row["truncated_fraction"] <= 1.0
    # the shorter max length cuts at least as many texts, and strictly more tokens are kept at 64
    assert res["rows"][0]["truncated_fraction"] >= res["rows"][1]["truncated_fraction"]
    assert res["rows"][0]["tokens"] < res["rows"][1]["tokens"]
    assert res["texts"]["chunk_chars"] == 300
    assert set(res["host"]) >= {"cpu_model", "bf16_flags"}
    assert (tmp_path / "out" / "encode_throughput.png").stat().st_size > 1000


def test_bad_chunk_chars_is_refused(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "encode_throughput.py"), "--chunk-chars", "0",
                        "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--chunk-chars must be positive" in r.stderr
