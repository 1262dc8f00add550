"""Bad input gets a clear error naming the file, the line or record, and what was expected."""
import json

import pytest

from jmlr.data import Corpus, DataFormatError, load_qa


def _medqa(i, answer="A"):
    return {"question": f"Question {i}?", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer_idx": answer}


# ------------------------------------------------------------------------------------------ QA files
VALID = {
    "medqa": _medqa(0),
    "medmcqa": {"id": "m", "question": "Q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 1},
    "jmlr": {"id": "j", "question": "Q?"},
    "jsonl": {"question": "Q?"},
    "amboss": {"stem": "S", "A": "a", "B": "b", "answer": "A"},
    "huatuo": {"questions": [["q"]], "answers": ["a"]},
}


@pytest.mark.parametrize("fmt", list(VALID))
def test_malformed_json_line_names_file_and_line(write_jsonl, fmt):
    # line 1 valid, line 2 blank (still counted), line 3 malformed
    path = write_jsonl("bad.jsonl", [VALID[fmt], ""], raw_lines=['{"question": "x", "options": '])
    with pytest.raises(ValueError) as e:
        load_qa(fmt, path)
    msg = str(e.value)
    assert str(path) in msg and "line 3" in msg and "malformed JSON" in msg and "expected" in msg
    assert isinstance(e.value, DataFormatError) and e.value.where == "line 3"


def test_non_object_line(write_jsonl):
    path = write_jsonl("arr.jsonl", [_medqa(0), "[1, 2]"])
    with pytest.raises(ValueError, match=r"arr\.jsonl, line 2: got a JSON list; expected one MedQA JSON object"):
        load_qa("medqa", path)


@pytest.mark.parametrize("fmt,record,field", [
    ("medqa", {"question": "Q?", "options": {"A": "a", "B": "b"}}, "answer_idx"),
    ("medqa", {"question": "Q?", "answer_idx": "A"}, "options"),
    ("medmcqa", {"question": "Q?", "opa": "a", "opb": "b", "opc": "c", "cop": 1, "id": "x"}, "opd"),
    ("jmlr", {"id": "x", "options": {"A": "a", "B": "b"}}, "question"),
    ("amboss", {"A": "a", "B": "b", "answer": "A"}, "stem"),
])
def test_missing_field(write_jsonl, fmt, record, field):
    path = write_jsonl("missing.jsonl", [record])
    with pytest.raises(ValueError, match=rf"missing\.jsonl, line 1: missing field '{field}'; expected"):
        load_qa(fmt, path)


def test_missing_field_in_pubmedqa_record(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"42": {"QUESTION": "Q?", "final_decision": "yes"}}))
    with pytest.raises(ValueError, match=r"p\.json, record '42': missing field 'CONTEXTS'; expected a PubMedQA record"):
        load_qa("pubmedqa", path)


def test_answer_letter_not_an_option(write_jsonl):
    path = write_jsonl("ans.jsonl", [_medqa(0), _medqa(1, answer="E")])
    with pytest.raises(ValueError, match=r"ans\.jsonl, line 2: example 'medqa-1': answer 'E' is not an option; "
                                         r"expected one of \['A', 'B', 'C', 'D'\]"):
        load_qa("medqa", path)


def test_medmcqa_cop_out_of_range(write_jsonl):
    rec = {"id": "x", "question": "Q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 7}
    with pytest.raises(ValueError, match=r"line 1: cop is 7, not an option; expected 1-4"):
        load_qa("medmcqa", write_jsonl("c.jsonl", [rec]))


@pytest.mark.parametrize("fmt", ["medqa", "medmcqa", "jmlr", "jsonl", "amboss", "huatuo", "pubmedqa", "mmlu"])
def test_empty_file(tmp_path, fmt):
    path = tmp_path / ("empty.csv" if fmt == "mmlu" else "empty.json")
    path.write_text("\n  \n")
    with pytest.raises(ValueError, match=r"empty\.(json|csv): .*empty; expected"):
        load_qa(fmt, path)


def test_duplicate_ids(write_jsonl):
    recs = [{"id": "same", "question": "Q1?"}, {"id": "other", "question": "Q2?"}, {"id": "same", "question": "Q3?"}]
    with pytest.raises(ValueError, match=r"dup\.jsonl, line 3: duplicate id 'same' \(first at line 1\); expected unique ids"):
        load_qa("jmlr", write_jsonl("dup.jsonl", recs))


def test_duplicate_ids_across_mmlu_files(tmp_path):
    (tmp_path / "x_test.csv").write_text("Q?,a,b,c,d,A\n")
    (tmp_path / "x_dev.csv").write_text("Q?,a,b,c,d,A\n")  # same subject -> same ids
    with pytest.raises(ValueError, match=r"x_test\.csv, line 1: duplicate id 'mmlu-x-0' \(first at .*x_dev\.csv, line 1\)"):
        load_qa("mmlu", tmp_path)


def test_unknown_format_lists_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown QA format 'medqa2'; expected one of: jmlr, medqa, amboss, medmcqa, "
                                         r"mmlu, pubmedqa, huatuo, jsonl, hf"):
        load_qa("medqa2", tmp_path / "x.jsonl")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl: no such file"):
        load_qa("medqa", tmp_path / "nope.jsonl")


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(json.dumps(_medqa(0)).encode() + b"\n" + b'{"question": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"latin\.jsonl, line 2: not valid UTF-8"):
        load_qa("medqa", path)


# ------------------------------------------------------------------------------------------ corpus files
def test_corpus_malformed_json_line(write_jsonl):
    path = write_jsonl("c.jsonl", [{"id": "a", "text": "x"}], raw_lines=["{oops"])
    with pytest.raises(ValueError, match=r"c\.jsonl, line 2: malformed JSON .*expected one passage object"):
        Corpus.load(path)


def test_corpus_missing_text_field(write_jsonl):
    path = write_jsonl("c.jsonl", [{"id": "a", "text": "x"}, {"id": "b", "body": "y"}])
    with pytest.raises(ValueError, match=r"c\.jsonl, line 2: missing field 'text'; expected a passage \{id, title\?, text\}"):
        Corpus.load(path)


def test_corpus_duplicate_ids_name_both_lines(write_jsonl, tmp_path):
    path = write_jsonl("c.jsonl", [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "a", "text": "z"}])
    with pytest.raises(ValueError, match=r"c\.jsonl, line 3: duplicate passage id 'a' \(first at line 1\)"):
        Corpus.load(path)
    tsv = tmp_path / "c.tsv"
    tsv.write_text("id\ttext\ttitle\n1\tone\tT\n1\tuno\tT\n")
    with pytest.raises(ValueError, match=r"c\.tsv, line 3: duplicate passage id '1' \(first at line 2\)"):
        Corpus.load(tsv)


def test_corpus_tsv_wrong_columns(tmp_path):
    tsv = tmp_path / "c.tsv"
    tsv.write_text("1\tone\n2\ttwo\tTitle\textra\n")
    with pytest.raises(ValueError, match=r"c\.tsv, line 2: 4 tab-separated column\(s\); expected id<TAB>text\[<TAB>title\]"):
        Corpus.load(tsv)


@pytest.mark.parametrize("name", ["e.jsonl", "e.tsv", "e.txt", "e.md"])
def test_corpus_empty_file(tmp_path, name):
    (tmp_path / name).write_text("\n\n")
    with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')}: file is empty; expected"):
        Corpus.load(tmp_path / name)


def test_corpus_unknown_format_and_missing_path(tmp_path):
    (tmp_path / "c.parquet").write_text("x")
    with pytest.raises(ValueError, match="cannot tell the corpus format"):
        Corpus.load(tmp_path / "c.parquet")
    with pytest.raises(ValueError, match=r"unknown corpus format 'xml'; expected one of: jsonl, tsv, text, folder"):
        Corpus.load(tmp_path / "c.parquet", fmt="xml")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        Corpus.load(tmp_path / "missing.jsonl")


def test_corpus_in_memory_duplicate_ids():
    from jmlr.data import Passage
    with pytest.raises(ValueError, match=r"passage 2: duplicate passage id 'a' \(first at passage 0\)"):
        Corpus([Passage("a", "x"), Passage("b", "y"), Passage("a", "z")])
