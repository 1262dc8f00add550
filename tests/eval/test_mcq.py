"""mcq_accuracy (unparsed answers count as wrong) and evaluate_mcq, in score and generate mode."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from jmlr.data import QAExample
from jmlr.eval.mcq import evaluate_mcq, mcq_accuracy
from jmlr.reader import Reader


def Ex(question, options, answer, id="ex"):
    return QAExample(id=id, question=question, options=options, answer=answer)


def test_mcq_accuracy_counts_unparsed_as_wrong():
    m = mcq_accuracy(["A", None, "C", None, "B"], ["A", "A", "B", "B", "B"])
    assert m["n"] == 5 and m["correct"] == 2 and m["accuracy"] == pytest.approx(0.4)
    assert m["unparsed"] == 2 and m["unparsed_rate"] == pytest.approx(0.4)
    assert m["confusion"] == {"A": {"A": 1, "unparsed": 1}, "B": {"C": 1, "unparsed": 1, "B": 1}}
    assert m["pred_counts"] == {"A": 1, "B": 1, "C": 1, "unparsed": 2}
    assert m["per_letter_accuracy"] == {"A": 0.5, "B": pytest.approx(1 / 3)}
    # all unparsed: accuracy 0 even though every gold is "A" (a fallback-to-A parser would score 100%)
    assert mcq_accuracy([None] * 4, ["A"] * 4)["accuracy"] == 0.0
    with pytest.raises(ValueError, match="2 predictions but 3"):
        mcq_accuracy(["A", "B"], ["A", "B", "C"])
    with pytest.raises(ValueError, match="gold answer 1"):
        mcq_accuracy(["A", "B"], ["A", None])
    assert mcq_accuracy([], [])["accuracy"] == 0.0


class _GarbageReader:
    """A duck-typed reader whose generations never name an option."""

    def format_prompts(self, examples, passages, reserve_tokens=0):
        return [ex.question for ex in examples]

    def generate(self, prompts, max_new_tokens=16, batch_size=8):
        return ["I cannot tell." if i % 2 else "Answer: C" for i, _ in enumerate(prompts)]


def test_evaluate_mcq_generate_mode_reports_unparsed():
    exs = [Ex(f"q{i}?", {"A": "x", "B": "y", "C": "z"}, "A", id=f"id{i}") for i in range(6)]
    res = evaluate_mcq(_GarbageReader(), exs, mode="generate", batch_size=4, progress=False)
    assert res["predictions"] == ["C", None, "C", None, "C", None]
    assert res["accuracy"] == 0.0 and res["unparsed"] == 3
    assert res["unparsed_ids"] == ["id1", "id3", "id5"]
    assert res["generations"][1] == "I cannot tell."


def test_evaluate_mcq_with_tiny_reader(tiny_reader_dir):
    reader = Reader.from_pretrained(tiny_reader_dir, max_length=512)
    examples = [Ex("Which drug treats a fever in a child?",
                   {"A": "Aspirin", "B": "Heparin", "C": "Paracetamol", "D": "Warfarin"}, "C", id="q1"),
                Ex("What organ produces insulin?", {"A": "Liver", "B": "Pancreas", "C": "Kidney"}, "B", id="q2"),
                Ex("Which drug thins the blood?", {"A": "Heparin", "B": "Aspirin", "C": "Paracetamol"}, "A", id="q3")]
    passages = [["Paracetamol lowers fever.", "Heparin is an anticoagulant."], ["The pancreas produces insulin."],
                ["Heparin thins the blood.", "Warfarin is an anticoagulant."]]
    res = evaluate_mcq(reader, examples, passages, batch_size=2, progress=False)
    assert res["predictions"] == reader.predict(examples, passages)
    assert res["accuracy"] == pytest.approx(
        sum(p == ex.answer for p, ex in zip(res["predictions"], examples)) / 3)
    assert res["unparsed"] == 0 and res["mode"] == "score"
    gen = evaluate_mcq(reader, examples, passages, mode="generate", max_new_tokens=4, progress=False)
    assert len(gen["generations"]) == 3
    n_none = sum(p is None for p in gen["predictions"])
    assert gen["unparsed"] == n_none
    assert gen["correct"] == sum(p == ex.answer for p, ex in zip(gen["predictions"], examples))
    with pytest.raises(ValueError, match="not one of"):
        # QAExample refuses this itself; a duck-typed example reaches evaluate_mcq's own check
        bad = SimpleNamespace(id="z", question="q?", options={"A": "x", "B": "y"}, answer="C", gold_passage_ids=[])
        evaluate_mcq(reader, [bad], progress=False)
    with pytest.raises(ValueError, match="unknown mode"):
        evaluate_mcq(reader, examples, mode="vote", progress=False)
