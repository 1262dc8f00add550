"""Text normalisation of the data layer: :func:`normalize_for_dedup` (corpus dedup, repeated questions) and the one
word tokenizer :func:`words` (contamination n-grams, qgen validation). The reader's answer matching has its own
rules (``jmlr.reader.parse.normalize_answer``)."""
from __future__ import annotations

import re
import unicodedata

#: one CJK character (kana, CJK ideographs and their extensions A and compatibility forms, Hangul syllables):
#: scripts written without spaces, so tokenizers take each character as a word
CJK_CHAR = r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]"
_WS = re.compile(r"\s+")
_WORD = re.compile(r"\w+")


def normalize_for_dedup(s: str) -> str:
    """Unicode NFKC, case-folded, whitespace runs collapsed to one space, stripped.

    Two passages are exact duplicates for :meth:`Corpus.dedup` when their normalised texts are equal.
    Punctuation is kept: "5 mg." and "5 mg" differ, "Aspirin\\n 5 mg" and "aspirin 5 mg" do not.
    """
    return _WS.sub(" ", unicodedata.normalize("NFKC", s).casefold()).strip()


def words(s: str) -> list[str]:
    """Normalised word tokens: NFKC, case-folded, ``\\w+`` runs (punctuation dropped)."""
    return _WORD.findall(unicodedata.normalize("NFKC", s).casefold())


def word_ngrams(s: str, n: int) -> set[tuple[str, ...]]:
    """The set of normalised word ``n``-grams of ``s`` (empty when ``s`` has fewer than ``n`` words)."""
    w = words(s)
    if len(w) < n:
        return set()
    return set(zip(*(w[i:] for i in range(n))))
