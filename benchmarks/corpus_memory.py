"""Resident memory of a 1M-passage corpus: jmlr's compact Corpus against plain Python containers.

Each representation is built in its own fresh subprocess so that RSS deltas are clean:

- ``compact``:       ``jmlr.data.Corpus`` built by streaming passages (UTF-8 buffers + int64 offsets +
                     a sorted 64-bit hash array for id lookup).
- ``compact_load``:  ``Corpus.load`` of the same passages from a JSONL file (the usual path).
- ``py_lists``:      three Python lists of ``str`` (ids, texts, titles) + a dict id -> index.
- ``py_passages``:   a list of ``Passage`` objects + a dict id -> index (the naive design).

Each prints RSS before and after, the peak, bytes per passage, and the time of 200k random id lookups
(as a ratio against ``py_lists``' dict, measured in the same run; for the compact corpus also the
vectorised ``indices_of``). Passages are synthetic short texts
(8-24 words of generated pseudo-words, a 2-word title, ids ``doc0000000``): no third-party text.

    python benchmarks/corpus_memory.py                 # 1,000,000 passages
    python benchmarks/corpus_memory.py --n 100000 --out runs/bench/corpus_memory
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import peak_rss_bytes, rss_bytes  # noqa: E402

KINDS = ("compact", "compact_load", "py_lists", "py_passages")
N_LOOKUPS = 200_000


def _vocab(seed: int = 0, size: int = 20_000) -> list[str]:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(3, 10))) for _ in range(size)]


def passages(n: int, seed: int = 0):
    """Yield ``(id, text, title)`` for ``n`` synthetic short passages, deterministically."""
    vocab = _vocab(seed)
    rng = random.Random(seed + 1)
    for i in range(n):
        k = rng.randint(8, 24)
        text = " ".join(rng.choices(vocab, k=k)) + "."
        title = " ".join(rng.choices(vocab, k=2)).title()
        yield f"doc{i:07d}", text, title


def content_bytes(n: int) -> int:
    return sum(len(a.encode()) + len(b.encode()) + len(c.encode()) for a, b, c in passages(n))


# ---------------------------------------------------------------------------------------------- child side
def _measure(kind: str, n: int, jsonl: str | None) -> dict:
    from jmlr.data import Corpus, Passage  # imported before the "before" reading, as in real use

    gc.collect()
    before = rss_bytes()
    t0 = time.perf_counter()
    if kind == "compact":
        obj = Corpus(Passage(i, t, ti) for i, t, ti in passages(n))
        lookup = obj.index_of
    elif kind == "compact_load":
        obj = Corpus.load(jsonl)
        lookup = obj.index_of
    elif kind == "py_lists":
        ids, texts, titles = [], [], []
        for i, t, ti in passages(n):
            ids.append(i)
            texts.append(t)
            titles.append(ti)
        index = {pid: k for k, pid in enumerate(ids)}
        obj = (ids, texts, titles, index)
        lookup = index.__getitem__
    elif kind == "py_passages":
        plist = [Passage(i, t, ti) for i, t, ti in passages(n)]
        index = {p.id: k for k, p in enumerate(plist)}
        obj = (plist, index)
        lookup = index.__getitem__
    else:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    build_s = time.perf_counter() - t0
    gc.collect()
    after = rss_bytes()
    rng = random.Random(7)
    keys = [f"doc{rng.randrange(n):07d}" for _ in range(N_LOOKUPS)]
    t0 = time.perf_counter()
    for k in keys:
        lookup(k)
    lookup_s = time.perf_counter() - t0
    assert lookup(f"doc{n - 1:07d}") == n - 1
    out = {"kind": kind, "n": n, "rss_before_mb": before / 2**20, "rss_after_mb": after / 2**20,
           "rss_peak_mb": peak_rss_bytes() / 2**20, "bytes_per_passage": (after - before) / n,
           "peak_bytes_per_passage": (peak_rss_bytes() - before) / n, "build_s": build_s,
           "lookup_us": 1e6 * lookup_s / N_LOOKUPS}
    if kind.startswith("compact"):
        out["columns_bytes_per_passage"] = obj.memory_usage()["total"] / n
        t0 = time.perf_counter()
        idx = obj.indices_of(keys)  # the vectorised form, for mapping many gold ids at once
        out["batch_lookup_us"] = 1e6 * (time.perf_counter() - t0) / N_LOOKUPS
        assert idx[0] == int(keys[0][3:])
    del obj
    return out


# ---------------------------------------------------------------------------------------------- parent side
def run(n: int, out_dir: Path, kinds=KINDS) -> list[dict]:
    from benchmarks._report import machine_info, markdown_table, new_figure, write_json, write_markdown

    raw = content_bytes(n)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        jsonl = Path(tmp) / "corpus.jsonl"
        if "compact_load" in kinds:
            with open(jsonl, "w") as f:
                for i, t, ti in passages(n):
                    f.write(json.dumps({"id": i, "title": ti, "text": t}) + "\n")
        for kind in kinds:
            cmd = [sys.executable, __file__, "--child", kind, "--n", str(n), "--jsonl", str(jsonl)]
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
            if res.returncode != 0:
                raise RuntimeError(f"{kind} failed:\n{res.stderr}")
            row = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{kind:13s} RSS {row['rss_before_mb']:8.1f} MB -> {row['rss_after_mb']:8.1f} MB "
                  f"(peak {row['rss_peak_mb']:8.1f} MB): {row['bytes_per_passage']:6.1f} B/passage, "
                  f"build {row['build_s']:.1f} s, lookup {row['lookup_us']:.2f} us", flush=True)
    base = next((r for r in rows if r["kind"] == "py_lists"), rows[0])
    for r in rows:
        r["memory_vs_py_lists"] = r["bytes_per_passage"] / base["bytes_per_passage"]
        r["lookup_vs_py_lists"] = r["lookup_us"] / base["lookup_us"]
        r["content_bytes_per_passage"] = raw / n
    cols = ["kind", "n", "rss_before_mb", "rss_after_mb", "rss_peak_mb", "bytes_per_passage", "content_bytes_per_passage",
            "memory_vs_py_lists", "build_s", "lookup_us", "lookup_vs_py_lists", "batch_lookup_us"]
    print()
    print(markdown_table(rows, cols))
    payload = {"benchmark": "corpus_memory", "n": n, "content_bytes_per_passage": raw / n, "rows": rows,
               "machine": machine_info()}
    write_json(out_dir / "corpus_memory.json", payload)
    notes = (f"Synthetic short passages: {raw / n:.1f} bytes of UTF-8 content each (id + title + text). "
             "RSS measured in a fresh subprocess per representation; bytes/passage = (RSS after - RSS before) / n. "
             "Ratios are against `py_lists` (three lists of str + an id dict) in the same run.")
    write_markdown(out_dir / "corpus_memory.md", f"Corpus memory at {n:,} passages", rows, cols, notes)
    fig, ax = new_figure(figsize=(6, 3.5))
    ax.bar([r["kind"] for r in rows], [r["bytes_per_passage"] for r in rows], color="tab:blue", label="resident")
    ax.axhline(raw / n, color="tab:red", ls="--", label="UTF-8 content")
    ax.set_ylabel("bytes per passage")
    ax.set_title(f"Corpus memory, {n:,} short passages")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "corpus_memory.png", dpi=120)
    print(f"wrote {out_dir}/corpus_memory.{{json,md,png}}")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="number of passages (default 1,000,000)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "corpus_memory", help="output folder")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    ap.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--jsonl", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_measure(args.child, args.n, args.jsonl)))
        return 0
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        ap.error(f"unknown kind(s) {bad}; expected some of {list(KINDS)}")
    run(args.n, args.out, kinds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
