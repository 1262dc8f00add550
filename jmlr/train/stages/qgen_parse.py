"""Parsing of generated MCQs: ``Question: / A. ... D. / Answer:`` text into a :class:`ParsedMCQ`, tolerant of
the ways LMs deviate (bold markers, ``(A)``, an ``Options:`` header, ``Answer: B. text``)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from jmlr.data.types import LETTERS  # a generated MCQ has four options: LETTERS[:4]
from jmlr.reader.parse import parse_answer

__all__ = ["LETTERS", "ParsedMCQ", "parse_mcq"]


@dataclass
class ParsedMCQ:
    """A generation parsed into its parts (not yet validated)."""

    question: str
    options: dict[str, str]
    answer_raw: str


_Q = re.compile(r"^\s*(?:\*\*)?(?:question|q)\s*(?:\d+)?\s*[:.)]\s*(?:\*\*)?\s*(.*)$", re.IGNORECASE)
_OPT = re.compile(r"^\s*(?:\*\*)?[\(\[]?([A-Za-z])(?:[\)\]]|\s*[.:)])(?:\*\*)?\s*(.*)$")
_OPTIONS_HEADER = re.compile(r"^\s*(?:\*\*)?(?:options|choices)\s*:?\s*(?:\*\*)?\s*$", re.IGNORECASE)
_ANS = re.compile(r"^\s*(?:\*\*)?(?:correct\s+|final\s+)?answer(?:\s+is)?\s*[:\-]?(?:\*\*)?\s*(.*)$", re.IGNORECASE)


def parse_mcq(text: str, assume_question: bool = False) -> ParsedMCQ | None:
    """Parse ``Question: ... / A. .. D. ... / Answer: X`` (``None`` if the text does not follow the format).

    Lenient on what models vary (a preamble before ``Question:``, ``A)``, ``(A)``, ``A:``, ``**Answer:** B``,
    blank lines, a question spread over several lines) and strict on the substance: the question is non-empty, the options are exactly
    A, B, C, D in that order, each non-empty, and an ``Answer`` line follows them. Text after the answer
    line is ignored.

    Args:
        text: the generation.
        assume_question: the prompt already ended with ``Question:``, so the text starts with the question.
    """
    if not isinstance(text, str):
        return None
    lines = [ln.rstrip() for ln in text.replace("\r\n", "\n").split("\n")]
    i, n = 0, len(lines)
    q_parts: list[str] = []
    if assume_question:
        lines[0] = "Question: " + lines[0] if lines else "Question:"
    while i < n and not _Q.match(lines[i]):  # skip a preamble ("Here is a question:")
        i += 1
    if i >= n:
        return None
    m = _Q.match(lines[i])
    if m.group(1).strip():
        q_parts.append(m.group(1).strip())
    i += 1
    while i < n and not _OPT.match(lines[i]) and not _ANS.match(lines[i]):
        if lines[i].strip():
            q_parts.append(lines[i].strip())
        i += 1
    options: dict[str, str] = {}
    while i < n:
        ln = lines[i]
        if not ln.strip():
            i += 1
            continue
        if _ANS.match(ln):
            break
        if not options and _OPTIONS_HEADER.match(ln):  # "Options:" before the first option
            i += 1
            continue
        m = _OPT.match(ln)
        if len(options) == 4:  # after D: a fifth option is an error; other text (an explanation) is skipped
            if m and m.group(1).upper() == "E":
                return None
            i += 1
            continue
        if not m or m.group(1).upper() != LETTERS[len(options)]:
            if options and not m:  # a wrapped line of the previous option
                last = list(options)[-1]
                options[last] = (options[last] + " " + ln.strip()).strip()
                i += 1
                continue
            return None  # options out of order, a fifth letter, or text where options should be
        options[m.group(1).upper()] = m.group(2).strip()
        i += 1
    question = " ".join(q_parts).strip()
    if not question or len(options) != 4 or any(not v for v in options.values()) or i >= n:
        return None
    m = _ANS.match(lines[i])
    if not m:
        return None
    answer_raw = m.group(1).strip()
    if not answer_raw and i + 1 < n:
        answer_raw = lines[i + 1].strip()
    if not answer_raw:
        return None
    return ParsedMCQ(question=question, options=options, answer_raw=answer_raw)


def _resolve_answer(answer_raw: str, options: dict[str, str]) -> str | None:
    """The option letter the answer line names (letter or option text), else ``None``."""

    m = re.match(r"^[\(\[]?([A-Za-z])[\)\]]?(?:[.:)]|\s|$)", answer_raw.strip())
    if m and (len(answer_raw.strip()) == 1 or not answer_raw.strip()[1:2].isalpha()):
        letter = m.group(1).upper()
        return letter if letter in options else None
    return parse_answer(answer_raw, options)

