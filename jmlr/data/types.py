"""The two records of jmlr's data layer: :class:`Passage` and :class:`QAExample`."""
from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any

LETTERS = string.ascii_uppercase  # option letters, in order
_QA_FIELDS = ("id", "question", "options", "answer", "gold_passage_ids", "answer_text", "metadata")


@dataclass(frozen=True, slots=True)
class Passage:
    """One retrievable unit of text.

    Attributes:
        id: stable, unique id within its corpus.
        text: the passage body.
        title: optional title (document name, section label); the doc encoder sees ``"title. text"``.
    """

    id: str
    text: str
    title: str = ""

    def __post_init__(self):
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"Passage id must be a non-empty str, got {self.id!r}")
        if not isinstance(self.text, str):
            raise ValueError(f"Passage {self.id!r}: text must be a str, got {type(self.text).__name__}")
        if not isinstance(self.title, str):
            raise ValueError(f"Passage {self.id!r}: title must be a str, got {type(self.title).__name__}")

    def full_text(self) -> str:
        """The string a document encoder sees: ``"title. text"`` (just ``text`` without a title)."""
        return join_title(self.title, self.text)

    def to_dict(self) -> dict[str, str]:
        d = {"id": self.id, "title": self.title, "text": self.text}
        if not self.title:
            del d["title"]
        return d


def join_title(title: str, text: str) -> str:
    """``"title. text"``; no doubled punctuation when the title already ends a sentence."""
    if not title:
        return text
    t = title.rstrip()
    return f"{t} {text}" if t[-1:] in ".!?:;" else f"{t}. {text}"


def normalize_options(options: Any) -> dict[str, str]:
    """Options as ``{"A": text, "B": text, ...}`` in letter order.

    Accepts a dict keyed by letters (any case, any order, but consecutive from "A"), a list of
    strings, or a list of ``{"key": letter, "value": text}`` dicts (as some MedQA releases ship).
    Raises ``ValueError`` saying what was expected.
    """
    if options is None:
        return {}
    if isinstance(options, (list, tuple)):
        if options and all(isinstance(o, dict) and "key" in o and "value" in o for o in options):
            options = {str(o["key"]): o["value"] for o in options}
        else:
            if len(options) > len(LETTERS):
                raise ValueError(f"{len(options)} options; at most {len(LETTERS)} are supported")
            options = {LETTERS[i]: o for i, o in enumerate(options)}
    if not isinstance(options, dict):
        raise ValueError(f"options must be a dict {{letter: text}} or a list of texts, got {type(options).__name__}")
    out: dict[str, str] = {}
    for k, v in options.items():
        key = str(k).strip().upper()
        if len(key) != 1 or key not in LETTERS:
            raise ValueError(f"option key {k!r} is not a letter; expected letters A, B, C, ...")
        if key in out:
            raise ValueError(f"option letter {key!r} appears twice")
        if not isinstance(v, str):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                v = str(v)
            else:
                raise ValueError(f"option {key}: expected a text, got {type(v).__name__} {v!r}")
        out[key] = v
    keys = sorted(out)
    expected = list(LETTERS[: len(keys)])
    if keys != expected:
        raise ValueError(f"option letters {keys} are not consecutive from A; expected {expected}")
    return {k: out[k] for k in keys}


@dataclass(slots=True)
class QAExample:
    """One question.

    Attributes:
        id: unique id within its data set.
        question: the question text (for MCQ, the stem without the options).
        options: ``{"A": text, "B": text, ...}`` in letter order; ``{}`` for free-text QA.
        answer: the correct letter (one of ``options``), or ``None`` when unlabelled or free-text.
        gold_passage_ids: ids of passages known to support the answer (e.g. MedMCQA's explanation).
        answer_text: the reference answer of free-text QA (Huatuo); ``None`` for MCQ.
        metadata: anything else the source carries (subject, year, ...).
    """

    id: str
    question: str
    options: dict[str, str] = field(default_factory=dict)
    answer: str | None = None
    gold_passage_ids: list[str] = field(default_factory=list)
    answer_text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.id, int) and not isinstance(self.id, bool):
            self.id = str(self.id)
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"id must be a non-empty str, got {self.id!r}")
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError(f"example {self.id!r}: question must be a non-empty str, got {self.question!r}")
        try:
            self.options = normalize_options(self.options)
        except ValueError as e:
            raise ValueError(f"example {self.id!r}: {e}") from None
        if len(self.options) == 1:
            raise ValueError(f"example {self.id!r}: a single option {self.options}; expected at least 2 "
                             "(or none, for free-text QA)")
        if self.answer is not None:
            if not isinstance(self.answer, str):
                raise ValueError(f"example {self.id!r}: answer must be an option letter (str), got {self.answer!r}")
            ans = self.answer.strip().upper()
            if not self.options:
                raise ValueError(f"example {self.id!r}: answer {self.answer!r} given but there are no options; "
                                 "free-text QA puts its answer in answer_text")
            if ans not in self.options:
                raise ValueError(f"example {self.id!r}: answer {self.answer!r} is not an option; "
                                 f"expected one of {list(self.options)}")
            self.answer = ans
        if self.gold_passage_ids is None:
            self.gold_passage_ids = []
        if not isinstance(self.gold_passage_ids, list) or not all(isinstance(g, str) for g in self.gold_passage_ids):
            raise ValueError(f"example {self.id!r}: gold_passage_ids must be a list of str, got {self.gold_passage_ids!r}")
        if self.answer_text is not None and not isinstance(self.answer_text, str):
            raise ValueError(f"example {self.id!r}: answer_text must be a str or None, got {type(self.answer_text).__name__}")
        if self.metadata is None:
            self.metadata = {}
        if not isinstance(self.metadata, dict):
            raise ValueError(f"example {self.id!r}: metadata must be a dict, got {type(self.metadata).__name__}")

    @property
    def is_mcq(self) -> bool:
        """True for multiple-choice examples (they have options)."""
        return bool(self.options)

    @property
    def answer_option_text(self) -> str | None:
        """The text of the correct option (MCQ), else ``answer_text``."""
        if self.answer is not None:
            return self.options[self.answer]
        return self.answer_text

    def to_dict(self) -> dict[str, Any]:
        """The native ``jmlr`` JSONL record (all fields, JSON-serialisable if metadata is)."""
        return {
            "id": self.id,
            "question": self.question,
            "options": dict(self.options),
            "answer": self.answer,
            "gold_passage_ids": list(self.gold_passage_ids),
            "answer_text": self.answer_text,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QAExample":
        """Inverse of :meth:`to_dict`. Unknown keys raise ``ValueError`` (they are usually typos)."""
        unknown = sorted(set(d) - set(_QA_FIELDS))
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}; expected only {list(_QA_FIELDS)}")
        missing = [k for k in ("id", "question") if k not in d]
        if missing:
            raise ValueError(f"missing field(s) {missing}; expected at least 'id' and 'question'")
        return cls(**d)
