"""What a QA file holds at a glance: ``jmlr data inspect FILE --format F`` prints :func:`format_summary`."""
from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

from .text import normalize_for_dedup
from .types import QAExample

UNLABELLED = "none"


def inspect_summary(examples: Sequence[QAExample]) -> dict[str, Any]:
    """Counts that tell whether a QA file loaded as intended.

    Returns a JSON-ready dict: ``count``; ``mcq`` / ``free_text``; ``option_counts`` (number of options ->
    examples); ``answer_letters`` (letter -> examples, ``"none"`` for unlabelled); ``with_gold_passages``;
    ``question_chars`` (min/mean/max); ``duplicate_questions`` (same text after normalisation);
    ``metadata_keys``; ``example`` (the first example as a dict).
    """
    examples = list(examples)
    n = len(examples)
    opt = Counter(len(e.options) for e in examples)
    ans = Counter(e.answer if e.answer is not None else UNLABELLED for e in examples if e.options)
    lengths = [len(e.question) for e in examples]
    norm = Counter(normalize_for_dedup(e.question) for e in examples)
    meta = Counter(k for e in examples for k in e.metadata)
    letters = sorted(k for k in ans if k != UNLABELLED)
    return {
        "count": n,
        "mcq": sum(1 for e in examples if e.options),
        "free_text": sum(1 for e in examples if not e.options),
        "option_counts": {str(k): opt[k] for k in sorted(opt)},
        "answer_letters": {**{k: ans[k] for k in letters}, **({UNLABELLED: ans[UNLABELLED]} if ans[UNLABELLED] else {})},
        "with_gold_passages": sum(1 for e in examples if e.gold_passage_ids),
        "gold_passages": sum(len(e.gold_passage_ids) for e in examples),
        "with_answer_text": sum(1 for e in examples if e.answer_text),
        "question_chars": {"min": min(lengths), "mean": round(sum(lengths) / n, 1), "max": max(lengths)} if n else {},
        "duplicate_questions": sum(c - 1 for c in norm.values() if c > 1),
        "metadata_keys": dict(meta.most_common()),
        "example": examples[0].to_dict() if examples else None,
    }


def _hist(d: dict[str, int], total: int) -> str:
    if not d:
        return "-"
    return ", ".join(f"{k}: {v} ({100 * v / total:.1f}%)" if total else f"{k}: {v}" for k, v in d.items())


def _short(s: Any, width: int = 160) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= width else s[: width - 3] + "..."


def format_summary(summary: dict[str, Any]) -> str:
    """A human-readable block for :func:`inspect_summary`'s dict."""
    n = summary.get("count", 0)
    lines = [f"examples:            {n}"]
    if n:
        lines.append(f"multiple-choice:     {summary['mcq']}    free-text: {summary['free_text']}")
        if summary["mcq"]:
            lines.append(f"option counts:       {_hist(summary['option_counts'], n)}")
            lines.append(f"answer letters:      {_hist(summary['answer_letters'], summary['mcq'])}")
        lines.append(f"with gold passages:  {summary['with_gold_passages']} ({summary['gold_passages']} passage ids)")
        if summary.get("with_answer_text"):
            lines.append(f"with answer text:    {summary['with_answer_text']}")
        qc = summary["question_chars"]
        lines.append(f"question length:     {qc['min']} / {qc['mean']} / {qc['max']} chars (min / mean / max)")
        lines.append(f"duplicate questions: {summary['duplicate_questions']}")
        if summary["metadata_keys"]:
            lines.append("metadata keys:       " + ", ".join(f"{k} ({v})" for k, v in summary["metadata_keys"].items()))
        ex = summary.get("example")
        if ex:
            lines.append("first example:")
            lines.append(f"  id:       {ex['id']}")
            lines.append(f"  question: {_short(ex['question'])}")
            for k, v in ex["options"].items():
                mark = "*" if k == ex["answer"] else " "
                lines.append(f"  {mark}{k}. {_short(v, 100)}")
            if ex.get("answer_text"):
                lines.append(f"  answer:   {_short(ex['answer_text'])}")
            if ex.get("gold_passage_ids"):
                lines.append(f"  gold:     {', '.join(ex['gold_passage_ids'][:5])}"
                             + (" ..." if len(ex["gold_passage_ids"]) > 5 else ""))
    return "\n".join(lines)
