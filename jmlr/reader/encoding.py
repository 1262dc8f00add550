"""Prompt encoding of a :class:`~jmlr.reader.Reader`: the :class:`EncodingMixin` part of the reader.

It turns ``(example, passages, target)`` into token ids: the prompt of the reader's template
(:mod:`jmlr.reader.prompts`), the answer target tokenized as it follows that prompt, and the passages cut to fit.

Truncation: when ``prompt + answer`` exceeds ``max_length`` tokens, the PASSAGES are cut (their ends, at
token boundaries, shared fairly between passages: short passages stay whole and the long ones share the
rest), never the question, the options or the answer. If those alone do not fit, a ``ValueError`` names the
example. ``max_passage_tokens`` also caps every passage on its own.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from .prompts import build_prompt, target_string

__all__ = ["EncodingMixin", "Encoded"]


class Encoded(NamedTuple):
    """One scored sequence: the (possibly passage-truncated) prompt, its token ids and the answer's ids."""

    prompt: str
    prompt_ids: list[int]
    target_ids: list[int]
    truncated: bool


def _example_id(ex: Any, i: int) -> str:
    return f"example {i}" + (f" (id {ex.id!r})" if getattr(ex, "id", None) is not None else "")


def _waterfill(lengths: Sequence[int], budget: int) -> list[int]:
    """Share ``budget`` tokens between passages: short ones stay whole, long ones split the rest equally."""
    n = len(lengths)
    alloc = [0] * n
    remaining = max(budget, 0)
    for j, i in enumerate(sorted(range(n), key=lambda i: lengths[i])):
        alloc[i] = min(lengths[i], remaining // (n - j))
        remaining -= alloc[i]
    return alloc


class EncodingMixin:
    """Prompts, targets and their token ids for a :class:`~jmlr.reader.Reader` (``self.tokenizer``,
    ``self.template``, ``self.max_length``, ``self.max_passage_tokens``, ``self.target``)."""

    def build_prompt(self, question: str, options: Mapping[str, str] | None, passages: Sequence[str] = ()) -> str:
        """The prompt for one question with ``passages`` (in order), untruncated; see :mod:`jmlr.reader.prompts`."""
        return build_prompt(self.template, question, options, passages, self.tokenizer)

    def prompt_options(self, example: Any) -> Mapping[str, str] | None:
        """The options shown in ``example``'s prompt: all of them, or none in cloze mode (``target="option_text"``)."""
        return None if self.target == "option_text" else getattr(example, "options", None)

    def target_for(self, example: Any, letter: str | None = None, kind: str | None = None) -> str:
        """The answer string appended to the prompt: ``" B"`` / ``" B. text"`` (``"B"`` for chat), or the
        free-text answer. ``letter`` defaults to ``example.answer``; ``kind`` to the reader's ``target``."""
        options = getattr(example, "options", None) or {}
        letter = letter if letter is not None else getattr(example, "answer", None)
        if letter is None and options:
            raise ValueError(f"example {getattr(example, 'id', '?')!r} has no answer letter to score")
        if letter is not None and options and letter not in options:
            raise ValueError(f"example {getattr(example, 'id', '?')!r}: answer {letter!r} is not one of the "
                             f"options {list(options)}")
        answer_text = getattr(example, "answer_text", None)
        if letter is None and not answer_text:
            raise ValueError(f"example {getattr(example, 'id', '?')!r} has neither an answer letter nor answer_text")
        return target_string(self.template, letter, options, kind or self.target, answer_text)

    def _encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of prompts; a trailing EOS that some tokenizers append (``add_eos_token``) is dropped,
        since the answer must follow the prompt directly."""
        ids = self.tokenizer(list(texts), add_special_tokens=self.add_special_tokens)["input_ids"]
        if self._appends_eos is None:
            eos = self.tokenizer.eos_token_id
            with_sp = self.tokenizer("x", add_special_tokens=self.add_special_tokens)["input_ids"]
            plain = self.tokenizer("x", add_special_tokens=False)["input_ids"]
            self._appends_eos = bool(eos is not None and with_sp and with_sp[-1] == eos
                                     and (not plain or plain[-1] != eos))
        if self._appends_eos:
            eos = self.tokenizer.eos_token_id
            ids = [x[:-1] if x and x[-1] == eos else x for x in ids]
        return ids

    def _target_ids(self, target: str) -> list[int]:
        """Token ids of ``target`` as it tokenizes right after a prompt of this template (cached).

        Tokenizers that merge a leading space into the next word (BPE ``"ĠB"``, SentencePiece ``"▁B"``) are
        handled by tokenizing ``probe + target`` and keeping what follows the probe's own tokens; every
        prompt of a template ends the same way, so the split is the same for all of them.
        """
        ids = self._target_cache.get(target)
        if ids is not None:
            return ids
        if self._probe_ids is None:
            self._probe = build_prompt(self.template, "?", {"A": "?"}, [], self.tokenizer)
            self._probe_ids = self._encode_texts([self._probe])[0]
        whole = self._encode_texts([self._probe + target])[0]
        n = len(self._probe_ids)
        if whole[:n] == self._probe_ids:
            ids = whole[n:]
        else:  # the boundary merged: tokenize the target on its own
            ids = self.tokenizer(target, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"answer target {target!r} tokenizes to nothing")
        self._target_cache[target] = list(ids)
        return self._target_cache[target]

    def _passage_pieces(self, text: str) -> tuple[int, Callable[[int], str]]:
        """(number of tokens of ``text``, function cutting ``text`` to its first n tokens)."""
        tok = self.tokenizer
        if getattr(tok, "is_fast", False):
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            offsets = enc["offset_mapping"]

            def cut(n: int) -> str:
                return "" if n <= 0 else text if n >= len(offsets) else text[: offsets[n - 1][1]].rstrip()

            return len(offsets), cut
        ids = tok(text, add_special_tokens=False)["input_ids"]

        def cut_slow(n: int) -> str:
            return "" if n <= 0 else text if n >= len(ids) else tok.decode(ids[:n], skip_special_tokens=True).rstrip()

        return len(ids), cut_slow

    def _fit(self, question: str, options, passages: list[str], reserve: int, where: str) -> tuple[str, list[int], bool]:
        """Prompt + ids with passages cut so that ``len(ids) + reserve <= max_length``."""
        limit = self.max_length - reserve
        pieces = [self._passage_pieces(p) for p in passages]
        lengths = [n for n, _ in pieces]
        truncated = False
        if self.max_passage_tokens is not None and any(n > self.max_passage_tokens for n in lengths):
            lengths = [min(n, self.max_passage_tokens) for n in lengths]
            truncated = True
        texts = [cut(n) for (_, cut), n in zip(pieces, lengths)]
        prompt = self.build_prompt(question, options, texts)
        ids = self._encode_texts([prompt])[0]
        if len(ids) <= limit:
            return prompt, ids, truncated
        bare = self.build_prompt(question, options, [""] * len(passages))
        fixed = len(self._encode_texts([bare])[0])
        if fixed > limit:
            raise ValueError(
                f"{where}: the question and options take {fixed} tokens and the answer {reserve}, more than "
                f"max_length={self.max_length} even with every passage removed; raise max_length (passages "
                "are the only thing the reader truncates)"
            )
        avail = limit - fixed
        for _ in range(64):
            alloc = _waterfill(lengths, avail)
            texts = [cut(n) for (_, cut), n in zip(pieces, alloc)]
            prompt = self.build_prompt(question, options, texts)
            ids = self._encode_texts([prompt])[0]
            over = len(ids) - limit
            if over <= 0:
                return prompt, ids, True
            avail -= over  # tokens merged differently at passage boundaries: shrink and retry
        return bare, self._encode_texts([bare])[0], True

    def encode(self, example: Any, passages: Sequence[str] = (), target: str | None = None) -> Encoded:
        """Tokenize one scored sequence exactly as :meth:`answer_loglik` does (passages truncated to fit)."""
        return self._encode_items([(example, list(passages), target)], reserve_target=True)[0]

    def _encode_items(self, items: Sequence[tuple[Any, list[str], str | None]], reserve_target: bool = True,
                      reserve: int | Sequence[int] = 0) -> list[Encoded]:
        """Encode ``(example, passages, target)`` triples; ``target=None`` takes the example's answer.
        ``reserve``: tokens kept free after the prompt (and its target), one number or one per item."""
        prompts, targets, tids = [], [], []
        for i, (ex, ps, tg) in enumerate(items):
            if not isinstance(getattr(ex, "question", None), str):
                raise ValueError(f"{_example_id(ex, i)}: expected an object with a string .question")
            for j, p in enumerate(ps):
                if not isinstance(p, str):
                    raise ValueError(f"{_example_id(ex, i)}: passage {j} is {type(p).__name__}, expected str")
            tg = self.target_for(ex) if (tg is None and reserve_target) else tg
            targets.append(tg)
            tids.append(self._target_ids(tg) if tg is not None else [])
            prompts.append(self.build_prompt(ex.question, self.prompt_options(ex), ps))
        ids_list = self._encode_texts(prompts)
        out = []
        for i, ((ex, ps, _), prompt, ids, tid) in enumerate(zip(items, prompts, ids_list, tids)):
            need = len(tid) + (reserve if isinstance(reserve, int) else reserve[i])
            if len(ids) + need > self.max_length or (self.max_passage_tokens is not None and ps):
                prompt, ids, trunc = self._fit(ex.question, self.prompt_options(ex), ps, need,
                                               _example_id(ex, i))
            else:
                trunc = False
            out.append(Encoded(prompt, list(ids), list(tid), trunc))
        return out

    def format_prompts(self, examples: Sequence[Any], passages: Sequence[Sequence[str]] | None = None,
                       reserve_tokens: int = 0) -> list[str]:
        """Prompts for :meth:`generate`, passages truncated so ``reserve_tokens`` new tokens still fit."""
        passages = self._check_rows(examples, passages, equal=False)
        enc = self._encode_items([(ex, list(ps), None) for ex, ps in zip(examples, passages)],
                                 reserve_target=False, reserve=reserve_tokens)
        return [e.prompt for e in enc]


    def _check_rows(self, examples, passages, equal: bool) -> list[list[str]]:
        B = len(examples)
        if passages is None:
            return [[] for _ in range(B)]
        if len(passages) != B:
            raise ValueError(f"got {B} examples but {len(passages)} passage lists; expected one list per example")
        rows = [list(p) for p in passages]
        for b, r in enumerate(rows):
            if isinstance(passages[b], str):
                raise ValueError(f"passages[{b}] is a string; expected a list of passage strings")
            if equal and len(r) != len(rows[0]):
                raise ValueError(f"passages[{b}] has {len(r)} passages but passages[0] has {len(rows[0])}; "
                                 "every example needs the same K")
        return rows

    def _check_targets(self, examples, targets) -> list[str | None]:
        if targets is None:
            return [None] * len(examples)
        if len(targets) != len(examples):
            raise ValueError(f"got {len(examples)} examples but {len(targets)} targets")
        return list(targets)

