"""Exact int8/bf16 indexes with an exact fp32 rerank: written chunk by chunk from a float32 memmap, loaded back
memory-mapped WITHOUT a copy, and searched with jmlr.kernels with the same results as the in-memory index."""
import os

import numpy as np
import pytest
import torch

from jmlr.index import ExactIndex, load_index


def _mapped_file_of(ptr: int) -> str | None:
    """The file whose mapping in this process holds address ``ptr`` (Linux /proc/self/maps), else None."""
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= ptr < hi:
                return parts[5] if len(parts) > 5 else None
    return None


@pytest.fixture()
def source(tmp_path, data_20k):
    """6,000 of the clustered 384-d docs as a float32 .npy memmap on disk (how the scale benchmark stores them)."""
    docs, queries = data_20k
    docs = docs[:6000]
    path = tmp_path / "emb_f32.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=docs.shape)
    mm[:] = docs
    mm.flush()
    del mm
    return np.load(path, mmap_mode="r"), queries


@pytest.mark.parametrize("dtype", ["int8", "bfloat16"])
@pytest.mark.parametrize("rerank", ["copy", "link", "none"])
def test_loaded_store_is_a_memmap_and_matches_in_memory(tmp_path, source, dtype, rerank):
    src, queries = source
    ids = list(range(src.shape[0]))
    folder = ExactIndex.write_quantized(tmp_path / "idx", ids, src, dtype=dtype, rerank=rerank, chunk_rows=3001)
    loaded = load_index(folder)
    assert loaded.dtype == dtype and len(loaded) == len(ids) and loaded.rerank == (rerank != "none")

    # no copy: the storage (and the fp32 rerank rows) are pages of the files in the folder
    store = loaded.embeddings
    assert _mapped_file_of(store.data_ptr()) == str((folder / "embeddings.npy").resolve())
    if rerank != "none":
        assert _mapped_file_of(loaded._rerank.data_ptr()) == str((folder / "rerank_fp32.npy").resolve())
    if dtype == "int8":
        assert store.dtype == torch.int8 and _mapped_file_of(loaded.scales.data_ptr()) is not None
    if rerank == "link":
        assert (folder / "rerank_fp32.npy").stat().st_ino == __import__("os").stat(src.filename).st_ino

    mem = ExactIndex(384, dtype=dtype, rerank=rerank != "none")
    mem.add(ids, np.asarray(src))
    for B in (1, 32):
        s1, i1 = mem.search(queries[:B], 10)
        s2, i2 = loaded.search(queries[:B], 10)
        assert (i1 == i2).all()
        torch.testing.assert_close(s1, s2, atol=1e-6, rtol=0)


def test_rerank_gives_exact_fp32_scores_and_recall(source):
    src, queries = source
    docs = torch.from_numpy(np.asarray(src))
    q = torch.from_numpy(queries)
    want_s, want_i = (q @ docs.T).topk(10, dim=1)
    idx = ExactIndex(384, dtype="int8", rerank=True)
    idx.add(list(range(len(docs))), docs)
    s, i = idx.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i.tolist(), want_i.tolist())])
    assert recall >= 0.99
    hit = torch.as_tensor(i) == want_i
    torch.testing.assert_close(s[hit], want_s[hit], atol=1e-5, rtol=0)  # exact fp32 scores, not int8 ones


def test_load_without_mmap_copies_and_round_trips(tmp_path, source):
    src, queries = source
    folder = ExactIndex.write_quantized(tmp_path / "idx", [f"d{i}" for i in range(len(src))], src, dtype="int8",
                                        rerank="copy")
    a = load_index(folder)
    b = load_index(folder, mmap=False)
    assert _mapped_file_of(b.embeddings.data_ptr()) != str((folder / "embeddings.npy").resolve())
    _, ia = a.search(queries[:5], 10)
    _, ib = b.search(queries[:5], 10)
    assert (ia == ib).all() and isinstance(ia[0, 0], str)
    b.save(tmp_path / "again")
    _, ic = load_index(tmp_path / "again").search(queries[:5], 10)
    assert (ia == ic).all()


def test_write_quantized_rejects_bad_input(tmp_path, source):
    src, _ = source
    with pytest.raises(ValueError, match="dtype"):
        ExactIndex.write_quantized(tmp_path / "x", list(range(len(src))), src, dtype="float32")
    with pytest.raises(ValueError, match="ids"):
        ExactIndex.write_quantized(tmp_path / "x", [1, 2], src)
    with pytest.raises(ValueError, match="rerank"):
        ExactIndex.write_quantized(tmp_path / "x", list(range(len(src))), src, rerank="yes")
    assert not (tmp_path / "x").exists()


_RSS_CHILD = r"""
import json, sys
import numpy as np
import torch  # imported (and its kernels warmed) before the baseline: only the build's own growth is measured
from jmlr.index import ExactIndex
from jmlr.kernels.topk import quantize
quantize(torch.ones(4096, 1024), "int8", keep_fp32=False)

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

src = np.load(sys.argv[1], mmap_mode="r")
ids = list(range(src.shape[0]))
before = status("VmRSS")
ExactIndex.write_quantized(sys.argv[2], ids, src, dtype="int8", rerank="copy", chunk_rows=1024)
print(json.dumps({"before": before, "peak": status("VmHWM"), "after": status("VmRSS")}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmRSS/VmHWM from Linux /proc")
def test_write_quantized_rss_stays_near_one_chunk(tmp_path):
    """Streaming a 256 MiB memmap into an int8 index with an fp32 copy touches 576 MiB of file pages; they must
    not all stay resident. With 4 MiB chunks the RSS grows by about 30 MiB, against 700 MiB without the release
    (the 10M x 384 build peaked at 19.9 GiB before the pages were released per chunk)."""
    import json
    import subprocess
    import sys

    n, d = 65_536, 1024
    path = tmp_path / "src.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for s in range(0, n, 8192):
        mm[s:s + 8192] = np.float32(0.5) + np.arange(d, dtype=np.float32)[None, :] / d
    mm.flush()
    del mm
    r = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(path), str(tmp_path / "idx")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads(r.stdout.strip().splitlines()[-1])
    grew = m["peak"] - m["before"]
    source_bytes = n * d * 4
    assert grew < source_bytes // 4, f"the build grew the RSS by {grew >> 20} MiB over a {source_bytes >> 20} MiB source"
    loaded = load_index(tmp_path / "idx")
    assert loaded.search_positions(np.ones((1, d), dtype=np.float32), 3)[1].shape == (1, 3)
