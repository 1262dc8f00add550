"""QAExample / Passage validation and normalisation."""
import dataclasses

import pytest

from jmlr.data import Passage, QAExample


def test_qaexample_sorts_and_uppercases_options_and_answer():
    ex = QAExample("x", "Q?", {"b": "two", "A": "one", "C": "three"}, answer="b")
    assert list(ex.options) == ["A", "B", "C"]
    assert ex.options["B"] == "two"
    assert ex.answer == "B"
    assert ex.answer_option_text == "two"
    assert ex.is_mcq


def test_qaexample_options_from_list():
    ex = QAExample("x", "Q?", ["yes", "no"], answer="A")
    assert ex.options == {"A": "yes", "B": "no"}


@pytest.mark.parametrize("options,answer,match", [
    ({"A": "a", "B": "b"}, "C", r"answer 'C' is not an option; expected one of \['A', 'B'\]"),
    ({"A": "a", "C": "c"}, "A", "not consecutive from A"),
    ({"A": "only"}, "A", "single option"),
    ({"A": "a", "1": "b"}, "A", "is not a letter"),
    ({}, "A", "no options"),
    ({"A": "a", "B": None}, "A", "expected a text"),
])
def test_qaexample_rejects_bad_options(options, answer, match):
    with pytest.raises(ValueError, match=match):
        QAExample("x", "Q?", options, answer=answer)


def test_qaexample_rejects_empty_question_and_id():
    with pytest.raises(ValueError, match="question must be a non-empty"):
        QAExample("x", "   ")
    with pytest.raises(ValueError, match="id must be a non-empty"):
        QAExample("", "Q?")


def test_free_text_example():
    ex = QAExample("h1", "What helps a cold?", answer_text="Rest and fluids.")
    assert ex.options == {} and ex.answer is None and not ex.is_mcq
    assert ex.answer_option_text == "Rest and fluids."


def test_roundtrip_dict_and_unknown_field():
    ex = QAExample("x", "Q?", {"A": "a", "B": "b"}, "B", ["p1"], None, {"k": 1})
    assert QAExample.from_dict(ex.to_dict()) == ex
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['anwser'\]"):
        QAExample.from_dict({"id": "x", "question": "Q?", "anwser": "A"})


def test_passage_frozen_and_full_text():
    p = Passage("p1", "Body text.", "Title")
    assert p.full_text() == "Title. Body text."
    assert Passage("p2", "Body.", "Question?").full_text() == "Question? Body."
    assert Passage("p3", "Body.").full_text() == "Body."
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.text = "changed"
    with pytest.raises(ValueError, match="non-empty str"):
        Passage("", "text")
