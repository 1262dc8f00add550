"""benchmarks/reader_throughput.py --quick runs end to end on tiny random models and writes its report."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_writes_rows_and_speedup(tmp_path, tiny_bert_dir, tiny_reader_dir):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "reader_throughput.py"), "--quick",
                        "--questions", "3", "--repeats", "1", "--batch", "2", "--roof-n", "128", "--out", str(tmp_path),
                        "--reader", tiny_reader_dir, "--retriever", tiny_bert_dir], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "reader_throughput.json").read_text())
    rows = res["rows"]
    got = {(row["workload"], row["path"], row["precision"]) for row in rows}
    assert got == {(w, p, prec) for prec in ("fp32", "bf16") for w, p in
                   (("joint_step", "train"), ("cloze_eval", "per_option"), ("cloze_eval", "shared_prefix"),
                    ("letter_eval", "one_position"))}
    for row in rows:
        assert row["tokens_per_s"] > 0 and 0 < row["mfu"] and row["seconds"] > 0
    by = {(row["workload"], row["path"], row["precision"]): row for row in rows}
    per, shared = by["cloze_eval", "per_option", "fp32"], by["cloze_eval", "shared_prefix", "fp32"]
    # same workload, but the packed path runs each prompt once instead of once per option (4 options)
    assert per["tokens"] == shared["tokens"] == per["computed_tokens"]
    assert shared["computed_tokens"] < per["computed_tokens"] / 2
    assert res["speedup_shared_prefix"] == res["speedup_shared_prefix_by_precision"][
        res["speedup_shared_prefix_precision"]]
    assert res["speedup_shared_prefix"] == shared["tokens_per_s"] / per["tokens_per_s"] or \
        res["speedup_shared_prefix_precision"] != "fp32"
    assert set(res["host"]) >= {"cpu_model", "bf16_flags"} and res["roof_flop_per_s"]["fp32"] > 0
    assert (tmp_path / "reader_throughput.png").stat().st_size > 1000
    assert "shared_prefix" in (tmp_path / "reader_throughput.md").read_text()
