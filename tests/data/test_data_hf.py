"""datasets in: Corpus.from_hf (Arrow buffers straight into the compact store), save_to_disk folders, mappings."""
import json
import tracemalloc

import pytest

from jmlr.data import Corpus
from jmlr.data.hf import corpus_load_kwargs, parse_mapping


@pytest.fixture
def ds():
    import datasets

    return datasets.Dataset.from_dict({
        "pmid": [101, 102, 103, 104],
        "abstract": ["Aspirin lowers fever.", "Insulin lowers glucose.", "Héparine: anticoagulant ✓", ""],
        "heading": ["Fever", None, "Blood", "Empty"],
        "extra": [1, 2, 3, 4],
    })


def test_from_hf_matches_a_hand_built_corpus(ds):
    c = Corpus.from_hf(ds, id="pmid", text="abstract", title="heading")
    want = Corpus.from_texts(["Aspirin lowers fever.", "Insulin lowers glucose.", "Héparine: anticoagulant ✓", ""],
                             ids=["101", "102", "103", "104"], titles=["Fever", "", "Blood", "Empty"])
    assert c.fingerprint() == want.fingerprint()
    assert c.get("103").title == "Blood" and c.get("102").title == "" and c[2].text.endswith("✓")
    assert c.texts()[0] == "Fever. Aspirin lowers fever."
    assert c.source == "hf dataset"


def test_from_hf_follows_select_shuffle_and_small_batches(ds):
    sub = ds.shuffle(seed=3).select([0, 2, 3])
    c = Corpus.from_hf(sub, id="pmid", text="abstract", title=None, batch_size=2)
    assert list(c.ids) == [str(r["pmid"]) for r in sub]
    assert list(c.texts(with_title=False)) == list(sub["abstract"])
    assert Corpus.from_hf(ds, id=None, text="abstract").ids[:2] == ["0", "1"]  # row numbers
    only = ds.remove_columns(["heading"]).rename_column("pmid", "id").rename_column("abstract", "text")
    assert len(Corpus.from_hf(only)) == 4  # default columns; the default title column is optional


def test_from_hf_errors_name_the_column_or_record(ds):
    import datasets

    with pytest.raises(ValueError, match=r"no column 'body' for field 'text'.*columns \['pmid'"):
        Corpus.from_hf(ds, id="pmid", text="body")
    with pytest.raises(ValueError, match="no column 'summary' for field 'title'"):
        Corpus.from_hf(ds, id="pmid", text="abstract", title="summary")
    nulls = datasets.Dataset.from_dict({"id": ["a", "b", "c"], "text": ["x", None, "z"]})
    with pytest.raises(ValueError, match=r"record 1: column 'text' \(field 'text'\) is null"):
        Corpus.from_hf(nulls)
    dup = datasets.Dataset.from_dict({"id": ["a", "b", "a"], "text": ["x", "y", "z"]})
    with pytest.raises(ValueError, match="record 2.*duplicate passage id 'a' .first at record 0"):
        Corpus.from_hf(dup)
    empty_id = datasets.Dataset.from_dict({"id": ["a", ""], "text": ["x", "y"]})
    with pytest.raises(ValueError, match=r"record 1: column 'id' \(id\) is empty"):
        Corpus.from_hf(empty_id)
    lists = datasets.Dataset.from_dict({"id": ["a"], "text": [["x", "y"]]})
    with pytest.raises(ValueError, match="holds list"):
        Corpus.from_hf(lists)
    dd = datasets.DatasetDict({"train": ds, "test": ds})
    with pytest.raises(ValueError, match="splits .'train', 'test'.; pass split="):
        Corpus.from_hf(dd, id="pmid", text="abstract")
    assert len(Corpus.from_hf(dd, id="pmid", text="abstract", split="test")) == 4
    with pytest.raises(ValueError, match="expected a datasets.Dataset"):
        Corpus.from_hf([{"id": "a", "text": "x"}])


def test_from_hf_keeps_no_python_copy_per_passage():
    """Peak Python allocations stay within a small multiple of the compact store itself (a list of str, or
    Passage objects, would cost several times more)."""
    import datasets

    n = 20000
    ds = datasets.Dataset.from_dict({"id": [f"doc-{i}" for i in range(n)],
                                     "text": [f"passage number {i} about fever and cough" for i in range(n)]})
    tracemalloc.start()
    c = Corpus.from_hf(ds, batch_size=4096)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    store = c.memory_usage()["total"]
    assert len(c) == n and c.get("doc-19999").text.startswith("passage number 19999")
    naive = sum(len(t) + 49 for t in ds["text"]) + sum(len(t) + 49 for t in ds["id"])  # str objects alone
    assert peak < 2.5 * store < naive * 1.5, (peak, store, naive)


def test_load_save_to_disk_folder_and_cli_mapping(ds, tmp_path, capsys):
    from jmlr.cli import main
    from jmlr.retriever.testing import tiny_encoder_dir

    ds.save_to_disk(str(tmp_path / "pubmed"))
    c = Corpus.load(tmp_path / "pubmed", id="pmid", text="abstract", title="heading")  # format inferred: hf
    assert len(c) == 4 and c.source == str(tmp_path / "pubmed")
    assert parse_mapping(["id=pmid", "options=opa,opb"]) == {"id": "pmid", "options": ["opa", "opb"]}
    assert corpus_load_kwargs("jsonl", {"text": "body"}) == {"text_field": "body"}
    with pytest.raises(ValueError, match="expected FIELD=COLUMN"):
        parse_mapping(["text"])
    with pytest.raises(ValueError, match="unknown field.*'question'"):
        corpus_load_kwargs("hf", {"question": "q"})
    enc = tiny_encoder_dir(tmp_path / "enc")
    out = tmp_path / "idx"
    assert main(["index", "build", "--corpus", str(tmp_path / "pubmed"), "--corpus-format", "hf", "--hf-mapping",
                 "id=pmid", "--hf-mapping", "text=abstract", "--hf-mapping", "title=heading", "--encoder", str(enc),
                 "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["index", "search", "--index", str(out), "--query", "Insulin lowers glucose.", "-k", "1",
                 "--json"]) == 0
    hit = json.loads(capsys.readouterr().out)[0]["hits"][0]
    assert hit["id"] == "102" and hit["text"] == "Insulin lowers glucose."
    assert main(["index", "build", "--corpus", str(tmp_path / "pubmed"), "--hf-mapping", "id=pmid",
                 "--hf-mapping", "text=body", "--encoder",
                 str(enc), "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "no column 'body' for field 'text'" in capsys.readouterr().err


def test_qa_and_corpus_mappings_reach_training_data_and_inspect(tmp_path, capsys):
    import datasets

    from jmlr.cli import main
    from jmlr.config import load_config
    from jmlr.train.trainer import _from_datasets, load_data

    qa = datasets.Dataset.from_dict({"q": ["Which drug lowers fever?", "Which hormone lowers glucose?"],
                                     "opa": ["Aspirin", "Insulin"], "opb": ["Insulin", "Aspirin"],
                                     "label": ["A", "A"], "pid": ["101", "102"]})
    qa.save_to_disk(str(tmp_path / "qa"))
    corpus = datasets.Dataset.from_dict({"pmid": ["101", "102"], "abstract": ["Aspirin lowers fever.",
                                                                              "Insulin lowers glucose."]})
    corpus.save_to_disk(str(tmp_path / "corpus"))
    cfg = load_config(None, ["data.format=hf", f"data.train={tmp_path / 'qa'}", f"data.dev={tmp_path / 'qa'}",
                             f"data.test={tmp_path / 'qa'}", f"data.corpus={tmp_path / 'corpus'}",
                             'data.mapping={"question": "q", "options": ["opa", "opb"], "answer": "label", '
                             '"gold_passage_ids": "pid"}',
                             'data.corpus_mapping={"id": "pmid", "text": "abstract"}'])
    train, dev, test, c = load_data(cfg)
    assert train[1].options == {"A": "Insulin", "B": "Aspirin"} and train[1].gold_passage_ids == ["102"]
    assert c.get("101").text == "Aspirin lowers fever."
    # the trainer takes Dataset objects as they are
    c2, tr2, dv2 = _from_datasets(corpus.rename_columns({"pmid": "id", "abstract": "text"}),
                                  qa.rename_columns({"q": "question"}).remove_columns(["opa", "opb", "label", "pid"]),
                                  None)
    assert len(c2) == 2 and tr2[0].question == "Which drug lowers fever?" and dv2 is None
    assert main(["data", "inspect", str(tmp_path / "qa"), "--format", "hf", "--hf-mapping", "question=q",
                 "--hf-mapping", "options=opa,opb", "--hf-mapping", "answer=label"]) == 0
    assert "2" in capsys.readouterr().out
    assert main(["data", "inspect", str(tmp_path / "qa"), "--format", "hf", "--hf-mapping", "question=nope"]) == 2
    assert "nope" in capsys.readouterr().err
