"""Parse a generated answer into an option letter, with NO fallback letter.

:func:`parse_answer` returns the letter the text commits to, or ``None`` when the text is unparsable or
ambiguous. It never guesses: callers count ``None`` as a wrong answer and report how many there were
(see :func:`jmlr.eval.mcq.mcq_accuracy`). A parser that silently falls back to "A" inflates accuracy on
benchmarks whose gold letters are not uniform and hides a broken prompt, so this one refuses.

Rules, tried in order (the first rule that finds anything decides):

1. **An explicit answer phrase**: ``answer``/``correct answer``/``answer is`` followed by an optional ``:``
   or ``-`` and a letter, bracketed or not (``"Answer: B"``, ``"The correct answer is (C)."``); when no such
   phrase names a letter, ``option``/``choice`` + letter (``"Option D"``). The keyword is case-insensitive;
   the letter must be upper case (so ``"the answer is a rash"`` finds nothing). If the phrases name two
   different letters, or a letter that is not an option, or contradict a leading letter (``"A ... Answer:
   C"``), the answer is ambiguous: ``None``.
2. **A leading letter**: the whole text is a letter (``"B"``, ``"b"``, ``"(B)"``, ``"B."``, ``"**B**"``), or it
   starts with a bracketed letter (``"(B) text"``) or a letter followed by ``.``, ``)``, ``:`` or a spaced
   `` - `` (``"B. Aspirin"``). A letter followed by a plain space is NOT taken (``"A patient ..."`` is prose,
   so is ``"A-fib"``).
   If the text after the letter is exactly another option's text, the answer is ambiguous: ``None``.
3. **The option text itself**: the text (after stripping an ``Answer:`` prefix) equals exactly one option's
   text after normalisation (case, surrounding punctuation, repeated whitespace). Two options with the same
   normalised text make it ambiguous: ``None``.

A letter that is not one of ``options`` is never returned. Anything else returns ``None``.
"""
from __future__ import annotations

import re
import string
from collections.abc import Mapping

__all__ = ["parse_answer", "normalize_answer"]

# "answer", "correct answer", "final answer", "answer is", "option", "choice" + optional ":"/"-" + letter.
_EXPLICIT_TAIL = r"(?:\s+(?:is|would\s+be|will\s+be|should\s+be))?)\s*[:\-]?\s*[\(\[]?([A-Z])(?![A-Za-z0-9])"
_EXPLICIT_ANSWER = re.compile(r"(?i:\banswer\b" + _EXPLICIT_TAIL)
_EXPLICIT_OPTION = re.compile(r"(?i:\b(?:option|choice)\b" + _EXPLICIT_TAIL)
# The whole text is one letter, possibly bracketed and/or followed by a full stop.
_WHOLE = re.compile(r"^[\(\[]?([A-Za-z])[\)\]]?\.?$")
# A bracketed letter at the start, or a letter followed by a delimiter.
_LEADING = re.compile(r"^(?:[\(\[]([A-Z])[\)\]]|([A-Z])(?:\s*[\.\):]|\s+-(?=\s)))\s*(.*)$", re.DOTALL)
_ANSWER_PREFIX = re.compile(r"^(?i:(?:the\s+)?(?:correct\s+|final\s+)?answer(?:\s+is)?)\s*[:\-]?\s*")
_PUNCT = string.punctuation + "\u2018\u2019\u201c\u201d"


def normalize_answer(text: str) -> str:
    """Lower-case, collapse whitespace, strip surrounding punctuation and markdown emphasis: the text an
    answer is matched by (rule 3). Not the data layer's :func:`jmlr.data.text.normalize_for_dedup`, which
    keeps punctuation."""
    text = text.replace("*", " ").replace("_", " ")
    text = " ".join(text.split()).lower()
    return text.strip(_PUNCT + " ")


def _option_matches(text: str, options: Mapping[str, str]) -> list[str]:
    norm = normalize_answer(text)
    if not norm:
        return []
    return [letter for letter, opt in options.items() if normalize_answer(str(opt)) == norm]


def _leading_letter(body: str) -> str | None:
    """The letter rule 2 would read at the start of ``body`` (upper case), or None."""
    first = body.split("\n", 1)[0].strip()
    m = _WHOLE.match(first)
    if m:
        return m.group(1).upper()
    m = _LEADING.match(body)
    return (m.group(1) or m.group(2)) if m else None


def parse_answer(text: str | None, options: Mapping[str, str] | None) -> str | None:
    """Return the option letter ``text`` commits to, or ``None`` when unparsable or ambiguous.

    Args:
        text: a generated answer, e.g. ``"B"``, ``"(B)"``, ``"Answer: B"``, ``"B. Aspirin"`` or ``"Aspirin"``.
        options: the question's options, letter -> text (``{"A": "...", "B": "..."}``). The letters it holds
            are the only ones that can be returned.

    Returns:
        One of ``options``' letters, or ``None``. There is deliberately no default letter.

    Example:
        >>> opts = {"A": "Aspirin", "B": "Heparin"}
        >>> parse_answer("The correct answer is (B).", opts)
        'B'
        >>> parse_answer("heparin", opts)
        'B'
        >>> parse_answer("I am not sure.", opts) is None
        True
    """
    if text is None or not options:
        return None
    if not isinstance(text, str):
        raise ValueError(f"parse_answer expects a string, got {type(text).__name__}")
    letters = {str(k).strip().upper(): str(k) for k in options}
    body = text.strip().replace("**", "")
    if not body:
        return None

    # 1. explicit answer phrases anywhere in the text
    found = [m.group(1) for m in _EXPLICIT_ANSWER.finditer(body)]
    if not found:  # "option B" / "choice B" only when no "answer ..." phrase names a letter
        found = [m.group(1) for m in _EXPLICIT_OPTION.finditer(body)]
    leading = _leading_letter(body)
    if found:
        if len(set(found)) != 1 or found[0] not in letters:
            return None  # two different letters named, or a letter that is not an option
        if leading is not None and leading != found[0]:
            return None  # "A ... Answer: C": contradictory
        return letters[found[0]]

    # 2. a leading letter
    m = _WHOLE.match(body)
    if m:
        return letters.get(m.group(1).upper())
    m = _LEADING.match(body)
    if m:
        letter = m.group(1) or m.group(2)
        if letter not in letters:
            return None
        rest = m.group(3).strip().split("\n", 1)[0]
        if rest:
            matched = _option_matches(rest, options)
            if matched and letters[letter] not in matched:
                return None  # "B. <text of option A>": contradictory
        return letters[letter]

    # 3. the option text itself (first line, an "Answer:" prefix removed)
    first = _ANSWER_PREFIX.sub("", body.split("\n", 1)[0]).strip()
    matched = _option_matches(first, options)
    if len(matched) == 1:
        return matched[0]
    return None
