"""Question generation: hand-written generations parse into valid QAExamples or are rejected for the right
reason; a run on the tiny model completes and reports every rejection count."""
from __future__ import annotations

import json

import pytest

from jmlr.data import Passage, load_qa
from jmlr.train.stages import QGenConfig, QGenSettings, generate_questions, parse_mcq, run_qgen, validate_mcq
from jmlr.train.stages.qgen import REJECTION_REASONS, answer_support, copy_ratio

PASSAGE = ("Velcoran is a long-acting calcium channel blocker used for stable angina. The usual adult dose is "
           "5 mg once daily. Its most common adverse effect is ankle oedema, and it must be avoided in "
           "cardiogenic shock.")

GOOD = """Question: What is the most common adverse effect of velcoran?
A. Dry cough
B. Ankle oedema
C. Hair loss
D. Insomnia
Answer: B"""


def test_parse_good_and_lenient_variants():
    p = parse_mcq(GOOD)
    assert p.question == "What is the most common adverse effect of velcoran?"
    assert p.options == {"A": "Dry cough", "B": "Ankle oedema", "C": "Hair loss", "D": "Insomnia"}
    assert validate_mcq(p, PASSAGE) == ("B", None)
    # the prompt ended with "Question:", brackets, colons, bold markdown, a wrapped question, trailing text
    text = (" In which condition must velcoran\nbe avoided?\n(A) Asthma\nB) Cardiogenic shock\nC: Gout\n"
            "D. Migraine\n\n**Answer:** (B)\nExplanation: stated in the passage.")
    p = parse_mcq(text, assume_question=True)
    assert p.question == "In which condition must velcoran be avoided?"
    assert p.options["B"] == "Cardiogenic shock"
    assert validate_mcq(p, PASSAGE) == ("B", None)
    # a chat model's preamble and blank lines
    p = parse_mcq("Sure! Here is a question based on the passage:\n\n" + GOOD.replace("\nA.", "\n\nA."))
    assert p is not None and validate_mcq(p, PASSAGE) == ("B", None)
    p = parse_mcq(GOOD.replace("\nA. Dry", "\nOptions:\nA. Dry"))
    assert p is not None and p.options["A"] == "Dry cough"
    # an answer given as the option text
    p = parse_mcq(GOOD.replace("Answer: B", "Answer: Ankle oedema"))
    assert validate_mcq(p, PASSAGE) == ("B", None)


@pytest.mark.parametrize("text,reason", [
    ("The passage is about velcoran.", "unparsable"),
    (GOOD.replace("D. Insomnia\n", ""), "unparsable"),                        # three options
    (GOOD.replace("D. Insomnia", "D. Insomnia\nE. Rash"), "unparsable"),     # five options
    (GOOD.replace("B. Ankle", "C. Ankle"), "unparsable"),                    # letters out of order
    (GOOD.replace("\nAnswer: B", ""), "unparsable"),                          # no answer line
    (GOOD.replace("C. Hair loss", "C. Dry  Cough."), "duplicate_options"),
    (GOOD.replace("Answer: B", "Answer: E"), "answer_not_in_options"),
    (GOOD.replace("Answer: B", "Answer: none of the above"), "answer_not_in_options"),
    (GOOD.replace("Answer: B", "Answer: A"), "answer_not_supported"),         # "dry cough" is not in the passage
    ("Question: Velcoran is a long-acting calcium channel blocker used for stable angina.\nA. True\nB. False\n"
     "C. Unknown\nD. Stable angina\nAnswer: D", "copies_passage"),
])
def test_rejection_reasons(text, reason):
    letter, got = validate_mcq(parse_mcq(text), PASSAGE)
    assert (letter, got) == (None, reason)


def test_support_and_copy_measures():
    assert answer_support("ankle oedema", PASSAGE) == 1.0
    assert answer_support("the dry cough", PASSAGE) == 0.0  # stopwords do not count as support
    assert answer_support("踝部水肿", "常见不良反应为踝部水肿。") == 1.0  # CJK by character
    assert copy_ratio("What is the dose?", PASSAGE) < 0.5
    assert copy_ratio("The usual adult dose is 5 mg once daily", PASSAGE) == 1.0


def test_generate_questions_counts_and_examples():
    passages = [Passage("p1", PASSAGE), Passage("p2", PASSAGE + " Extra.")]
    outputs = {0: GOOD, 1: GOOD, 2: "garbage", 3: GOOD.replace("Answer: B", "Answer: E")}

    def fake_generate(prompts):
        assert all(pr.rstrip().endswith("Question:") and "Passage: Velcoran" in pr for pr in prompts)
        return [outputs[i] for i in range(len(prompts))]

    class _Tok:  # generate_questions only counts tokens with the tokenizer
        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [t.split() for t in texts]}

    class _R:
        template, tokenizer = "jmlr", _Tok()

    res = generate_questions(_R(), passages, QGenSettings(per_passage=2, seed=3), generate_fn=fake_generate)
    assert res.rejected == {"unparsable": 1, "duplicate_options": 0, "answer_not_in_options": 1,
                            "copies_passage": 0, "answer_not_supported": 0, "duplicate_question": 1}
    (ex,) = res.examples
    assert ex.gold_passage_ids == ["p1"] and ex.id == "qgen-p1-0"
    assert ex.options[ex.answer] == "Ankle oedema"  # shuffling keeps the right answer
    assert sorted(ex.options.values()) == sorted(["Dry cough", "Ankle oedema", "Hair loss", "Insomnia"])
    assert [r["reason"] for r in res.records] == [None, "duplicate_question", "unparsable", "answer_not_in_options"]
    assert res.summary()["acceptance_rate"] == 0.25


def test_run_qgen_on_tiny_model(reader, corpus, tmp_path):
    cfg = QGenConfig(output_dir=str(tmp_path / "qgen"), max_new_tokens=24, batch_size=4)
    s = run_qgen(cfg, reader=reader, passages=list(corpus)[:4], progress=False)
    assert set(s["rejected"]) == set(REJECTION_REASONS)
    # 24 tokens of a random model are never a question with four options and an answer line: one generation
    # per passage, each rejected as unparsable, none written as a question
    assert s["generated"] == 4 and s["accepted"] == 0 and s["questions_file"] is None
    assert s["rejected"] == {r: 4 if r == "unparsable" else 0 for r in REJECTION_REASONS}
    rejected = [json.loads(r) for r in (tmp_path / "qgen" / "rejected.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rejected] == ["unparsable"] * 4
    assert 4 <= s["generated_tokens"] <= 4 * 24  # at least one token each, at most max_new_tokens
    # the tiny Llama has 1,591,456 parameters: embeddings 49,152 x 32 = 1,572,864 (tied with the LM head), per
    # layer q 32x32 + k 32x16 + v 32x16 + o 32x32 + gate, up, down 3 x 32x64 + 2 norms x 32 = 9,280, 2 layers,
    # final norm 32; the estimate is 2 FLOPs per parameter per token
    assert s["flops_est"] == 2 * 1_591_456 * s["tokens"]


def test_run_qgen_writes_loadable_questions(reader, tmp_path):
    cfg = QGenConfig(output_dir=str(tmp_path / "q2"))
    s = run_qgen(cfg, reader=reader, passages=[Passage("p1", PASSAGE)], progress=False,
                 generate_fn=lambda prompts: [GOOD] * len(prompts))
    (ex,) = load_qa("jmlr", s["questions_file"])
    assert ex.gold_passage_ids == ["p1"] and ex.options[ex.answer] == "Ankle oedema"
    assert json.loads((tmp_path / "q2" / "summary.json").read_text())["accepted"] == 1
