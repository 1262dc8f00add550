"""Progressive cases: question i's prompt carries the stem and questions 1..i-1 with their answers."""
from __future__ import annotations

import json

import pytest

from jmlr.data import QAExample
from jmlr.train.stages import (ProgressiveCase, evaluate_progressive, expand_case, expand_cases, load_progressive,
                               sft_examples_from_qa)

STEM = "A 58-year-old man has crushing chest pain for 40 minutes."
QS = [
    {"question": "Which test should be done first?", "options": {"A": "Chest X-ray", "B": "ECG", "C": "D-dimer"},
     "answer": "B"},
    {"question": "The ECG shows ST elevation in V1-V4. Which artery is involved?",
     "options": {"A": "Left anterior descending", "B": "Right coronary", "C": "Circumflex"}, "answer": "A"},
    {"question": "What is the best next step?", "options": {"A": "Thrombolysis only if PCI is far",
                                                            "B": "Discharge", "C": "Primary PCI"}, "answer": "C"},
]


@pytest.fixture
def case_file(tmp_path):
    f = tmp_path / "cases.jsonl"
    f.write_text(json.dumps({"case_id": "c1", "stem": STEM, "questions": QS}) + "\n" +
                 json.dumps({"case_id": "c2", "stem": "A child has a fever.", "questions": QS[:1]}) + "\n")
    return f


def test_later_turns_carry_earlier_questions_and_answers(case_file):
    cases = load_progressive(case_file)
    assert [c.case_id for c in cases] == ["c1", "c2"] and len(cases[0].questions) == 3
    t1, t2, t3 = expand_case(cases[0])
    assert t1.question == f"Case: {STEM}\nCurrent question: Which test should be done first?"
    assert "Earlier" not in t1.question
    assert t2.question.splitlines()[1:3] == ["Earlier question 1: Which test should be done first?", "Answer 1: B. ECG"]
    lines = t3.question.splitlines()
    assert lines[0] == f"Case: {STEM}"
    assert lines[1:5] == ["Earlier question 1: Which test should be done first?", "Answer 1: B. ECG",
                          "Earlier question 2: The ECG shows ST elevation in V1-V4. Which artery is involved?",
                          "Answer 2: A. Left anterior descending"]
    assert lines[5] == "Current question: What is the best next step?"
    assert (t3.id, t3.answer, t3.metadata["turn"], t3.metadata["case_id"]) == ("c1-q3", "C", 3, "c1")
    assert t3.options == QS[2]["options"]
    assert len(expand_cases(cases)) == 4


def test_progressive_prompts_for_sft(case_file, reader):
    exs = expand_cases(load_progressive(case_file))
    pairs = sft_examples_from_qa(exs, reader)
    assert "Answer 2: A. Left anterior descending" in pairs[2].prompt
    assert pairs[2].prompt.endswith("C. Primary PCI\nCorrect Answer:") and pairs[2].response == " C"
    assert "Answer 1" not in pairs[0].prompt


def test_evaluate_progressive_gold_vs_predicted_history(case_file, reader, monkeypatch):
    cases = load_progressive(case_file)
    seen = []

    def rigged_predict(examples, passages=None):  # always answers "A"; records the prompts it saw
        seen.extend(ex.question for ex in examples)
        return ["A" for _ in examples]

    monkeypatch.setattr(reader, "predict", rigged_predict)
    gold = evaluate_progressive(reader, cases, history="gold")
    assert gold["per_turn"][1] == {"accuracy": 0.0, "n": 2} and gold["per_turn"][2] == {"accuracy": 1.0, "n": 1}
    assert gold["accuracy"] == pytest.approx(1 / 4) and gold["case_accuracy"] == 0.0
    assert any("Answer 1: B. ECG" in q for q in seen)
    seen.clear()
    pred = evaluate_progressive(reader, cases, history="predicted")
    assert any("Answer 1: A. Chest X-ray" in q for q in seen)  # the model's own (wrong) earlier answer
    assert not any("Answer 1: B. ECG" in q for q in seen)
    assert pred["predictions"]["c1"] == ["A", "A", "A"]
    with pytest.raises(ValueError, match="history"):
        evaluate_progressive(reader, cases, history="mixed")


def test_evaluate_progressive_runs_on_tiny_reader(case_file, reader):
    res = evaluate_progressive(reader, load_progressive(case_file))
    assert res["n"] == 4 and 0.0 <= res["accuracy"] <= 1.0 and set(res["per_turn"]) == {1, 2, 3}


def test_loader_errors(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"case_id": "c", "stem": "s", "questions": []}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl, line 1: 'questions' must be a non-empty list"):
        load_progressive(f)
    f.write_text(json.dumps({"case_id": "c", "stem": "s", "questions": [{"question": "q", "options": {"A": "x", "B": "y"},
                                                                           "answer": "Z"}]}) + "\n")
    with pytest.raises(ValueError, match=r"line 1: question 0: .*not an option"):
        load_progressive(f)
    f.write_text(json.dumps({"case_id": "c", "questions": QS}) + "\n")
    with pytest.raises(ValueError, match="missing field 'stem'"):
        load_progressive(f)
    with pytest.raises(ValueError, match="no questions"):
        ProgressiveCase("c", "stem", [])
    with pytest.raises(ValueError, match="turn 5"):
        from jmlr.train.stages import progressive_question
        progressive_question(ProgressiveCase("c", "s", [QAExample(id="x", question="q")]), 5)
