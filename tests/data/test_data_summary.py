"""inspect_summary / format_summary (what `jmlr data inspect` prints) and the package surface."""
import json

import jmlr.data
from jmlr.data import QAExample, format_summary, inspect_summary


def _examples():
    return [QAExample("a", "First question?", {"A": "x", "B": "y", "C": "z", "D": "w"}, "B", ["p1", "p2"]),
            QAExample("b", "first   QUESTION?", {"A": "x", "B": "y", "C": "z", "D": "w"}, "B"),
            QAExample("c", "Third?", {"A": "x", "B": "y", "C": "z", "D": "w", "E": "v"}, None, metadata={"subject": "s"}),
            QAExample("d", "Free text?", answer_text="An answer.")]


def test_inspect_summary_counts():
    s = inspect_summary(_examples())
    assert s["count"] == 4 and s["mcq"] == 3 and s["free_text"] == 1
    assert s["option_counts"] == {"0": 1, "4": 2, "5": 1}
    assert s["answer_letters"] == {"B": 2, "none": 1}
    assert s["with_gold_passages"] == 1 and s["gold_passages"] == 2 and s["with_answer_text"] == 1
    assert s["duplicate_questions"] == 1
    assert s["metadata_keys"] == {"subject": 1}
    assert s["question_chars"] == {"min": 6, "mean": 12.0, "max": 17}
    assert s["example"]["id"] == "a"
    json.dumps(s)  # JSON-ready


def test_format_summary_text():
    text = format_summary(inspect_summary(_examples()))
    assert "examples:            4" in text
    assert "answer letters:      B: 2 (66.7%), none: 1 (33.3%)" in text
    assert "*B. y" in text and "  A. x" in text
    assert "gold:     p1, p2" in text


def test_empty_summary():
    s = inspect_summary([])
    assert s["count"] == 0 and s["example"] is None
    assert format_summary(s) == "examples:            0"


def test_package_surface():
    for name in ("QAExample", "Passage", "Corpus", "load_qa", "load_qa_corpus", "save_qa", "contamination",
                 "inspect_summary", "format_summary"):
        assert hasattr(jmlr.data, name), name
    assert not hasattr(jmlr.data, "no_such_name")
    jmlr_pkg = __import__("jmlr")
    assert jmlr_pkg.load_qa is jmlr.data.load_qa and jmlr_pkg.Corpus is jmlr.data.Corpus
