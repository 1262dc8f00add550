"""faiss in: index_factory strings with index.params, FaissIndex.from_faiss, `jmlr index import`, training settings."""
import json

import numpy as np
import pytest
import torch

from jmlr.index import ExactIndex, FaissIndex, load_index, make_index
from jmlr.index.settings import index_kwargs

from conftest import clustered  # tests/index/conftest.py


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    """faiss's OpenMP teams spin on a shared 2-core box (HNSW add: 1 s with 2 threads, 0.06 s with 1)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def vecs():
    docs, centers = clustered(800, 32, n_clusters=12, noise=1.0, seed=4)
    queries, _ = clustered(20, 32, n_clusters=12, noise=1.0, seed=5, centers=centers)
    return [f"d{i}" for i in range(len(docs))], docs, queries


def recall_vs_exact(index, ids, docs, queries, k=10):
    exact = ExactIndex(docs.shape[1])
    exact.add(ids, docs)
    _, want = exact.search(queries, k)
    _, got = index.search(queries, k)
    return np.mean([len(set(a) & set(b)) / k for a, b in zip(want, got)])


@pytest.mark.parametrize("factory,params,check", [
    ("HNSW8,Flat", {"efSearch": 40}, lambda raw, faiss: raw.hnsw.efSearch == 40),
    ("IVF4,Flat", {"nprobe": 4}, lambda raw, faiss: faiss.extract_index_ivf(raw).nprobe == 4),
    ("IVF4,PQ8x4fs", {"nprobe": 4}, lambda raw, faiss: faiss.extract_index_ivf(raw).nprobe == 4),
    ("PCAR16,IVF4,SQ8", {"nprobe": 3}, lambda raw, faiss: faiss.extract_index_ivf(raw).nprobe == 3),
])
def test_factory_strings_with_params(vecs, tmp_path, factory, params, check):
    import faiss

    ids, docs, queries = vecs
    index = make_index(factory, 32, **index_kwargs(factory, params))
    assert isinstance(index, FaissIndex) and index.factory == factory  # the case of the string is kept
    index.add(ids, docs)
    assert check(index._index, faiss)
    r = recall_vs_exact(index, ids, docs, queries)
    assert r >= (0.9 if "PQ" not in factory and "PCA" not in factory else 0.3)
    index.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta["params"] == {"index_type": factory, "search_params": params}
    back = load_index(tmp_path / "idx")
    assert back.factory == factory and check(back._index, faiss)
    s1, i1 = index.search(queries, 5)
    s2, i2 = back.search(queries, 5)
    assert (i1 == i2).all() and torch.allclose(s1, s2)


def test_named_types_take_params_too():
    import faiss

    assert index_kwargs("ivf", {"nlist": 8, "nprobe": 2}) == {"nlist": 8, "nprobe": 2}
    assert index_kwargs("hnsw", {"efSearch": 64, "efConstruction": 40}) == {"ef_search": 64, "ef_construction": 40}
    assert index_kwargs("exact", {}, "fp16") == {"dtype": "fp16"}
    idx = make_index("hnsw", 16, **index_kwargs("hnsw", {"efSearch": 64}))
    assert idx.ef_search == 64 and idx._index.hnsw.efSearch == 64
    with pytest.raises(ValueError, match="index.params .*exact"):
        index_kwargs("exact", {"nprobe": 3})
    with pytest.raises(ValueError, match=r"index.params.nprobe .*number"):
        index_kwargs("IVF4,Flat", {"nprobe": "many"})
    assert isinstance(faiss, object)


def test_bad_factory_string_and_param_are_named():
    with pytest.raises(ValueError, match="'hnsw8,flat'|'IVF4,PQ5'"):
        make_index("IVF4,PQ5", 32)  # 32 is not a multiple of 5
    with pytest.raises(ValueError, match="unknown faiss index type .NoSuchIndex12.: neither one of"):
        make_index("NoSuchIndex12", 32)
    with pytest.raises(ValueError, match="index.params: faiss cannot set 'efSearch'"):
        make_index("IVF4,Flat", 32, search_params={"efSearch": 3})


def test_training_error_is_clear():
    idx = make_index("IVF64,Flat", 8)
    with pytest.raises(ValueError, match="training on 10 vectors failed"):
        idx.add([f"x{i}" for i in range(10)], np.random.default_rng(0).standard_normal((10, 8)).astype("float32"))


def test_from_faiss_adopts_an_index(vecs, tmp_path):
    import faiss

    ids, docs, queries = vecs
    raw = faiss.IndexHNSWFlat(32, 16, faiss.METRIC_INNER_PRODUCT)
    raw.add(docs)
    index = FaissIndex.from_faiss(raw, ids)
    assert (len(index), index.dim, index.metric, index.index_type) == (800, 32, "ip", "file")
    D, I = raw.search(queries, 5)
    s, got = index.search(queries, 5)
    assert (got == np.asarray(ids, dtype=object)[I]).all() and np.allclose(s.numpy(), D)
    index.set_search_params(efSearch=77)
    assert raw.hnsw.efSearch == 77
    index.save(tmp_path / "adopted")
    back = load_index(tmp_path / "adopted")
    assert back.index_type == "file" and back._index.hnsw.efSearch == 77
    assert (back.search(queries, 5)[1] == got).all()
    # a file path works too, and an IndexIDMap brings its own ids
    idmap = faiss.IndexIDMap(faiss.IndexFlatIP(32))
    idmap.add_with_ids(docs[:50], np.arange(1000, 1050))
    faiss.write_index(idmap, str(tmp_path / "idmap.faiss"))
    adopted = FaissIndex.from_faiss(tmp_path / "idmap.faiss")
    assert adopted.ids[:3] == [1000, 1001, 1002]
    assert adopted.search(docs[7:8], 1)[1][0, 0] == 1007


def test_from_faiss_mismatches_are_named(vecs, tmp_path):
    import faiss

    from jmlr.retriever import DualEncoder
    from jmlr.retriever.testing import tiny_encoder_dir

    ids, docs, _ = vecs
    flat = faiss.IndexFlatL2(32)
    flat.add(docs)
    with pytest.raises(ValueError, match="holds 800 vectors but 5 ids"):
        FaissIndex.from_faiss(flat, ids[:5])
    with pytest.raises(ValueError, match="pass ids"):
        FaissIndex.from_faiss(flat)
    with pytest.raises(ValueError, match="ranks by l2, but metric='ip'"):
        FaissIndex.from_faiss(flat, ids, metric="ip")
    enc = DualEncoder.from_pretrained(tiny_encoder_dir(tmp_path / "enc", hidden_size=32))
    assert FaissIndex.from_faiss(flat, ids, encoder=enc).metric == "l2"  # normalised encoder: L2 ranks like IP
    enc.normalize = False
    with pytest.raises(ValueError, match="does not normalise"):
        FaissIndex.from_faiss(flat, ids, encoder=enc)
    wide = faiss.IndexFlatIP(48)
    wide.add(np.zeros((2, 48), dtype="float32"))
    with pytest.raises(ValueError, match="dimension 48, but the encoder gives 32-d"):
        FaissIndex.from_faiss(wide, ["a", "b"], encoder=enc, source="wide.faiss")
    with pytest.raises(FileNotFoundError, match="no such faiss index file"):
        FaissIndex.from_faiss(tmp_path / "missing.faiss", ["a"])
    (tmp_path / "junk.faiss").write_bytes(b"not an index")
    with pytest.raises(ValueError, match="not a faiss index file"):
        FaissIndex.from_faiss(tmp_path / "junk.faiss", ["a"])


def test_cli_import_then_search(tmp_path, capsys):
    import faiss

    from jmlr.cli import main
    from jmlr.retriever import DualEncoder
    from jmlr.retriever.testing import random_texts, tiny_encoder_dir

    enc_dir = tiny_encoder_dir(tmp_path / "enc")
    dual = DualEncoder.from_pretrained(enc_dir)
    texts = random_texts(30, seed=2, min_words=8)
    with open(tmp_path / "corpus.jsonl", "w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"p{i}", "text": t}) + "\n")
    raw = faiss.IndexFlatIP(dual.dim)
    raw.add(dual.encode_docs(texts, progress=False).numpy())
    faiss.write_index(raw, str(tmp_path / "ext.faiss"))
    (tmp_path / "ids.txt").write_text("".join(f"p{i}\n" for i in range(30)))
    out = tmp_path / "idx"
    assert main(["index", "import", str(tmp_path / "ext.faiss"), "--ids", str(tmp_path / "ids.txt"), "--encoder",
                 str(enc_dir), "--corpus", str(tmp_path / "corpus.jsonl"), "--out", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["count"] == 30 and meta["encoder_fingerprint"] == dual.fingerprint("doc") and meta["corpus_fingerprint"]
    capsys.readouterr()
    assert main(["index", "search", "--index", str(out), "--query", texts[4], "-k", "2", "--json"]) == 0
    hit = json.loads(capsys.readouterr().out)[0]["hits"][0]
    assert hit["id"] == "p4" and hit["text"] == texts[4]
    # errors: one line each, naming what is wrong
    (tmp_path / "short.txt").write_text("p0\np1\n")
    assert main(["index", "import", str(tmp_path / "ext.faiss"), "--ids", str(tmp_path / "short.txt"),
                 "--out", str(tmp_path / "bad")]) == 2
    assert "holds 30 vectors but 2 ids" in capsys.readouterr().err
    (tmp_path / "dup.txt").write_text("p0\np0\n")
    assert main(["index", "import", str(tmp_path / "ext.faiss"), "--ids", str(tmp_path / "dup.txt"),
                 "--out", str(tmp_path / "bad")]) == 2
    assert "dup.txt line 2: duplicate id 'p0'" in capsys.readouterr().err
    other = tiny_encoder_dir(tmp_path / "wide", hidden_size=48)
    assert main(["index", "import", str(tmp_path / "ext.faiss"), "--ids", str(tmp_path / "ids.txt"), "--encoder",
                 str(other), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "ext.faiss" in err and "dimension 32, but the encoder gives 48-d" in err
    assert not (tmp_path / "bad").exists()


def test_cli_build_with_a_factory_string(tmp_path, capsys):
    from jmlr.cli import main
    from jmlr.retriever.testing import random_texts, tiny_encoder_dir

    enc_dir = tiny_encoder_dir(tmp_path / "enc")
    with open(tmp_path / "corpus.jsonl", "w") as f:
        for i, t in enumerate(random_texts(40, seed=3, min_words=8)):
            f.write(json.dumps({"id": f"p{i}", "text": t}) + "\n")
    out = tmp_path / "idx"
    assert main(["index", "build", "--corpus", str(tmp_path / "corpus.jsonl"), "--encoder", str(enc_dir), "--out",
                 str(out), "--type", "HNSW8,Flat", "--param", "efSearch=24", "--quiet"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["params"] == {"index_type": "HNSW8,Flat", "search_params": {"efSearch": 24}}


def test_training_passes_index_settings_through(tmp_path):
    from jmlr.config import load_config
    from jmlr.retriever import DualEncoder
    from jmlr.retriever.testing import random_texts, tiny_encoder_dir
    from jmlr.train.retrieval import RetrievalState

    dual = DualEncoder.from_pretrained(tiny_encoder_dir(tmp_path / "enc"))
    cfg = load_config(None, ["index.type=HNSW8,Flat", 'index.params={"efSearch": 20}', "optim.precision=fp32"])
    state = RetrievalState(dual, random_texts(50, seed=1), cfg)
    state.build()
    try:
        index = state.refresher.index
        assert isinstance(index, FaissIndex) and index.factory == "HNSW8,Flat" and index._index.hnsw.efSearch == 20
        q = dual.encode_queries(random_texts(3, seed=7), progress=False)
        assert state.search(q, 4)[1].shape == (3, 4)
        state.refresher.refresh_now(blocking=True)  # a refresh rebuilds with the same settings
        assert state.refresher.index.factory == "HNSW8,Flat" and state.refresher.index._index.hnsw.efSearch == 20
    finally:
        state.close()
