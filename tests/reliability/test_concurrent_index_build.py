"""Defect 1: concurrent ``jmlr index build`` into one ``--out`` must not corrupt an index.

Real processes race on one folder: the second writer is refused, naming the holder, and every build that
exits 0 holds the right vector for every passage.
"""
import json
import os
import socket
import subprocess

import numpy as np
import pytest
import torch

from _reliability import ROOT, hold_lock_in_subprocess, jmlr_cmd, run_jmlr


@pytest.fixture(scope="module")
def corpus_and_encoder(tmp_path_factory):
    from jmlr.retriever.testing import random_texts, tiny_encoder_dir

    root = tmp_path_factory.mktemp("race")
    enc = tiny_encoder_dir(root / "enc")
    texts = random_texts(800, seed=4, min_words=6)
    with open(root / "corpus.jsonl", "w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"p{i}", "text": t}) + "\n")
    return root, enc, texts


def _expected(enc, texts):
    from jmlr.retriever import DualEncoder

    return DualEncoder.from_pretrained(enc).encode_docs(texts, batch_size=256, progress=False).float()


def _assert_index_is_right(out, texts, expected):
    from jmlr.index import load_index

    index = load_index(out)
    assert list(index.ids) == [f"p{i}" for i in range(len(texts))]
    got = torch.as_tensor(np.asarray(index.embeddings, dtype=np.float32)).float()
    bad = (got - expected).abs().amax(1) > 1e-4
    assert not bad.any(), f"{int(bad.sum())} of {len(texts)} vectors belong to other passages"


def test_second_build_into_a_locked_out_is_refused_naming_the_holder(corpus_and_encoder, tmp_path):
    root, enc, _ = corpus_and_encoder
    out = tmp_path / "idx"
    holder = hold_lock_in_subprocess(f"fs.output_lock({str(out)!r})")
    try:
        r = run_jmlr("index", "build", "--corpus", root / "corpus.jsonl", "--encoder", enc, "--out", out,
                     "--type", "exact", "--quiet")
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "in use by another writer" in err and f"pid {holder.pid}" in err and socket.gethostname() in err
    assert not out.exists() and not (tmp_path / "idx.store").exists(), "the refused build wrote nothing"


def test_racing_builds_never_corrupt_the_index(corpus_and_encoder, tmp_path):
    root, enc, texts = corpus_and_encoder
    out = tmp_path / "idx"
    cmd = jmlr_cmd("index", "build", "--corpus", root / "corpus.jsonl", "--encoder", enc, "--out", out,
                   "--type", "exact", "--chunk-size", "100", "--batch-size", "100", "--quiet")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert any(rc == 0 for rc, _ in results), results
    for rc, err in results:
        assert rc == 0 or (rc == 2 and "in use by another writer" in err), (rc, err[-2000:])
    _assert_index_is_right(out, texts, _expected(enc, texts))


def test_a_finished_memmap_is_never_rewritten_by_a_later_encode(corpus_and_encoder, tmp_path):
    """An exact index built from a store wraps its memmap; a later encode into that store (another corpus
    or encoder, as a second process would run) writes a new file instead of rewriting the mapped one."""
    from jmlr.index.build import build_index
    from jmlr.index.store import EmbeddingStore
    from jmlr.retriever import DualEncoder

    root, enc, texts = corpus_and_encoder
    small = (["a", "b", "c"], texts[:3])
    dual = DualEncoder.from_pretrained(enc)
    index = build_index(dual, small, index_type="exact", store_dir=tmp_path / "store", progress=False)
    before = index.embeddings.clone()
    EmbeddingStore(tmp_path / "store").encode(lambda t: np.ones((len(t), before.shape[1]), np.float32), texts[:3],
                                             fingerprint="another encoder", progress=False)
    assert torch.equal(index.embeddings, before)
