"""benchmarks/refresh_budget.py --quick on a tiny encoder: the three policies in one run, equal encodes for
budget vs full_equal, and the recall / recovery figures written."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_compares_policies_at_equal_encode_budget(tmp_path, tiny_bert_dir):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "refresh_budget.py"), "--quick", "--encoder",
                        tiny_bert_dir, "--passages", "1200", "--every", "4", "--budget", "0.25", "--batch", "4",
                        "--eval-queries", "30", "--lr", "1e-3", "--out", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "refresh_budget.json").read_text())
    rows = {row["policy"]: row for row in res["rows"]}
    assert set(rows) == {"budget", "full_equal", "full_every_r"}
    n = res["config"]["passages"]
    assert rows["budget"]["encoded"] == rows["full_equal"]["encoded"] == n  # 4 x 25% vs one full, in 16 steps
    assert rows["full_every_r"]["encoded"] == 4 * n and rows["budget"]["refreshes"] == 4
    for row in rows.values():
        assert 0 <= row["mean_query_recall"] <= 1 and 0 <= row["mean_probe_recall"] <= 1
        assert "query_recall_recovered_per_1k_encoded" in row
    sel = rows["budget"]["selected"][0]
    assert sel["pool"] > 0 and sel["random"] > 0
    assert len(res["curve"]) == 1 + 2 * 4 and (out / "refresh_budget.png").stat().st_size > 1000


def test_joint_arms_run_at_equal_encode_budget(tmp_path, tiny_bert_dir, tiny_reader_dir):
    """The full mode's two joint runs, on tiny models and 4 steps: both finish and report their encodes."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.refresh_budget import joint_runs, parse_args

    args = parse_args(["--out", str(tmp_path), "--quick", "--encoder", tiny_bert_dir, "--reader", tiny_reader_dir,
                       "--every", "1", "--budget", "0.25", "--joint-steps", "4", "--joint-eval", "6"])
    res = joint_runs(args, tmp_path, overrides=["optim.batch_size=2", "index.top_k=2", "optim.precision=fp32",
                                                "refresh.probe_size=8", "optim.warmup_steps=0"],
                     reader_max_length=128)
    by = {r["arm"]: r for r in res}
    assert set(by) == {"full_equal", "budget"}
    for r in res:
        assert 0 <= r["accuracy"] <= 1 and r["recall_at_5"] is not None and r["encoded"] > 0
