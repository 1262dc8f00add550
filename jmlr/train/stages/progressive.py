"""Progressive cases: related questions on one patient, where later questions see the earlier ones (ECN-QA).

A :class:`ProgressiveCase` is a case stem (the vignette) and an ordered list of multiple-choice questions.
Question ``i``'s prompt carries the stem and questions ``1..i-1`` with their answers, so the reader answers
in the context of what the case has revealed so far. :func:`expand_cases` turns cases into ordinary
:class:`~jmlr.data.QAExample`s whose question text holds that context; every reader template, SFT
(:func:`~jmlr.train.stages.sft.sft_examples_from_qa`) and MCQ evaluation work on them unchanged.

The question text of turn 3 looks like::

    Case: A 58-year-old man presents with ...
    Earlier question 1: Which test should be ordered first?
    Answer 1: B. Troponin
    Earlier question 2: The test is positive. What is the next step?
    Answer 2: D. Coronary angiography
    Current question: Which drug should be added at discharge?

(the reader template then adds ``Question:``, the options and ``Correct Answer:``).

JSONL, one case per line::

    {"case_id": "c1", "stem": "A 58-year-old man ...",
     "questions": [{"question": "...", "options": {"A": "...", ...}, "answer": "B"}, ...]}

Question records take the native QAExample fields (``id`` optional: ``{case_id}-q{i}``).
:func:`evaluate_progressive` scores turn by turn, with the gold history (``history="gold"``, what training
uses) or the model's own earlier answers (``history="predicted"``, the harder deployment setting).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from jmlr.data.types import QAExample
from jmlr.data import DataFormatError, iter_records

__all__ = ["ProgressiveCase", "load_progressive", "progressive_question", "expand_case", "expand_cases",
           "evaluate_progressive"]

_CASE = "a case record {case_id, stem, questions: [{question, options, answer}, ...]}"


@dataclass
class ProgressiveCase:
    """A case stem and its ordered questions (each a :class:`~jmlr.data.QAExample` with an answer)."""

    case_id: str
    stem: str
    questions: list[QAExample] = field(default_factory=list)

    def __post_init__(self):
        if not isinstance(self.case_id, str) or not self.case_id:
            raise ValueError(f"case_id must be a non-empty str, got {self.case_id!r}")
        if not isinstance(self.stem, str) or not self.stem.strip():
            raise ValueError(f"case {self.case_id!r}: stem must be a non-empty text")
        if not self.questions:
            raise ValueError(f"case {self.case_id!r}: no questions")
        for i, q in enumerate(self.questions):
            if not isinstance(q, QAExample):
                raise ValueError(f"case {self.case_id!r}: question {i} is {type(q).__name__}, expected QAExample")


def load_progressive(path) -> list[ProgressiveCase]:
    """Read progressive cases from JSONL (or a JSON array); errors name the file, the line and the question."""

    cases, seen = [], set()
    for where, rec in iter_records(path, _CASE):
        for k in ("case_id", "stem", "questions"):
            if k not in rec:
                raise DataFormatError(path, where, f"missing field {k!r}; expected {_CASE}")
        cid = str(rec["case_id"])
        if cid in seen:
            raise DataFormatError(path, where, f"duplicate case_id {cid!r}")
        seen.add(cid)
        qs = rec["questions"]
        if not isinstance(qs, list) or not qs:
            raise DataFormatError(path, where, f"'questions' must be a non-empty list; expected {_CASE}")
        questions = []
        for i, q in enumerate(qs):
            if not isinstance(q, dict):
                raise DataFormatError(path, where, f"question {i} is a {type(q).__name__}; expected an object")
            q = {"id": f"{cid}-q{i + 1}", **q}
            try:
                ex = QAExample.from_dict(q)
            except (ValueError, TypeError) as e:
                raise DataFormatError(path, where, f"question {i}: {e}") from None
            if ex.answer is None and ex.answer_text is None:
                raise DataFormatError(path, where, f"question {i}: no answer; every turn needs one (later turns "
                                                   "show it)")
            questions.append(ex)
        try:
            cases.append(ProgressiveCase(cid, rec["stem"], questions))
        except ValueError as e:
            raise DataFormatError(path, where, str(e)) from None
    return cases


def _answer_line(q: QAExample, letter: str | None) -> str:
    if q.options:
        if letter is None:
            return "(no answer)"
        return f"{letter}. {q.options[letter]}" if letter in q.options else letter
    return (q.answer_text or "").strip()


def progressive_question(case: ProgressiveCase, i: int, answers: Sequence[str | None] | None = None) -> str:
    """The question text of turn ``i`` (0-based): the stem, turns ``0..i-1`` with answers, then question ``i``.

    Args:
        answers: the letters shown for the earlier turns (default: their gold answers).
    """
    if not 0 <= i < len(case.questions):
        raise ValueError(f"case {case.case_id!r} has {len(case.questions)} questions; turn {i} does not exist")
    lines = [f"Case: {case.stem.strip()}"]
    for j in range(i):
        q = case.questions[j]
        letter = answers[j] if answers is not None else q.answer
        lines.append(f"Earlier question {j + 1}: {q.question.strip()}")
        lines.append(f"Answer {j + 1}: {_answer_line(q, letter)}")
    lines.append("Current question: " + case.questions[i].question.strip())
    return "\n".join(lines)


def expand_case(case: ProgressiveCase, answers: Sequence[str | None] | None = None,
                upto: int | None = None) -> list[QAExample]:
    """One :class:`QAExample` per turn (``upto`` turns), each question carrying the case context.

    The examples keep the original id, options, answer and gold passages; ``metadata`` gains ``case_id``,
    ``turn`` (1-based) and ``original_question``.
    """
    n = len(case.questions) if upto is None else min(upto, len(case.questions))
    out = []
    for i in range(n):
        q = case.questions[i]
        meta = {**q.metadata, "case_id": case.case_id, "turn": i + 1, "original_question": q.question}
        out.append(QAExample(id=q.id, question=progressive_question(case, i, answers), options=dict(q.options),
                             answer=q.answer, gold_passage_ids=list(q.gold_passage_ids), answer_text=q.answer_text,
                             metadata=meta))
    return out


def expand_cases(cases: Sequence[ProgressiveCase]) -> list[QAExample]:
    """All turns of all cases with the gold history, for SFT or gold-history evaluation."""
    return [ex for c in cases for ex in expand_case(c)]


def evaluate_progressive(reader, cases: Sequence[ProgressiveCase], history: str = "gold",
                         passages_fn: Any = None, batch_size: int = 16, progress: bool = False) -> dict:
    """MCQ accuracy over progressive cases, overall and per turn.

    Args:
        reader: a :class:`~jmlr.reader.Reader`; answers are the argmax of ``score_options``.
        cases: the cases (every question multiple-choice).
        history: ``"gold"`` (earlier turns show their gold answers) or ``"predicted"`` (the reader's own
            earlier answers, turn by turn, so an early mistake carries into later prompts).
        passages_fn: optional ``f(list[QAExample]) -> list[list[str]]`` giving passages per prompt.
        batch_size: questions per scoring call.

    Returns:
        ``{"accuracy", "n", "per_turn": {turn: {"accuracy", "n"}}, "case_accuracy" (all turns right),
        "history"}``.
    """
    import torch
    from tqdm.auto import tqdm

    if history not in ("gold", "predicted"):
        raise ValueError(f"history must be 'gold' or 'predicted', got {history!r}")
    for c in cases:
        for q in c.questions:
            if not q.options or q.answer is None:
                raise ValueError(f"case {c.case_id!r}, question {q.id!r}: evaluate_progressive needs labelled MCQs")
    preds: dict[str, list[str]] = {c.case_id: [] for c in cases}
    max_turns = max(len(c.questions) for c in cases)
    per_turn: dict[int, dict] = {}
    for t in tqdm(range(max_turns), desc="turns", disable=not progress):
        active = [c for c in cases if len(c.questions) > t]
        exs = []
        for c in active:
            answers = None if history == "gold" else preds[c.case_id]
            exs.append(expand_case(c, answers=answers, upto=t + 1)[t])
        got: list[str] = []
        for s in range(0, len(exs), batch_size):
            batch = exs[s: s + batch_size]
            passages = passages_fn(batch) if passages_fn is not None else None
            with torch.no_grad():
                got += reader.predict(batch, passages)
        for c, p in zip(active, got):
            preds[c.case_id].append(p)
        correct = sum(p == ex.answer for p, ex in zip(got, exs))
        per_turn[t + 1] = {"accuracy": correct / len(exs), "n": len(exs)}
    n = sum(v["n"] for v in per_turn.values())
    correct = sum(v["accuracy"] * v["n"] for v in per_turn.values())
    whole = sum(all(p == q.answer for p, q in zip(preds[c.case_id], c.questions)) for c in cases)
    return {"accuracy": correct / n if n else 0.0, "n": n, "per_turn": per_turn,
            "case_accuracy": whole / len(cases) if cases else 0.0, "history": history,
            "predictions": preds}
