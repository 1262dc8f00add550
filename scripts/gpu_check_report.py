"""Assemble OUT/gpu_check.json for scripts/gpu_check.sh from its step table (OUT/steps.tsv: name, rc, seconds,
command) and what each step wrote (junit XML, topk.json, the joint run's summary.json, faiss_gpu.json).

    python scripts/gpu_check_report.py OUT TOTAL_SECONDS      # exit 0 when every step passed or was skipped
"""
import json
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path


def main(out: Path, total: int) -> int:
    report = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(), "total_s": total,
              "under_8_minutes": total < 480, "steps": {}}
    try:
        import torch

        report["torch"] = torch.__version__
        report["cuda"] = torch.version.cuda
        p = torch.cuda.get_device_properties(0)
        report["gpu"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "count": torch.cuda.device_count(),
                         "capability": f"{p.major}.{p.minor}"}
    except Exception as e:  # noqa: BLE001 - the report says what went wrong
        report["gpu"] = {"error": repr(e)}
    try:
        report["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                               "--format=csv,noheader"], capture_output=True, text=True,
                                              timeout=20).stdout.strip()
    except Exception:  # noqa: BLE001
        report["nvidia_smi"] = None
    for line in (out / "steps.tsv").read_text().splitlines():
        name, rc, secs, cmd = line.split("\t", 3)
        status = "skipped" if rc == "skipped" else "pass" if rc == "0" else "timeout" if rc in ("124", "137") else "fail"
        step = {"status": status, "rc": None if rc == "skipped" else int(rc), "seconds": int(secs), "command": cmd,
                "log": str(out / "logs" / f"{name}.log")}
        try:
            if name == "gpu-tests" and (out / "gpu_tests.xml").is_file():
                root = ET.parse(out / "gpu_tests.xml").getroot()
                suite = root if root.tag == "testsuite" else root.find("testsuite")
                n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
                step.update(tests=n["tests"], failed=n["failures"] + n["errors"], skipped=n["skipped"],
                            passed=n["tests"] - n["failures"] - n["errors"] - n["skipped"],
                            skip_reasons=sorted({(s.get("message") or "")[:160] for s in suite.iter("skipped")}))
            elif name == "topk" and (out / "topk" / "topk.json").is_file():
                t = json.loads((out / "topk" / "topk.json").read_text())
                step["rows"] = t.get("rows", t)[:40] if isinstance(t.get("rows", t), list) else t.get("rows")
                step["machine"] = t.get("machine")
            elif name == "joint" and (out / "joint" / "summary.json").is_file():
                s = json.loads((out / "joint" / "summary.json").read_text())
                c = s.get("costs", {})
                dev = (c.get("refresh") or {}).get("index_device", "")
                step.update(steps=s.get("steps"), final_loss=s.get("final_loss"), losses=s.get("losses"),
                            step_time_mean_s=c.get("step_time_mean_s"), index_device=dev,
                            dev_accuracy=(s.get("evals") or [{}])[-1].get("accuracy"))
                if status == "pass" and not (dev.startswith("cuda") and s.get("steps") == 20):
                    step["status"] = "fail"
                    step["why"] = f"expected 20 steps with the exact index on cuda, got {s.get('steps')} on {dev!r}"
            elif name == "faiss-gpu" and (out / "faiss_gpu.json").is_file():
                step.update(json.loads((out / "faiss_gpu.json").read_text()))
        except Exception as e:  # noqa: BLE001
            step["report_error"] = repr(e)
        report["steps"][name] = step
    report["ok"] = all(s["status"] in ("pass", "skipped") for s in report["steps"].values())
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: (v if k != "steps" else {n: s["status"] for n, s in v.items()}) for k, v in report.items()
                      if k in ("ok", "total_s", "under_8_minutes", "gpu", "steps")}, indent=1, default=str))
    print(f"wrote {out / 'gpu_check.json'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), int(sys.argv[2])))
