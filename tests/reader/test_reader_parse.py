"""parse_answer (no fallback letter, ever) and the prompt templates (mcq_accuracy, evaluate_mcq: tests/eval/test_mcq.py)."""
from __future__ import annotations

import random
import string

import pytest
from conftest import Ex

from jmlr.reader import Reader, build_prompt, parse_answer, target_string

OPTS = {"A": "Aspirin", "B": "Heparin", "C": "Warfarin", "D": "None of the above"}

PARSE_CASES = [
    # (text, expected)
    ("B", "B"), ("b", "B"), ("(B)", "B"), ("[C]", "C"), ("B.", "B"), ("**B**", "B"), ("  D  ", "D"),
    ("Answer: B", "B"), ("answer: (C)", "C"), ("The correct answer is (C).", "C"), ("Final answer: D", "D"),
    ("The answer is B because heparin is an anticoagulant.", "B"), ("Correct Answer: A. Aspirin", "A"),
    ("Option D", "D"), ("Option B is wrong, the answer is C", "C"),
    ("B. Heparin", "B"), ("B) Heparin", "B"), ("(C) Warfarin", "C"), ("B: Heparin", "B"), ("B.Heparin", "B"),
    ("heparin", "B"), ("Heparin.", "B"), ("  WARFARIN ", "C"), ("none of the above", "D"),
    ("Answer: heparin", "B"),
    ("B. The answer is B", "B"), ("A patient like this needs heparin, so the answer is B", "B"),
    ("A\nQuestion: next one? Answer: C", None),  # a leading letter contradicting an explicit phrase
    # unparsable or ambiguous -> None, never a default letter
    ("", None), ("   ", None), ("I am not sure.", None), ("The answer is a rash", None),
    ("A patient with fever", None), ("A-fib is likely", None), ("E", None), ("Answer: E", None),
    ("(F)", None), ("Answer: B or Answer: C", None), ("B. Aspirin", None), ("Heparin or warfarin", None),
    ("The drug of choice", None), ("42", None), ("Answer:", None), ("B because", None),
]


@pytest.mark.parametrize("text,expected", PARSE_CASES)
def test_parse_answer_table(text, expected):
    assert parse_answer(text, OPTS) == expected
    assert Reader.parse_answer(text, OPTS) == expected


def test_parse_answer_duplicate_option_texts_are_ambiguous():
    assert parse_answer("aspirin", {"A": "Aspirin", "B": "aspirin.", "C": "x"}) is None
    assert parse_answer("A", {"A": "Aspirin", "B": "aspirin"}) == "A"  # the letter itself is not ambiguous


def test_parse_answer_never_defaults_to_a_letter():
    """Acceptance: on text that names no option, the parser returns None, never a fallback letter."""
    rng = random.Random(0)
    alphabet = string.ascii_lowercase + " .,;:!?0123456789\n"
    for _ in range(500):
        junk = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        got = parse_answer(junk, OPTS)
        # only a lone lower-case letter (e.g. "b") may parse; anything else with no option in it is None
        if got is not None:
            assert junk.strip().strip(".").strip("()[]").upper() == got, junk
    for opts in (OPTS, {"A": "x", "B": "y"}, {"C": "z", "D": "w"}):
        for text in ("", "no idea", "Answer: Z", "Answer: unknown", "???", "The answer is"):
            assert parse_answer(text, opts) is None
    assert parse_answer("B", {}) is None and parse_answer(None, OPTS) is None
    with pytest.raises(ValueError):
        parse_answer(3, OPTS)


def test_jmlr_template_layout_and_passage_order():
    p = build_prompt("jmlr", "Which drug?", {"A": "Aspirin", "B": "Heparin"}, ["first doc", "second doc", "third"])
    assert p == ("Reference [1]: first doc\nReference [2]: second doc\nReference [3]: third\n\n"
                 "Question: Which drug?\nOptions:\nA. Aspirin\nB. Heparin\nCorrect Answer:")
    assert build_prompt("jmlr", "Q?", {"A": "x"}, []) == "Question: Q?\nOptions:\nA. x\nCorrect Answer:"
    assert target_string("jmlr", "B", {"A": "x", "B": "Heparin"}) == " B"
    assert target_string("jmlr", "B", {"A": "x", "B": "Heparin"}, "letter_text") == " B. Heparin"
    assert target_string("chat", "B", {"B": "Heparin"}, "letter_text") == "B. Heparin"
    with pytest.raises(ValueError, match="letter_text"):
        target_string("jmlr", "C", {"A": "x"}, "letter_text")
    with pytest.raises(ValueError, match="unknown target kind"):
        target_string("jmlr", "A", {"A": "x"}, "word")


def test_freetext_and_chat_templates(tiny_tokenizer, tiny_model):
    f = build_prompt("freetext", "How is fever treated?", {}, ["doc one", "doc two"])
    assert f.index("doc one") < f.index("doc two") < f.index("Question:")
    assert f.endswith("Answer:") and "Options" not in f
    assert target_string("freetext", None, {}, answer_text="  Rest and fluids. ") == " Rest and fluids."
    c = build_prompt("chat", "Which drug?", {"A": "Aspirin", "B": "Heparin"}, ["doc one", "doc two"], tiny_tokenizer)
    assert c.startswith("<|im_start|>user\n") and c.endswith("<|im_start|>assistant\n")
    assert c.index("Reference [1]: doc one") < c.index("Reference [2]: doc two") < c.index("Question: Which drug?")
    assert "B. Heparin" in c and "letter" in c
    # free-text answers score through answer_loglik with the freetext template
    reader = Reader(tiny_model, tiny_tokenizer, template="freetext")
    ex = Ex("How is fever treated?", {}, None, id="h1", answer_text="Paracetamol lowers fever.")
    ll = reader.answer_loglik([ex], [["doc one", "doc two"]])
    assert ll.shape == (1, 2) and ll.requires_grad
    assert tiny_tokenizer.decode(reader.encode(ex, ["doc one"]).target_ids) == " Paracetamol lowers fever."
    with pytest.raises(ValueError, match="chat template"):
        build_prompt("chat", "q", {}, [], None)


def test_chat_template_requires_tokenizer_template(tiny_model, tiny_tokenizer):
    saved = tiny_tokenizer.chat_template
    try:
        tiny_tokenizer.chat_template = None
        with pytest.raises(ValueError, match="chat template"):
            Reader(tiny_model, tiny_tokenizer, template="chat")
    finally:
        tiny_tokenizer.chat_template = saved
