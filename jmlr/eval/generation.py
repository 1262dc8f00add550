"""BLEU and ROUGE for free-text QA (Huatuo-26M style), through sacrebleu and rouge-score.

:func:`bleu` is corpus BLEU from ``sacrebleu`` (0-100, its standard signature), plus cumulative BLEU-1..4
(``max_ngram_order = n``) as the Huatuo-26M paper reports them. :func:`rouge` is the mean over examples of
``rouge_score``'s per-pair precision / recall / F1 (0-1) for ROUGE-1, ROUGE-2 and ROUGE-L; with several
references an example takes its best-scoring one (``score_multi``).

Tokenisation matters: rouge-score's default tokenizer lower-cases and keeps ``[a-z0-9]`` only, so Chinese
text scores 0 against anything. ``tokenize`` picks one scheme for both metrics:

==============  =====================================  ==============================================
``tokenize``    BLEU (sacrebleu)                       ROUGE (rouge-score)
==============  =====================================  ==============================================
``"default"``   ``13a`` (sacrebleu's default)          rouge-score's default (lower-case, ASCII words)
``"char"``      ``char``: every non-space character    every non-space character, lower-cased, with
                                                       punctuation and symbols dropped
``"zh"``        ``zh``: Chinese characters split,      CJK characters one by one, other text as
                other text as ``13a``                  lower-cased words
``"none"``      ``none``: split on whitespace only     split on whitespace only
==============  =====================================  ==============================================

>>> m = generation_metrics(["头痛可以服用布洛芬"], ["头痛可服用对乙酰氨基酚或布洛芬"], tokenize="char")
>>> round(m["rouge1"], 3) > 0
True
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from jmlr.data.text import CJK_CHAR

__all__ = ["TOKENIZE", "bleu", "rouge", "generation_metrics", "rouge_tokenizer", "evaluate_generation"]

TOKENIZE = ("default", "char", "zh", "none")
_BLEU_TOK = {"default": "13a", "char": "char", "zh": "zh", "none": "none"}


class _CharTokenizer:
    """ROUGE tokens = non-space characters, lower-cased, punctuation and symbols dropped."""

    def tokenize(self, text: str) -> list[str]:
        return [c for c in text.lower() if not c.isspace() and unicodedata.category(c)[0] not in "PSZC"]


class _MixedTokenizer:
    """ROUGE tokens = CJK characters one by one, other runs of word characters as lower-cased words."""

    _TOK = re.compile(CJK_CHAR + r"|[^\W_]+")

    def tokenize(self, text: str) -> list[str]:
        return self._TOK.findall(text.lower())


class _WhitespaceTokenizer:
    def tokenize(self, text: str) -> list[str]:
        return text.split()


def _check_tokenize(tokenize: str) -> str:
    if tokenize not in TOKENIZE:
        raise ValueError(f"unknown tokenize {tokenize!r}; expected one of {', '.join(TOKENIZE)}")
    return tokenize


def rouge_tokenizer(tokenize: str):
    """The rouge-score tokenizer object for ``tokenize`` (``None`` = rouge-score's default)."""
    _check_tokenize(tokenize)
    return {"default": None, "char": _CharTokenizer(), "zh": _MixedTokenizer(), "none": _WhitespaceTokenizer()}[tokenize]


def _refs(hypotheses: Sequence[str], references: Sequence[Any]) -> list[list[str]]:
    """References per hypothesis, as lists; checks lengths and types."""
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise ValueError("expected lists of strings (one hypothesis and one reference -- or list of references -- "
                         "per example), got a single string")
    if len(hypotheses) != len(references):
        raise ValueError(f"got {len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    out = []
    for i, (h, r) in enumerate(zip(hypotheses, references)):
        if not isinstance(h, str):
            raise ValueError(f"hypothesis {i} is {type(h).__name__}; expected str")
        rs = [r] if isinstance(r, str) else list(r)
        if not rs or not all(isinstance(x, str) for x in rs):
            raise ValueError(f"reference {i} is {r!r}; expected a string or a non-empty list of strings")
        out.append(rs)
    return out


def bleu(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]], tokenize: str = "default",
         lowercase: bool = False) -> dict:
    """Corpus BLEU (sacrebleu), 0-100.

    Args:
        hypotheses: generated answers.
        references: one reference per hypothesis, or a list of references per hypothesis (the same number
            for every example, as sacrebleu requires).
        tokenize: see the module table.
        lowercase: case-insensitive BLEU.

    Returns:
        ``{"bleu", "bleu1".."bleu4" (cumulative, max n-gram order n), "precisions" (1..4-gram, %), "bp",
        "sys_len", "ref_len", "signature"}``.
    """
    from sacrebleu.metrics import BLEU

    refs = _refs(hypotheses, references)
    n_refs = {len(r) for r in refs}
    if len(n_refs) != 1:
        raise ValueError(f"examples have different numbers of references ({sorted(n_refs)}); sacrebleu needs the "
                         "same number for every example")
    streams = [[r[j] for r in refs] for j in range(n_refs.pop())]  # (n_refs, N)
    tok = _BLEU_TOK[_check_tokenize(tokenize)]
    metric = BLEU(tokenize=tok, lowercase=lowercase)
    res = metric.corpus_score(list(hypotheses), streams)
    out = {"bleu": res.score, "precisions": list(res.precisions), "bp": res.bp, "sys_len": res.sys_len,
           "ref_len": res.ref_len, "signature": str(metric.get_signature())}
    for n in range(1, 5):
        out[f"bleu{n}"] = BLEU(tokenize=tok, lowercase=lowercase, max_ngram_order=n).corpus_score(
            list(hypotheses), streams).score
    return out


def rouge(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]], tokenize: str = "default",
          types: Sequence[str] = ("rouge1", "rouge2", "rougeL"), use_stemmer: bool = False) -> dict:
    """Mean per-example ROUGE (rouge-score), 0-1.

    Returns:
        ``{type: mean F1, f"{type}_precision": ..., f"{type}_recall": ...}`` for each ROUGE type.
    """
    from rouge_score import rouge_scorer

    refs = _refs(hypotheses, references)
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=use_stemmer, tokenizer=rouge_tokenizer(tokenize))
    sums = {t: [0.0, 0.0, 0.0] for t in types}
    for h, rs in zip(hypotheses, refs):
        s = scorer.score(rs[0], h) if len(rs) == 1 else scorer.score_multi(rs, h)  # (target, prediction)
        for t in types:
            sums[t][0] += s[t].precision
            sums[t][1] += s[t].recall
            sums[t][2] += s[t].fmeasure
    n = len(hypotheses)
    out: dict[str, float] = {}
    for t in types:
        out[t] = sums[t][2] / n
        out[f"{t}_precision"] = sums[t][0] / n
        out[f"{t}_recall"] = sums[t][1] / n
    return out


def generation_metrics(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]],
                       tokenize: str = "default", lowercase: bool = False) -> dict:
    """BLEU (0-100) and ROUGE-1/2/L F1 (0-1) in one dict, plus ``n``; see :func:`bleu` and :func:`rouge`."""
    b = bleu(hypotheses, references, tokenize=tokenize, lowercase=lowercase)
    r = rouge(hypotheses, references, tokenize=tokenize)
    return {"n": len(hypotheses), "tokenize": tokenize, **{k: v for k, v in b.items()}, **r}


def evaluate_generation(reader, examples: Sequence[Any], passages: Sequence[Sequence[str]] | None = None,
                        max_new_tokens: int = 128, batch_size: int = 8, tokenize: str = "default",
                        progress: bool = False) -> dict:
    """Generate answers with ``reader`` and score them against the references.

    The reference of an example is its ``answer_text`` (free-text QA, e.g. Huatuo) or the text of its gold
    option. Use a reader built with ``template="freetext"`` (or ``"chat"``) for open questions.

    Returns:
        :func:`generation_metrics` plus ``"predictions"`` (the generated texts, in order).
    """
    refs = []
    for ex in examples:
        ref = getattr(ex, "answer_text", None) or (ex.options[ex.answer] if getattr(ex, "answer", None) else None)
        if not ref:
            raise ValueError(f"example {getattr(ex, 'id', '?')!r} has no reference answer (answer_text or answer)")
        refs.append(ref)
    # free-text questions have no options: generate with the reader's stop strings, then score
    prompts = reader.format_prompts(list(examples), passages, reserve_tokens=max_new_tokens)
    preds = reader.generate(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    return {**generation_metrics(preds, refs, tokenize=tokenize), "predictions": preds}
