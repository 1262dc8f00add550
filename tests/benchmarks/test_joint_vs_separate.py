"""benchmarks/joint_vs_separate.py --quick runs end to end (tiny random models, demo data)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import joint_vs_separate as jvs  # noqa: E402


def test_quick_run_writes_all_arms(tmp_path, tiny_bert_dir, tiny_reader_dir):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "joint_vs_separate.py"), "--quick", "--quiet",
                        "--out", str(tmp_path), "--datasets", "demo", "--reader", tiny_reader_dir,
                        "--retriever", tiny_bert_dir], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    payload = json.loads((tmp_path / "joint_vs_separate.json").read_text())
    rows = payload["rows"]
    assert [row["arm"] for row in rows] == ["sft_closed_book", "pretrain_then_sft", "frozen_rag_sft",
                                            "separate_rag_sft", "joint"]
    for row in rows:
        assert set(row) >= {"dataset", "arm", "accuracy", "recall_at_5", "wall_s", "flops"}
        assert 0.0 <= row["accuracy"] <= 1.0 and row["wall_s"] > 0 and row["flops"] > 0
        assert (row["recall_at_5"] is None) == (row["arm"] in ("sft_closed_book", "pretrain_then_sft"))
    assert (tmp_path / "joint_vs_separate.png").stat().st_size > 1000
    assert "| joint |" in (tmp_path / "joint_vs_separate.md").read_text().replace("| demo ", "")
    # the joint arm's time-to-accuracy curve: step 0 (before training), the periodic evaluations, the final one;
    # times exclude evaluation and grow; the last point is the reported result
    joint = rows[-1]
    steps = [c[1] for c in joint["curve"]]
    assert steps[0] == 0 and steps[-1] == payload["settings"]["steps"] and steps == sorted(steps)
    times = [c[0] for c in joint["curve"]]
    assert times == sorted(times) and times[-1] == joint["wall_s"]
    assert joint["curve"][-1][2] == joint["accuracy"] and joint["curve"][-1][3] == joint["recall_at_5"]
    b = rows[1]
    assert [c[1] for c in b["curve"]] == ["pretrained", "sft"] and b["curve"][-1][2] == b["accuracy"]
    assert payload["goal"]["demo"] == jvs.goal(joint, b)  # the payload holds goal() of these two rows


def test_goal_against_hand_worked_curves():
    b = {"accuracy": 0.40, "wall_s": 100.0}
    # joint passes b's 0.40 first at the 30 s point (0.45), so 30 s = 0.3x b's wall: met
    j = {"accuracy": 0.50, "wall_s": 120.0, "curve": [[10.0, 0, 0.30, None], [30.0, 5, 0.45, None],
                                                        [120.0, 10, 0.50, None]]}
    g = jvs.goal(j, b)
    assert g["joint_time_to_b_accuracy_s"] == 30.0 and g["joint_time_to_b_over_b_wall"] == pytest.approx(0.3)
    assert g["met"] is True and g["joint_accuracy_minus_b"] == pytest.approx(0.10)
    assert g["joint_wall_over_b"] == pytest.approx(1.2)
    # reaching it only at 60 s (0.6x) is not met; never reaching it gives None and not met
    late = dict(j, curve=[[10.0, 0, 0.30, None], [60.0, 5, 0.40, None]])
    assert jvs.goal(late, b)["joint_time_to_b_accuracy_s"] == 60.0 and jvs.goal(late, b)["met"] is False
    never = dict(j, curve=[[10.0, 0, 0.30, None]])
    g = jvs.goal(never, b)
    assert g["joint_time_to_b_accuracy_s"] is None and g["joint_time_to_b_over_b_wall"] is None and not g["met"]
