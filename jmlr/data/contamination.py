"""Eval-set leakage check: which questions' text already sits in the retrieval corpus?"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

from .text import word_ngrams
from .types import Passage, QAExample


@dataclass
class QuestionOverlap:
    """Overlap of one question with the corpus.

    Attributes:
        id: the question's id.
        overlap: fraction of the question's word n-grams found anywhere in the corpus (0..1).
        passage_id: the passage sharing the most n-grams with the question (``None`` if none shares any).
        passage_overlap: fraction of the question's n-grams found in that one passage.
        n_ngrams: how many distinct n-grams the question has (0 when shorter than n words).
    """

    id: str
    overlap: float
    passage_id: str | None
    passage_overlap: float
    n_ngrams: int


@dataclass
class ContaminationReport:
    """Per-question overlap and the questions at or above ``threshold``.

    ``flagged`` lists the ids whose ``overlap >= threshold`` (and > 0), highest first. ``str(report)``
    gives a short human summary; ``to_dict()`` a JSON-ready dict.
    """

    n: int
    threshold: float
    include_options: bool
    corpus_size: int
    questions: list[QuestionOverlap] = field(default_factory=list)

    @property
    def flagged(self) -> list[str]:
        hits = [q for q in self.questions if q.overlap > 0 and q.overlap >= self.threshold]
        return [q.id for q in sorted(hits, key=lambda q: (-q.overlap, q.id))]

    @property
    def rate(self) -> float:
        """Fraction of questions flagged."""
        return len(self.flagged) / len(self.questions) if self.questions else 0.0

    def by_id(self) -> dict[str, QuestionOverlap]:
        return {q.id: q for q in self.questions}

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "threshold": self.threshold, "include_options": self.include_options,
                "corpus_size": self.corpus_size, "num_questions": len(self.questions),
                "num_flagged": len(self.flagged), "rate": self.rate, "flagged": self.flagged,
                "questions": [asdict(q) for q in self.questions]}

    def __str__(self) -> str:
        lines = [f"contamination ({self.n}-gram, threshold {self.threshold:g}): {len(self.flagged)} of "
                 f"{len(self.questions)} questions flagged ({100 * self.rate:.1f}%) against {self.corpus_size} passages"]
        byid = self.by_id()
        for qid in self.flagged[:10]:
            q = byid[qid]
            lines.append(f"  {qid}: {100 * q.overlap:.0f}% of {q.n_ngrams} n-grams; best passage {q.passage_id} "
                         f"({100 * q.passage_overlap:.0f}%)")
        if len(self.flagged) > 10:
            lines.append(f"  ... and {len(self.flagged) - 10} more")
        return "\n".join(lines)


def _question_text(ex: QAExample | str, include_options: bool) -> tuple[str, str]:
    if isinstance(ex, str):
        return "", ex
    text = ex.question
    if include_options and ex.options:
        text = text + "\n" + "\n".join(ex.options.values())
    return ex.id, text


def contamination(qa: Iterable[QAExample | str], corpus: Iterable[Passage | str], *, n: int = 8,
                  threshold: float = 0.5, include_options: bool = False,
                  progress: bool | None = None) -> ContaminationReport:
    """Report eval questions whose text overlaps the corpus (normalised word ``n``-grams).

    Text is NFKC-normalised, case-folded and split into ``\\w+`` words. For each question, ``overlap``
    is the fraction of its distinct ``n``-grams that occur in some passage (title or text), and
    ``passage_id`` is the passage sharing the most. Questions with fewer than ``n`` words have no
    n-grams and are never flagged. The corpus is streamed once, so it can be large.

    Args:
        qa: examples (or plain question strings, given ids ``"0"``, ``"1"``, ...).
        corpus: a :class:`Corpus`, passages, or plain strings.
        n: n-gram length in words (8 by default; 13 is GPT-3's choice, stricter).
        threshold: flag questions with ``overlap >= threshold``.
        include_options: add the option texts to the question text.

    Example::

        report = contamination(load_qa("medqa", path), corpus)
        print(report); report.flagged
    """
    from tqdm.auto import tqdm

    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    qids: list[str] = []
    totals: list[int] = []
    index: dict[tuple[str, ...], list[int]] = {}
    for k, ex in enumerate(qa):
        qid, text = _question_text(ex, include_options)
        qids.append(qid or str(k))
        grams = word_ngrams(text, n)
        totals.append(len(grams))
        for g in grams:
            index.setdefault(g, []).append(k)
    matched: dict[int, set] = {}
    best: dict[int, tuple[int, int]] = {}  # question -> (shared n-grams, passage position)
    pids: dict[int, str] = {}
    keys = index.keys()
    size = len(corpus) if isinstance(corpus, Sequence) else None
    show = (size or 0) > 20_000 if progress is None else progress
    count = 0
    for pos, p in enumerate(tqdm(corpus, total=size, desc="contamination", disable=not show, unit="psg")):
        count += 1
        if isinstance(p, Passage):
            pg = word_ngrams(p.text, n)
            if p.title:
                pg |= word_ngrams(p.title, n)
        else:
            pg = word_ngrams(str(p), n)
        hits = pg & keys
        if not hits:
            continue
        per_q: Counter = Counter()
        for g in hits:
            for qi in index[g]:
                per_q[qi] += 1
                matched.setdefault(qi, set()).add(g)
        for qi, c in per_q.items():
            if c > best.get(qi, (0, -1))[0]:
                best[qi] = (c, pos)
                pids[qi] = p.id if isinstance(p, Passage) else str(pos)
    out = []
    for k, qid in enumerate(qids):
        tot = totals[k]
        m = len(matched.get(k, ()))
        c, _ = best.get(k, (0, -1))
        out.append(QuestionOverlap(id=qid, overlap=m / tot if tot else 0.0, passage_id=pids.get(k),
                                   passage_overlap=c / tot if tot else 0.0, n_ngrams=tot))
    return ContaminationReport(n=n, threshold=threshold, include_options=include_options, corpus_size=count,
                               questions=out)
