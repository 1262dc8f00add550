"""`jmlr index build|search` and `jmlr eval retrieval`, run in-process through jmlr.cli.main."""
import json

import pytest

from jmlr.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from jmlr.retriever.testing import random_texts, tiny_encoder_dir

    root = tmp_path_factory.mktemp("cli")
    enc = tiny_encoder_dir(root / "enc")
    texts = random_texts(60, seed=9, min_words=8)
    with open(root / "corpus.jsonl", "w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"p{i}", "title": "", "text": t}) + "\n")
    with open(root / "qa.jsonl", "w") as f:  # each question is its gold passage's text
        for i in range(0, 60, 3):
            f.write(json.dumps({"id": f"q{i}", "question": texts[i], "options": {"A": "yes", "B": "no"},
                                "answer": "A", "gold_passage_ids": [f"p{i}"]}) + "\n")
        f.write(json.dumps({"id": "nogold", "question": "x", "options": {"A": "a", "B": "b"}, "answer": "A"}) + "\n")
    return root, enc


@pytest.mark.parametrize("kind", ["flat", "exact", "bm25"])
def test_build_search_eval(files, capsys, kind):
    root, enc = files
    out = root / f"idx-{kind}"
    assert main(["index", "build", "--corpus", str(root / "corpus.jsonl"), "--encoder", str(enc), "--out", str(out),
                 "--type", kind, "--quiet"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["count"] == 60 and meta["corpus_fingerprint"]
    assert not (root / f"idx-{kind}.store").exists(), "the resumable store is removed after a build"
    capsys.readouterr()
    text = json.loads((root / "corpus.jsonl").read_text().splitlines()[6])["text"]
    assert main(["index", "search", "--index", str(out), "--query", text, "-k", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res[0]["hits"][0]["id"] == "p6" and res[0]["hits"][0]["text"] == text and len(res[0]["hits"]) == 3
    assert main(["eval", "retrieval", "--index", str(out), "--data", str(root / "qa.jsonl"), "--format", "jmlr",
                 "-k", "1,5", "--out", str(root / f"m-{kind}.json")]) == 0
    m = json.loads((root / f"m-{kind}.json").read_text())
    assert m["n"] == 20 and m["skipped_without_gold"] == 1
    assert m["recall@1"] == 1.0 and m["mrr@10"] == 1.0 and m["ndcg@10"] == 1.0


def test_search_refuses_another_encoder(files, tmp_path, capsys):
    from jmlr.retriever.testing import tiny_encoder_dir

    root, enc = files
    out = root / "idx-flat2"
    assert main(["index", "build", "--corpus", str(root / "corpus.jsonl"), "--encoder", str(enc), "--out", str(out),
                 "--quiet"]) == 0
    other = tiny_encoder_dir(tmp_path / "other", seed=5)
    assert main(["index", "search", "--index", str(out), "--query", "fever", "--encoder", str(other)]) == 2
    assert "fingerprint" in capsys.readouterr().err
    assert main(["index", "search", "--index", str(out), "--query", "fever", "--encoder", str(other),
                 "--force"]) == 0


def test_bad_corpus_is_named(tmp_path, capsys, files):
    _, enc = files
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"id": "a", "text": "ok"}\n{"id": "b"}\n')
    assert main(["index", "build", "--corpus", str(bad), "--encoder", str(enc), "--out", str(tmp_path / "i")]) == 2
    err = capsys.readouterr().err
    assert "c.jsonl" in err and "line 2" in err
