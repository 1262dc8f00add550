"""``torchrun --nproc_per_node 2 -m jmlr.cli index build`` (one shard per rank, merged on rank 0) writes the
same index as a single-process build (issue 16)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jmlr.cli import main


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from jmlr.retriever.testing import random_texts, tiny_encoder_dir

    root = tmp_path_factory.mktemp("dist-build")
    enc = tiny_encoder_dir(root / "enc")
    with open(root / "corpus.jsonl", "w") as f:
        for i, t in enumerate(random_texts(45, seed=11, min_words=5)):
            f.write(json.dumps({"id": f"p{i}", "title": f"t{i % 4}" if i % 3 else "", "text": t}) + "\n")
    return root, enc


def _build_args(root, enc, out, kind):
    return ["index", "build", "--corpus", str(root / "corpus.jsonl"), "--encoder", str(enc), "--out", str(out),
            "--type", kind, "--quiet", "--device", "cpu", "--chunk-size", "7", "--batch-size", "5"]


@pytest.mark.distributed
@pytest.mark.parametrize("kind", ["exact", "flat"])
def test_two_rank_index_build_equals_single_process(corpus, kind):
    from jmlr.index import load_index

    root, enc = corpus
    single, dist_out = root / f"single-{kind}", root / f"dist-{kind}"
    assert main(_build_args(root, enc, single, kind)) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "jmlr.cli"] + _build_args(root, enc, dist_out, kind)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1, "only rank 0 writes the index"
    assert not (root / f"dist-{kind}.store").exists(), "the merged store and the shard stores are removed"

    a, b = load_index(single), load_index(dist_out)
    assert a.ids == b.ids and len(b) == 45
    assert (a.encoder_fingerprint, a.corpus_fingerprint) == (b.encoder_fingerprint, b.corpus_fingerprint)
    assert a.info == b.info
    pos = np.arange(45)
    np.testing.assert_allclose(b.vectors(pos).numpy(), a.vectors(pos).numpy(), rtol=0, atol=1e-5)


def test_merge_shards_and_resume(tmp_path):
    """Rank 0's merge: shards concatenated in row order into the single-process store layout; a complete
    merged store is what build_index adopts without encoding."""
    from jmlr.index.distributed_build import merge_shards, shard_store_dir
    from jmlr.index.sharded import shard_range
    from jmlr.index.store import EmbeddingStore

    emb = np.random.default_rng(0).standard_normal((11, 4)).astype(np.float32)
    for r in range(3):
        s, e = shard_range(11, r, 3)
        rows = iter(range(s, e))
        EmbeddingStore(shard_store_dir(tmp_path, r, 3)).encode(
            lambda chunk: emb[[next(rows) for _ in chunk]], [str(i) for i in range(s, e)], fingerprint="f/s",
            chunk_size=2, progress=False)
    out = merge_shards(tmp_path, 3, 11, fingerprint="enc/corpus", chunk_size=3)
    np.testing.assert_array_equal(np.asarray(out), emb)
    st = EmbeddingStore(tmp_path)
    assert st.complete and st.state["fingerprint"] == "enc/corpus"
    again = st.encode(lambda c: pytest.fail("a complete store encodes nothing"), [""] * 11, fingerprint="enc/corpus",
                      progress=False)
    np.testing.assert_array_equal(np.asarray(again), emb)
    EmbeddingStore(shard_store_dir(tmp_path, 1, 3)).encode(lambda c: np.zeros((len(c), 4)), ["x"], fingerprint="o",
                                                           progress=False)  # shard 1 now holds 1 row, not 4
    with pytest.raises(RuntimeError, match=r"shard 1 of 3 should hold rows 4\.\.7 \(4 rows\) but holds 1 of 1"):
        merge_shards(tmp_path, 3, 11, fingerprint="x")


def test_device_rule(monkeypatch):
    import torch

    from jmlr.index.distributed_build import launched_distributed, resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="--device cuda: CUDA is not available"):
            resolve_device("cuda")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert launched_distributed()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not launched_distributed()
