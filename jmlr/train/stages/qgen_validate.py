"""Validation of a parsed MCQ against its passage: the rejection reasons, in the order they are tried, and
the two measures behind them (answer support, copied question)."""
from __future__ import annotations

import re

from jmlr.data.text import CJK_CHAR, words

from .qgen_parse import ParsedMCQ, _resolve_answer

__all__ = ["REJECTION_REASONS", "answer_support", "copy_ratio", "validate_mcq"]

REJECTION_REASONS = ("unparsable", "duplicate_options", "answer_not_in_options", "copies_passage",
                     "answer_not_supported", "duplicate_question")

_STOP = frozenset("""a an the of in on at to for from by with without and or but not no nor is are was were be been
being it its this that these those as than then which who whom whose what when where why how do does did done
has have had having can could may might must shall should will would very more most less least such same other
into onto over under after before about above below between during per via each any all both either neither
only also there their they them he she his her him i we you your our us one""".split())
_CJK = re.compile(CJK_CHAR)


def _tokens(text: str) -> list[str]:
    """:func:`jmlr.data.text.words` (NFKC, casefold, ``\\w+``), with CJK characters as tokens of their own
    (no spaces to split on)."""
    out = []
    for w in words(text):
        if _CJK.search(w):
            buf = ""
            for ch in w:
                if _CJK.match(ch):
                    if buf:
                        out.append(buf)
                        buf = ""
                    out.append(ch)
                else:
                    buf += ch
            if buf:
                out.append(buf)
        else:
            out.append(w)
    return out


def _norm(text: str) -> str:
    return " ".join(_tokens(text))


def answer_support(answer_text: str, passage: str) -> float:
    """Fraction of the answer's content tokens (stopwords dropped, unless nothing else is left) found in the
    passage; 0.0 for an answer with no tokens."""
    toks = _tokens(answer_text)
    content = [t for t in toks if t not in _STOP] or toks
    if not content:
        return 0.0
    have = set(_tokens(passage))
    return sum(t in have for t in content) / len(content)


def copy_ratio(question: str, passage: str) -> float:
    """Length of the longest contiguous token run shared by question and passage, over the question's length."""
    q, p = _tokens(question), _tokens(passage)
    if not q or not p:
        return 0.0
    best, prev = 0, [0] * (len(p) + 1)
    for a in q:  # longest common substring over tokens, O(|q|*|p|)
        cur = [0] * (len(p) + 1)
        for j, b in enumerate(p, 1):
            if a == b:
                cur[j] = prev[j - 1] + 1
                if cur[j] > best:
                    best = cur[j]
        prev = cur
    return best / len(q)


def validate_mcq(parsed: ParsedMCQ | None, passage: str, min_support: float = 0.5, max_copy: float = 0.8,
                 seen_questions: set[str] | None = None) -> tuple[str | None, str | None]:
    """``(answer_letter, None)`` for a valid question, else ``(None, reason)`` with reason in
    :data:`REJECTION_REASONS`. ``seen_questions`` (normalised texts) catches duplicates; the caller adds
    accepted questions to it."""
    if parsed is None:
        return None, "unparsable"
    normed = [_norm(v) for v in parsed.options.values()]
    if len(set(normed)) != len(normed):
        return None, "duplicate_options"
    letter = _resolve_answer(parsed.answer_raw, parsed.options)
    if letter is None:
        return None, "answer_not_in_options"
    if len(_tokens(parsed.question)) >= 4 and copy_ratio(parsed.question, passage) >= max_copy:
        return None, "copies_passage"
    if answer_support(parsed.options[letter], passage) < min_support:
        return None, "answer_not_supported"
    if seen_questions is not None and _norm(parsed.question) in seen_questions:
        return None, "duplicate_question"
    return letter, None


