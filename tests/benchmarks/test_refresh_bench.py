"""Smoke tests of benchmarks/refresh.py and benchmarks/retrieval_real.py (tiny encoder, tiny sizes)."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def test_refresh_benchmark_writes_its_report(tmp_path):
    from benchmarks import refresh
    from jmlr.retriever.testing import tiny_encoder_dir

    enc = tiny_encoder_dir(tmp_path / "enc")
    out = tmp_path / "bench"
    assert refresh.main(["--out", str(out), "--quick", "--passages", "120", "--every", "2", "--refreshes", "2",
                         "--batch", "4", "--encoder", str(enc), "--workers", "thread"]) == 0
    r = json.loads((out / "refresh.json").read_text())
    for key in ("sync_stall_s", "async_stall_s", "stall_ratio", "sync_wall_s", "async_wall_s", "refreshes"):
        assert isinstance(r[key], (int, float)), key
    assert r["refreshes"] == r["async_refreshes"] == 2
    sync = r["variants"]["sync"]
    assert sync["stall_s"] == r["sync_stall_s"]
    # a synchronous refresh blocks the loop for its whole re-encode: the sync stall covers every encode
    assert len(sync["encode_s"]) == 2 and sync["stall_s"] >= sum(sync["encode_s"])
    assert r["config"]["passages"] == 120 and set(r["variants"]) == {"sync", "thread"}
    assert (out / "refresh.png").stat().st_size > 0
    assert "| sync | 2 |" in (out / "refresh.md").read_text()


def test_retrieval_real_skips_cleanly_without_data(tmp_path, capsys):
    from benchmarks import retrieval_real

    assert retrieval_real.main(["--out", str(tmp_path), "--data", str(tmp_path / "absent")]) == 0
    assert "skipped" in json.loads((tmp_path / "retrieval_real.json").read_text())
    assert "skipped" in capsys.readouterr().out
