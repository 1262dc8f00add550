"""Corpus: loading, lookup, chunking, dedup, identity and compact storage."""
import json
import pickle

import numpy as np
import pytest

from jmlr.data import Corpus, Passage


@pytest.fixture
def small():
    return Corpus([Passage("a", "Alpha text.", "Alpha"), Passage("b", "Beta text."), {"id": "c", "text": "Gamma", "title": "G?"}])


# ------------------------------------------------------------------------------------------ loading
def test_load_jsonl_with_titles_unicode_and_int_ids(write_jsonl):
    path = write_jsonl("c.jsonl", [{"id": 1, "title": "Cœur", "text": "Le cœur bat. 🫀"}, {"id": "2", "text": "Two"},
                                   {"id": "3", "title": None, "contents": "Pyserini style"}])
    c = Corpus.load(path)
    assert list(c.ids) == ["1", "2", "3"]
    assert c[0] == Passage("1", "Le cœur bat. 🫀", "Cœur")
    assert c[1].title == "" and c[2].text == "Pyserini style"
    assert c.source == str(path)


def test_load_jsonl_custom_fields(write_jsonl):
    c = Corpus.load(write_jsonl("c.jsonl", [{"docid": "d1", "body": "b", "head": "h"}]),
                    id_field="docid", text_field="body", title_field="head")
    assert c[0] == Passage("d1", "b", "h")


def test_load_tsv_dpr_layout(tmp_path):
    tsv = tmp_path / "psgs.tsv"
    tsv.write_text('id\ttext\ttitle\n1\t"Aaron ""the elder"" was"\tAaron\n2\tplain text\tB\n\n3\tno title\n')
    c = Corpus.load(tsv)
    assert list(c.ids) == ["1", "2", "3"]
    assert c.get("1") == Passage("1", 'Aaron "the elder" was', "Aaron")
    assert c.get("3").title == ""


def test_load_plain_text_paragraphs(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("First paragraph\ncontinues here.\n\n\nSecond one.\n  \nThird.")
    c = Corpus.load(p)
    assert list(c.ids) == ["notes.txt:0", "notes.txt:1", "notes.txt:2"]
    assert c[0].text == "First paragraph\ncontinues here." and c[0].title == ""


def test_load_markdown_folder(tmp_path):
    (tmp_path / "cardio").mkdir()
    (tmp_path / "cardio" / "heart.md").write_text(
        "# Heart\n\nThe heart pumps blood.\n\n## Valves\nFour valves.\n\n```\n# not a heading\n```\n")
    (tmp_path / "kidney.txt").write_text("Kidneys filter blood.\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    c = Corpus.load(tmp_path)
    assert list(c.ids) == ["cardio/heart.md:0", "cardio/heart.md:1", "cardio/heart.md:2", "kidney.txt:0"]
    assert [p.title for p in c] == ["Heart", "Valves", "Valves", "kidney"]
    assert c[2].text == "```\n# not a heading\n```"


def test_load_gzip_jsonl(tmp_path):
    import gzip
    p = tmp_path / "c.jsonl.gz"
    with gzip.open(p, "wt") as f:
        f.write(json.dumps({"id": "z", "text": "zipped"}) + "\n")
    assert Corpus.load(p)[0].text == "zipped"


# ------------------------------------------------------------------------------------------ access
def test_sequence_and_lookup(small):
    assert len(small) == 3
    assert small[-1] == Passage("c", "Gamma", "G?")
    assert [p.id for p in small] == ["a", "b", "c"]
    assert small.index_of("b") == 1 and small.get("c").text == "Gamma"
    assert "a" in small and "zz" not in small and Passage("b", "") in small
    with pytest.raises(KeyError, match="passage id 'zz' is not in the corpus"):
        small.get("zz")
    assert small.get("zz", None) is None
    assert small.indices_of(["c", "a", "q"], missing=-1).tolist() == [2, 0, -1]
    with pytest.raises(KeyError):
        small.indices_of(["q"])
    with pytest.raises(IndexError):
        small[3]
    sub = small[1:]
    assert isinstance(sub, Corpus) and list(sub.ids) == ["b", "c"] and sub.index_of("c") == 1


def test_texts_as_the_encoder_sees_them(small):
    assert small.texts() == ["Alpha. Alpha text.", "Beta text.", "G? Gamma"]
    assert small.texts(with_title=False) == ["Alpha text.", "Beta text.", "Gamma"]
    assert small.texts(start=1, stop=2) == ["Beta text."]
    assert [b for b in small.iter_batches(2)] == [(0, ["Alpha. Alpha text.", "Beta text."]), (2, ["G? Gamma"])]


def test_many_ids_lookup_and_hash_collision_safety():
    n = 5000
    c = Corpus.from_texts([f"text {i}" for i in range(n)], ids=[f"id-{i}" for i in range(n)])
    rng = np.random.default_rng(0)
    for i in rng.integers(0, n, 50).tolist():
        assert c.index_of(f"id-{i}") == i
    # force every hash equal: lookups must still compare the real strings
    c._hash_sorted = np.zeros(n, dtype=np.int64)
    c._hash_order = np.arange(n)
    import builtins
    orig = builtins.hash
    try:
        builtins.hash = lambda s: 0  # corpus.py looks hash up as a builtin
        assert c.index_of("id-4321") == 4321
        assert "id-x" not in c
    finally:
        builtins.hash = orig


def test_select_and_concat(small):
    other = Corpus([Passage("d", "Delta")])
    both = Corpus.concat([small, other])
    assert list(both.ids) == ["a", "b", "c", "d"] and both.get("d").text == "Delta" and both.get("a").title == "Alpha"
    assert list(both.select([3, 0]).ids) == ["d", "a"]
    with pytest.raises(ValueError, match="duplicate passage id 'a'"):
        Corpus.concat([small, small])


# ------------------------------------------------------------------------------------------ identity
def test_fingerprint_stable_and_sensitive(small):
    same = Corpus([Passage("a", "Alpha text.", "Alpha"), Passage("b", "Beta text."), Passage("c", "Gamma", "G?")])
    assert small.fingerprint() == same.fingerprint()
    changed = Corpus([Passage("a", "Alpha text!", "Alpha"), Passage("b", "Beta text."), Passage("c", "Gamma", "G?")])
    assert small.fingerprint() != changed.fingerprint()
    moved = Corpus([Passage("a", "Alpha text.Alpha", ""), Passage("b", "Beta text."), Passage("c", "Gamma", "G?")])
    assert small.fingerprint() != moved.fingerprint()  # bytes moved between title and text
    assert small[1:].fingerprint() == Corpus([Passage("b", "Beta text."), Passage("c", "Gamma", "G?")]).fingerprint()


def test_pickle_rebuilds_the_id_index(small):
    c2 = pickle.loads(pickle.dumps(small))
    assert c2._hash_sorted is None  # hashes are per process: rebuilt lazily
    assert c2.index_of("c") == 2 and list(c2) == list(small)


def test_save_jsonl_roundtrip(tmp_path, small):
    path = small.save_jsonl(tmp_path / "out" / "c.jsonl")
    again = Corpus.load(path)
    assert list(again) == list(small) and again.fingerprint() == small.fingerprint()
    assert json.loads(path.read_text().splitlines()[1]) == {"id": "b", "text": "Beta text."}
    assert sorted(p.name for p in path.parent.iterdir()) == ["c.jsonl"]


# ------------------------------------------------------------------------------------------ dedup
def test_dedup_keeps_first_and_reports(caplog):
    c = Corpus([Passage("p1", "Aspirin  inhibits COX."), Passage("p2", "Other."),
                Passage("p3", "aspirin inhibits\ncox."), Passage("p4", "Aspirin inhibits COX!"),
                Passage("p5", "ASPIRIN INHIBITS COX.", "A title")])
    import logging
    with caplog.at_level(logging.INFO, logger="jmlr.data"):
        d = c.dedup()
    assert list(d.ids) == ["p1", "p2", "p4"]
    assert d.dedup_report.dropped == 2 and d.dedup_report.before == 5 and d.dedup_report.after == 3
    assert d.dedup_report.duplicate_of == {"p3": "p1", "p5": "p1"}
    assert "dropped 2" in caplog.text
    d2 = c.dedup(key="title+text")
    assert list(d2.ids) == ["p1", "p2", "p4", "p5"]


# ------------------------------------------------------------------------------------------ chunking
LONG = " ".join(f"word{i:03d}" for i in range(120))  # 120 words of 7 chars


def test_char_chunks_respect_size_words_and_overlap():
    c = Corpus([Passage("long", LONG, "T"), Passage("short", "tiny text")])
    ch = c.chunk(100, 30)
    long_chunks = [p for p in ch if p.id.startswith("long#")]
    assert [p.id for p in long_chunks] == [f"long#{j}" for j in range(len(long_chunks))]
    assert len(long_chunks) > 1 and all(p.title == "T" for p in long_chunks)
    assert all(len(p.text) <= 100 for p in long_chunks)
    words = set(LONG.split())
    for p in long_chunks:
        assert set(p.text.split()) <= words  # no word was cut in half
    covered = [w for p in long_chunks for w in p.text.split()]
    assert set(covered) == words
    for a, b in zip(long_chunks, long_chunks[1:]):
        shared = set(a.text.split()) & set(b.text.split())
        assert 2 <= len(shared) <= 4  # ~30 chars of overlap = 3-4 words of 8 chars
    assert ch.get("short").text == "tiny text"  # fits: keeps its id
    assert ch.is_chunked and ch.parent_id(0) == "long" and ch.parent_id(len(ch) - 1) == "short"
    no_overlap = c.chunk(100)
    joined = " ".join(p.text for p in no_overlap if p.id.startswith("long#"))
    assert joined == LONG


def test_chunk_arguments_are_checked():
    c = Corpus([Passage("a", "x")])
    with pytest.raises(ValueError, match="overlap must be"):
        c.chunk(10, 10)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        c.chunk(10, unit="tokens")
    with pytest.raises(ValueError, match="size must be a positive int"):
        c.chunk(0)


def _fast_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"[UNK]": 0, "[PAD]": 1}
    for w in LONG.split() + [",", "."]:
        vocab[w] = len(vocab)
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]", pad_token="[PAD]")


def test_token_chunks_with_a_fast_tokenizer():
    tok = _fast_tokenizer()
    text = LONG.replace("word050 ", "word050, ")
    c = Corpus([Passage("d", text), Passage("s", "word001 word002")])
    ch = c.chunk(16, 4, tokenizer=tok)
    pieces = [p for p in ch if p.id.startswith("d#")]
    n_tok = len(tok(text, add_special_tokens=False)["input_ids"])
    assert len(pieces) == 1 + -(-(n_tok - 16) // 12)  # windows of 16, stride 12
    ids = [tok(p.text, add_special_tokens=False)["input_ids"] for p in pieces]
    assert all(len(x) <= 16 for x in ids)
    for a, b in zip(ids, ids[1:]):
        assert a[-4:] == b[:4]  # exactly 4 tokens of overlap
    assert all(p.text in text for p in pieces)  # slices of the original text (punctuation kept)
    assert ch.get("s").text == "word001 word002"


def test_token_chunks_with_a_slow_tokenizer(tmp_path):
    from transformers import BertTokenizerLegacy
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + LONG.split()) + "\n")
    tok = BertTokenizerLegacy(str(vocab))
    assert not tok.is_fast
    ch = Corpus([Passage("d", LONG)]).chunk(50, 10, tokenizer=tok)
    assert [p.id for p in ch] == ["d#0", "d#1", "d#2"]
    assert ch[0].text.split() == LONG.split()[:50] and ch[1].text.split() == LONG.split()[40:90]
    assert ch[2].text.split() == LONG.split()[80:]


def test_chunked_corpus_roundtrip_keeps_parents(tmp_path):
    ch = Corpus([Passage("long", LONG), Passage("s", "x")]).chunk(200, 20)
    again = Corpus.load(ch.save_jsonl(tmp_path / "ch.jsonl"))
    assert list(again.parent_ids) == list(ch.parent_ids) and again.fingerprint() == ch.fingerprint()
    assert set(again.parent_ids) == {"long", "s"}
    rechunked = ch.chunk(80)  # parents stay the original passages
    assert set(rechunked.parent_ids) == {"long", "s"}


# ------------------------------------------------------------------------------------------ memory
def test_storage_is_compact():
    n = 20_000
    c = Corpus.from_texts([f"passage number {i} about hypertension" for i in range(n)],
                          ids=[f"doc{i}" for i in range(n)])
    content = sum(len(f"passage number {i} about hypertension") + len(f"doc{i}") for i in range(n))
    mem = c.memory_usage()
    assert mem["titles"] == 0  # no titles: nothing stored per passage
    # UTF-8 bytes + two int64 offsets + 16 bytes of id index per passage; no Python object per passage
    assert mem["total"] <= content + n * (8 + 8 + 16) + 64


def test_index_lists_and_text_ranges(small):
    assert list(small[[2, 0]].ids) == ["c", "a"]
    assert list(small[np.array([1])].ids) == ["b"]
    assert small.texts(start=1) == ["Beta text.", "G? Gamma"]
    assert small.texts(with_title=False, start=2, stop=10) == ["Gamma"]
    with pytest.raises(TypeError, match="use corpus.get"):
        small["a"]
