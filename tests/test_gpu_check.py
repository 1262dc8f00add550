"""scripts/gpu_check.sh (issue 16): --dry-run works on a CPU-only machine, and the report assembler turns the
steps' outputs into one JSON (checked here on fabricated outputs; the real run needs a GPU)."""
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(*args):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_dry_run_lists_the_steps_and_writes_nothing(tmp_path):
    out = tmp_path / "gc"
    r = _run("--dry-run", "--out", str(out))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert f"{out}/gpu_check.json" in lines[0]
    steps = {ln.split()[0]: ln for ln in lines[1:5]}
    assert list(steps) == ["gpu-tests", "topk", "joint", "faiss-gpu"]
    assert "-m gpu" in steps["gpu-tests"]
    assert "benchmarks/topk.py --device cuda --quick" in steps["topk"]
    joint = steps["joint"]
    assert "jmlr.cli train" in joint and "optim.steps=20" in joint and "index.type=exact" in joint
    assert "optim.precision=bf16" in joint
    assert sum(int(ln.split()[1].rstrip("s")) for ln in steps.values()) <= 480, "the limits add up to 8 minutes"
    assert not out.exists()


def test_bad_argument_and_no_gpu(tmp_path):
    r = _run("--frobnicate")
    assert r.returncode == 2 and "unknown argument '--frobnicate'" in r.stderr
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the real check would run")
    r = _run("--out", str(tmp_path / "gc"))
    assert r.returncode == 2 and "no CUDA GPU visible" in r.stderr and "--dry-run" in r.stderr


def _report_module():
    spec = importlib.util.spec_from_file_location("gpu_check_report", ROOT / "scripts" / "gpu_check_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_report_assembles_one_json(tmp_path):
    out = tmp_path / "gc"
    (out / "joint").mkdir(parents=True)
    (out / "steps.tsv").write_text("gpu-tests\t0\t61\tpytest -m gpu\ntopk\t124\t120\ttopk.py\n"
                                   "joint\t0\t75\tjmlr train\nfaiss-gpu\tskipped\t0\tfaiss\n")
    (out / "gpu_tests.xml").write_text('<testsuites><testsuite tests="9" failures="0" errors="0" skipped="2">'
                                       '<testcase name="a"><skipped message="needs 2 CUDA GPUs"/></testcase>'
                                       '</testsuite></testsuites>')
    (out / "joint" / "summary.json").write_text(json.dumps({
        "steps": 20, "final_loss": 1.5, "losses": [2.0] * 20, "evals": [{"accuracy": 0.4}],
        "costs": {"step_time_mean_s": 0.2, "refresh": {"index_device": "cuda:0"}}}))
    assert _report_module().main(out, 300) == 1  # topk timed out
    rep = json.loads((out / "gpu_check.json").read_text())
    assert rep["ok"] is False and rep["under_8_minutes"] is True and rep["total_s"] == 300
    s = rep["steps"]
    assert s["gpu-tests"]["status"] == "pass" and s["gpu-tests"]["passed"] == 7 and s["gpu-tests"]["skipped"] == 2
    assert s["gpu-tests"]["skip_reasons"] == ["needs 2 CUDA GPUs"]
    assert s["topk"]["status"] == "timeout" and s["faiss-gpu"]["status"] == "skipped"
    assert s["joint"]["status"] == "pass" and s["joint"]["index_device"] == "cuda:0" and s["joint"]["steps"] == 20

    (out / "joint" / "summary.json").write_text(json.dumps({"steps": 20, "costs": {"refresh": {"index_device": "cpu"}}}))
    (out / "steps.tsv").write_text("joint\t0\t75\tjmlr train\n")
    assert _report_module().main(out, 80) == 1
    joint = json.loads((out / "gpu_check.json").read_text())["steps"]["joint"]
    assert joint["status"] == "fail" and "exact index on cuda" in joint["why"]
