"""Multiple-choice accuracy, with unparsed answers counted as wrong and reported.

:func:`mcq_accuracy` scores predicted letters against gold letters. A prediction of ``None`` (a generated
answer that :func:`jmlr.reader.parse_answer` could not read) is WRONG, and is counted separately under
``unparsed`` so that a broken prompt or parser shows up instead of hiding behind a fallback letter.

:func:`evaluate_mcq` runs a :class:`jmlr.reader.Reader` over examples, either by option scoring (the letter
with the highest log-likelihood; always a letter) or by generation + parsing.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from jmlr.reader.parse import parse_answer

__all__ = ["mcq_accuracy", "evaluate_mcq", "UNPARSED"]

UNPARSED = "unparsed"


def mcq_accuracy(preds: Sequence[str | None], golds: Sequence[str]) -> dict:
    """Accuracy of predicted option letters; ``None`` predictions count as wrong and as ``unparsed``.

    Args:
        preds: predicted letters, ``None`` where the answer could not be parsed.
        golds: gold letters (no ``None``: unlabelled examples cannot be scored).

    Returns:
        ``{"accuracy", "n", "correct", "unparsed", "unparsed_rate", "confusion", "pred_counts",
        "per_letter_accuracy"}`` where ``confusion[gold][pred]`` counts predictions per gold letter
        (``pred`` is ``"unparsed"`` for ``None``), ``pred_counts`` shows letter bias and
        ``per_letter_accuracy[gold]`` is the accuracy on questions whose gold letter is ``gold``.

    Example:
        >>> m = mcq_accuracy(["A", None, "C"], ["A", "B", "B"])
        >>> (m["accuracy"], m["unparsed"], m["confusion"]["B"])
        (0.3333333333333333, 1, {'unparsed': 1, 'C': 1})
    """
    if len(preds) != len(golds):
        raise ValueError(f"got {len(preds)} predictions but {len(golds)} gold answers")
    for i, g in enumerate(golds):
        if not isinstance(g, str) or not g:
            raise ValueError(f"gold answer {i} is {g!r}; expected an option letter (unlabelled examples cannot be scored)")
    for i, p in enumerate(preds):
        if p is not None and not isinstance(p, str):
            raise ValueError(f"prediction {i} is {type(p).__name__}; expected a letter string or None")
    n = len(golds)
    correct = sum(1 for p, g in zip(preds, golds) if p is not None and p == g)
    unparsed = sum(1 for p in preds if p is None)
    confusion: dict[str, dict[str, int]] = {}
    for p, g in zip(preds, golds):
        row = confusion.setdefault(g, {})
        key = UNPARSED if p is None else p
        row[key] = row.get(key, 0) + 1
    gold_counts = Counter(golds)
    per_letter = {g: confusion[g].get(g, 0) / gold_counts[g] for g in sorted(confusion)}
    return {
        "accuracy": correct / n if n else 0.0,
        "n": n,
        "correct": correct,
        "unparsed": unparsed,
        "unparsed_rate": unparsed / n if n else 0.0,
        "confusion": {g: confusion[g] for g in sorted(confusion)},
        "pred_counts": dict(sorted(Counter(UNPARSED if p is None else p for p in preds).items())),
        "per_letter_accuracy": per_letter,
    }


def evaluate_mcq(
    reader: Any,
    examples: Sequence[Any],
    passages: Sequence[Sequence[str]] | None = None,
    batch_size: int = 8,
    progress: bool = True,
    mode: str = "score",
    max_new_tokens: int = 16,
) -> dict:
    """Accuracy of ``reader`` on MCQ ``examples``, with ``passages[i]`` (all of them) in example ``i``'s prompt.

    Args:
        reader: a :class:`jmlr.reader.Reader`.
        examples: objects with ``.question``, ``.options`` and a gold ``.answer`` letter.
        passages: one list of passage strings per example, or ``None`` (closed book).
        batch_size: questions per forward / per ``generate`` call.
        progress: show a tqdm bar.
        mode: ``"score"`` (argmax of :meth:`Reader.score_options`; always a letter) or ``"generate"``
            (greedy generation parsed by :func:`jmlr.reader.parse_answer`; unparsable answers are wrong).
        max_new_tokens: the generation length in ``"generate"`` mode.

    Returns:
        :func:`mcq_accuracy`'s dict plus ``"mode"``, ``"predictions"`` (letters or ``None``) and, in generate
        mode, ``"generations"`` (the raw texts) and ``"unparsed_ids"`` (ids of the unparsed examples).
    """
    import torch
    from tqdm.auto import tqdm

    if mode not in ("score", "generate"):
        raise ValueError(f"unknown mode {mode!r}; expected 'score' or 'generate'")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if passages is not None and len(passages) != len(examples):
        raise ValueError(f"got {len(examples)} examples but {len(passages)} passage lists")
    golds = []
    for i, ex in enumerate(examples):
        ans, opts = getattr(ex, "answer", None), getattr(ex, "options", None)
        if not opts:
            raise ValueError(f"example {i} (id {getattr(ex, 'id', None)!r}) has no options; evaluate_mcq needs MCQ")
        if ans not in opts:
            raise ValueError(f"example {i} (id {getattr(ex, 'id', None)!r}): gold answer {ans!r} is not one of "
                             f"its options {list(opts)}")
        golds.append(ans)

    preds: list[str | None] = []
    generations: list[str] = []
    starts = range(0, len(examples), batch_size)
    for s in tqdm(starts, desc=f"eval mcq ({mode})", disable=not progress, total=len(starts)):
        exs = list(examples[s: s + batch_size])
        ps = None if passages is None else [list(p) for p in passages[s: s + batch_size]]
        if mode == "score":
            with torch.no_grad():
                preds.extend(reader.predict(exs, ps, mode="score"))
        else:
            prompts = reader.format_prompts(exs, ps, reserve_tokens=max_new_tokens)
            texts = reader.generate(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
            generations.extend(texts)
            preds.extend(parse_answer(t, ex.options) for t, ex in zip(texts, exs))

    result = mcq_accuracy(preds, golds)
    result["mode"] = mode
    result["predictions"] = preds
    if mode == "generate":
        result["generations"] = generations
        result["unparsed_ids"] = [getattr(ex, "id", i) for i, (ex, p) in enumerate(zip(examples, preds)) if p is None]
    return result
