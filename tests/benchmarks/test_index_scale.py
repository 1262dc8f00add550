"""benchmarks/index_scale.py in quick mode (tiny N): every kind gets a row with the required fields, the exact
kinds find the chunked ground truth, and the rows, markdown and plot are written. Also the generator's
data: chunked, deterministic, clustered (not uniform noise)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

FIELDS = ("kind", "N", "d", "recall_at_10", "peak_rss_gib", "build_s", "search_s_b1", "search_s_b32")


def test_generator_chunks_and_ground_truth(tmp_path):
    from benchmarks.index_scale import Generator, ground_truth, write_store

    gen = Generator(5000, 32, seed=1)
    path = tmp_path / "emb.npy"
    write_store(path, gen, chunk=777)
    mm = np.load(path, mmap_mode="r")
    assert mm.shape == (5000, 32) and np.allclose(np.linalg.norm(mm[:50], axis=1), 1, atol=1e-5)
    assert np.array_equal(mm[:777], gen.chunk(0, 777)), "chunk c depends only on (seed, c)"
    q, targets = gen.queries(mm, 40)
    s, i = ground_truth(path, q, 10, chunk=999)  # streamed in chunks that do not divide N
    full = q @ np.asarray(mm).T
    assert np.array_equal(i, np.argsort(-full, axis=1)[:, :10])
    assert np.mean([t in row for t, row in zip(targets, i)]) > 0.4  # near its target (d = 32 here: noisier than 384)
    pair = float((np.asarray(mm[:1000]) * np.asarray(mm[1000:2000])).sum(1).mean())
    assert 0.05 < pair < 0.5, "a shared direction and topics, not isotropic noise (pair cosine ~0)"


def test_quick_mode_writes_rows_for_every_kind(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "index_scale.py"), "--quick", "--sizes", "4000",
                        "--dim", "32", "--queries", "40", "--real-n", "0", "--time-per-shape", "0.05",
                        "--nprobe-sweep", "1,4,64", "--pq-candidates-sweep", "10,40", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "index_scale.json").read_text())
    assert res["complete"] is True  # the partial files written after each kind are marked False
    from benchmarks.index_scale import KINDS

    got = {(row["kind"], row["N"]) for row in res["rows"]}
    assert got == {(k, 4000) for k in KINDS}
    for row in res["rows"]:
        assert "skipped" not in row, row
        for f in FIELDS:
            assert row[f] is not None, (row["kind"], f)
        assert row["d"] == 32 and row["peak_rss_gib"] > 0 and row["disk_bytes"] > 0
        if sys.platform.startswith("linux"):  # the resident set at the end, split anonymous / file-backed
            assert row["end_anon_rss_gib"] > 0 and row["end_file_rss_gib"] >= 0
        if row["kind"] in ("exact_fp32", "faiss_flat_default", "faiss_flat_blas"):
            assert row["recall_at_10"] == 1.0
        if row["kind"].startswith("exact_") and row["kind"].endswith("rerank"):
            assert row["recall_at_10"] >= 0.99 and row["store_is_memmap"]
    # the IVF kinds were also searched at the swept nprobe values, on the same built index
    for kind in ("faiss_ivf_flat", "faiss_ivf_pq", "faiss_ivf_pq_rerank"):
        pts = [row for row in res["rows"] if row["kind"] == kind and row.get("sweep_point")]
        want = {(n, c) for n in (1, 4, 64) for c in ((10, 40) if kind == "faiss_ivf_pq_rerank" else (None,))}
        assert {(row["nprobe"], row.get("pq_candidates")) for row in pts} == want, kind
        base = next(row for row in res["rows"] if row["kind"] == kind and not row.get("sweep_point"))
        assert base["nprobe"] == 32 and all(row["build_s"] == base["build_s"] for row in pts)
    ivf = sorted((row["nprobe"], row["recall_at_10"]) for row in res["rows"]
                 if row["kind"] == "faiss_ivf_flat" and row.get("sweep_point"))
    assert [r for _, r in ivf] == sorted(r for _, r in ivf), "IVF-Flat: probing more lists never loses a neighbour"
    assert ivf[0][1] < ivf[-1][1], "one list of 253 misses neighbours that 64 lists find"
    flat = [row for row in res["rows"] if row["kind"] == "faiss_flat_default"]
    assert all(row["blas_threshold"] == res["faiss_default_blas_threshold"] for row in flat)
    assert (out / "index_scale.png").stat().st_size > 1000 and "exact_int8_rerank" in (out / "index_scale.md").read_text()


def test_kinds_over_the_memory_cap_are_skipped_with_a_reason():
    from benchmarks.index_scale import estimate_gib, parse_args, run_kind

    args = parse_args(["--out", "unused"])  # default cap: 12 GiB
    info = {"N": 10_000_000, "d": 384, "data": "synthetic"}
    assert estimate_gib("exact_int8_rerank", 10_000_000, 384) < 6 < 12 < estimate_gib("exact_fp32", 10_000_000, 384)
    row = run_kind("exact_fp32", info, args)
    assert "max-rss-gib" in row["skipped"]
    assert "hnsw-max-n" in run_kind("faiss_hnsw", {**info, "N": 4_000_000, "d": 32}, args)["skipped"]


def _run_payload(sizes, rows, cpu="Test CPU", complete=True):
    base = {"benchmark": "index_scale", "k": 10, "rerank_k": 64, "nprobe": 32, "hnsw": {"M": 32}, "kmeans": {},
            "pq_candidates": 100, "queries": 40, "threads": 2, "faiss": "1.15.1",
            "faiss_default_blas_threshold": 128000, "sizes": sizes, "total_s": 10.0, "complete": complete,
            "machine": {"cpu_model": cpu, "bf16_flags": [], "cpu_count": 2},
            "datasets": [{"data": "synthetic", "N": n, "d": 32} for n in sizes]}
    return {**base, "rows": rows}


def _row(kind, N, **kw):
    return {"kind": kind, "N": N, "d": 32, "data": "synthetic", "recall_at_10": 1.0, "peak_rss_gib": 0.5,
            "build_s": 1.0, "search_s_b1": 1e-3, "search_s_b32": 1e-2, "nprobe": None, **kw}


def test_merge_joins_split_runs_and_refuses_other_hosts(tmp_path):
    from benchmarks.index_scale import merge_results

    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    a.write_text(json.dumps(_run_payload([1000, 4000], [
        _row("exact_fp32", 1000), _row("exact_fp32", 4000),
        {"kind": "faiss_hnsw", "N": 4000, "d": 32, "data": "synthetic", "skipped": "N > --hnsw-max-n 1000"},
        _row("faiss_ivf_flat", 4000, nprobe=32), _row("faiss_ivf_flat", 4000, nprobe=64, sweep_point=True)])))
    b.write_text(json.dumps(_run_payload([4000], [
        _row("faiss_hnsw", 4000, recall_at_10=0.97),
        {"kind": "exact_fp32", "N": 4000, "d": 32, "data": "synthetic", "skipped": "estimated 20 GiB > cap"}])))
    out = tmp_path / "merged"
    res = merge_results([str(a), str(b)], out)
    keys = [(r["kind"], r["N"], r.get("nprobe"), bool(r.get("sweep_point"))) for r in res["rows"]]
    assert keys == [("exact_fp32", 1000, None, False), ("exact_fp32", 4000, None, False),
                    ("faiss_ivf_flat", 4000, 32, False), ("faiss_ivf_flat", 4000, 64, True),
                    ("faiss_hnsw", 4000, None, False)]
    by = {(r["kind"], r["N"]): r for r in res["rows"] if not r.get("sweep_point")}
    assert by[("faiss_hnsw", 4000)]["recall_at_10"] == 0.97, "the later run's measured row replaces the skip"
    assert "skipped" not in by[("exact_fp32", 4000)], "a skip never replaces a measured row"
    assert res["sizes"] == [1000, 4000] and res["complete"] and len(res["merged_from"]) == 2
    assert res["loglog_slopes"] == {}, "two sizes give no slope"
    assert json.loads((out / "index_scale.json").read_text())["rows"] == res["rows"]
    assert (out / "index_scale.png").stat().st_size > 1000 and "Merged from" in (out / "index_scale.md").read_text()

    other = tmp_path / "other.json"
    other.write_text(json.dumps(_run_payload([1000], [_row("exact_fp32", 1000)], cpu="Another CPU")))
    import pytest

    with pytest.raises(SystemExit, match="different hosts"):
        merge_results([str(a), str(other)], tmp_path / "no")
    changed = tmp_path / "q.json"
    changed.write_text(json.dumps({**_run_payload([1000], [_row("exact_fp32", 1000)]), "queries": 200}))
    with pytest.raises(SystemExit, match="queries"):
        merge_results([str(a), str(changed)], tmp_path / "no")


def test_loglog_slopes_tell_linear_from_sqrt():
    from benchmarks.index_scale import loglog_slopes

    sizes = (10_000, 100_000, 1_000_000)
    rows = [_row("exact_fp32", n, search_s_b1=n * 1e-8, search_s_b32=n * 3e-8) for n in sizes]
    rows += [_row("faiss_ivf_flat", n, search_s_b1=n ** 0.5 * 1e-6, search_s_b32=n ** 0.5 * 2e-6) for n in sizes]
    rows += [_row("faiss_ivf_flat", n, nprobe=512, sweep_point=True, search_s_b1=1.0, search_s_b32=1.0)
             for n in sizes]  # other search settings: not part of the kind's line
    rows += [{"kind": "faiss_hnsw", "N": 10 ** 7, "d": 32, "data": "synthetic", "skipped": "cap"}]
    got = loglog_slopes(rows)
    assert set(got) == {"exact_fp32", "faiss_ivf_flat"}
    assert abs(got["exact_fp32"]["b1"] - 1) < 1e-9 and abs(got["exact_fp32"]["b32"] - 1) < 1e-9
    assert abs(got["faiss_ivf_flat"]["b1"] - 0.5) < 1e-9 and got["faiss_ivf_flat"]["sizes"] == list(sizes)


def test_a_measuring_child_reports_its_own_peak_not_its_parents(tmp_path):
    """ru_maxrss of a subprocess child starts at the parent's RSS (vfork + exec); the benchmarks' children read
    their own high-water mark instead, so a small kind next to a big parent is not charged the parent's memory."""
    import os

    import pytest

    if not os.path.exists("/proc/self/status"):
        pytest.skip("VmHWM comes from Linux /proc")
    held = np.ones(2 ** 26)  # 512 MiB resident in this (the parent) process
    code = ("import json, resource, sys; sys.path.insert(0, sys.argv[1]); from benchmarks._report import "
            "peak_rss_bytes; print(json.dumps([peak_rss_bytes(), resource.getrusage(resource.RUSAGE_SELF)"
            ".ru_maxrss * 1024]))")
    own, inherited = json.loads(subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True,
                                               text=True, check=True).stdout)
    assert held.sum() == 2 ** 26
    assert own < 0.25 * 2 ** 30, "the child holds far less than the parent's 512 MiB"
    assert own <= inherited  # where ru_maxrss inherits (Linux), it shows the parent's memory; VmHWM does not
