"""benchmarks/corpus_memory.py runs end to end and the compact corpus uses less memory than Python lists."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_corpus_memory_benchmark_small(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("corpus_memory", ROOT / "benchmarks" / "corpus_memory.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.run(50_000, tmp_path, kinds=("compact", "py_lists"))
    by = {r["kind"]: r for r in rows}
    # 50k passages of ~144 content bytes: ~190 B/passage compact vs ~400 for lists (MBs apart, well above noise)
    assert by["compact"]["bytes_per_passage"] < 0.75 * by["py_lists"]["bytes_per_passage"]
    assert by["compact"]["bytes_per_passage"] > by["compact"]["content_bytes_per_passage"] * 0.9
    payload = json.loads((tmp_path / "corpus_memory.json").read_text())
    assert payload["n"] == 50_000 and len(payload["rows"]) == 2
    assert (tmp_path / "corpus_memory.png").stat().st_size > 0
    assert "| compact |" in (tmp_path / "corpus_memory.md").read_text()
