"""contamination(): n-gram overlap between eval questions and a corpus."""
import json

import pytest

from jmlr.data import Corpus, Passage, QAExample, contamination

Q_LEAKED = "A 54 year old man presents with crushing substernal chest pain radiating to the left arm"
Q_PARTIAL = "one two three four five six seven eight nine ten"  # 10 words -> 3 distinct 8-grams
Q_CLEAN = "Which enzyme is deficient in classic phenylketonuria in newborn screening programs today"


def _qa():
    return [QAExample("leak", Q_LEAKED, {"A": "MI", "B": "GERD"}, "A"),
            QAExample("part", Q_PARTIAL, {"A": "x", "B": "y"}, "A"),
            QAExample("clean", Q_CLEAN, {"A": "PAH", "B": "G6PD"}, "A"),
            QAExample("short", "Chest pain?", {"A": "x", "B": "y"}, "B")]


def _corpus():
    return Corpus([
        Passage("p0", "Unrelated text about kidneys and nephrons and their function in the body."),
        Passage("p1", "Case: a 54-year-old MAN presents with crushing substernal chest pain, radiating to the LEFT arm. ECG..."),
        Passage("p2", "Counting: one two three four five six seven eight nine and more words here."),
        Passage("p3", "chest pain? chest pain?"),
    ])


def test_overlap_fractions_and_best_passage():
    r = contamination(_qa(), _corpus())
    q = r.by_id()
    assert q["leak"].overlap == 1.0 and q["leak"].passage_id == "p1" and q["leak"].passage_overlap == 1.0
    assert q["part"].n_ngrams == 3 and q["part"].overlap == pytest.approx(2 / 3) and q["part"].passage_id == "p2"
    assert q["clean"].overlap == 0.0 and q["clean"].passage_id is None
    assert q["short"].n_ngrams == 0 and q["short"].overlap == 0.0  # fewer than 8 words: never flagged
    assert r.flagged == ["leak", "part"]
    assert r.rate == pytest.approx(0.5)
    assert r.corpus_size == 4


def test_threshold_and_n():
    assert contamination(_qa(), _corpus(), threshold=0.9).flagged == ["leak"]
    r = contamination(_qa(), _corpus(), n=2, threshold=0.01)
    assert "short" in r.flagged and r.by_id()["short"].passage_id == "p1"  # p1 and p3 tie: the first wins
    with pytest.raises(ValueError, match="threshold must be in"):
        contamination(_qa(), _corpus(), threshold=2)


def test_best_passage_is_the_one_sharing_most():
    words = Q_LEAKED.split()
    corpus = [Passage("half", " ".join(words[:10])), Passage("all", Q_LEAKED), Passage("other", " ".join(words[5:]))]
    r = contamination([QAExample("q", Q_LEAKED)], corpus)
    assert r.by_id()["q"].passage_id == "all"


def test_include_options_and_titles():
    qa = [QAExample("q", "Short stem?", {"A": "alpha beta gamma delta epsilon zeta eta theta", "B": "no"}, "A")]
    corpus = [Passage("t", "unrelated body", "Alpha beta gamma delta epsilon zeta eta theta")]
    assert contamination(qa, corpus).flagged == []
    r = contamination(qa, corpus, include_options=True, threshold=0.1)
    assert r.flagged == ["q"] and r.by_id()["q"].passage_id == "t"


def test_plain_strings_and_report_serialisation():
    r = contamination([Q_LEAKED, Q_CLEAN], [Q_LEAKED.upper() + "!", "nothing"])
    assert r.flagged == ["0"] and r.by_id()["0"].passage_id == "0"
    d = json.loads(json.dumps(r.to_dict()))
    assert d["num_flagged"] == 1 and d["questions"][0]["overlap"] == 1.0
    assert "1 of 2 questions flagged" in str(r)
