"""Scoring of a :class:`~jmlr.reader.Reader`: the :class:`ScoringMixin` part of the reader.

What the joint trainer needs from a reader is ``log p(y | x, z_k)``: the log-likelihood of the answer ``y``
given the question ``x`` and ONE retrieved passage ``z_k``, for every question of a batch and every one of
its ``K`` passages, with gradient. :meth:`~ScoringMixin.answer_loglik` builds the ``B*K`` sequences
``prompt(x, z_k) + y``, left-pads them, runs ONE forward (or chunks of ``micro_batch``), and projects onto
the vocabulary only the positions that predict answer tokens (``logits_to_keep``): the LM head of a
49k-word vocabulary would otherwise cost more than the transformer itself on short answers.

Sequence layout (left padding, so that every answer ends at the last position)::

    [pad pad pad | prompt(x, z_k) tokens ............ | y_1 .. y_T]
                  ^ position_ids start at 0 here        ^ logits of the T positions before these are kept

``position_ids`` are passed explicitly (``cumsum(mask) - 1``), so a padded sequence scores exactly as the
same sequence alone. The options of a question can share one prompt forward (:mod:`jmlr.reader.prefix`).
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from jmlr.core.precision import autocast

from .encoding import Encoded
from .parse import parse_answer
from .prefix import pack_shared_prefix, packed_logp, supports_packing
from .prompts import target_string

__all__ = ["ScoringMixin", "TokenLoglik"]


class TokenLoglik(NamedTuple):
    """Per-token answer log-probabilities (``return_token_logp=True``).

    ``loglik``: ``(..., )`` summed over answer tokens; ``token_logp``: ``(..., T)`` with answer token ``t`` at
    index ``t`` (left-aligned) and zeros after the answer's end; ``mask``: ``(..., T)`` bool, True on real tokens.
    """

    loglik: torch.Tensor
    token_logp: torch.Tensor
    mask: torch.Tensor


class ScoringMixin:
    """Forwards and answer log-likelihoods of a :class:`~jmlr.reader.Reader` (``self.model``, its encoding)."""

    # ------------------------------------------------------------------ forward machinery
    def _inspect_forward(self) -> None:
        params = inspect.signature(self.base_model.forward).parameters
        self._keep_arg = next((n for n in ("logits_to_keep", "num_logits_to_keep") if n in params), None)
        self._pass_positions = "position_ids" in params

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return autocast(self.autocast_dtype, self.device)

    def _pad_left(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, L = len(seqs), max(len(s) for s in seqs)
        ids = torch.full((n, L), self._pad_id, dtype=torch.long)
        mask = torch.zeros((n, L), dtype=torch.long)
        for i, s in enumerate(seqs):
            if s:
                ids[i, L - len(s):] = torch.as_tensor(s, dtype=torch.long)
                mask[i, L - len(s):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        dev = self.device
        return ids.to(dev), mask.to(dev), pos.to(dev)

    def _last_logits(self, seqs: Sequence[Sequence[int]], keep: int) -> torch.Tensor:
        """Logits of the last ``keep`` positions of each left-padded sequence: ``(n, keep, V)``."""
        ids, mask, pos = self._pad_left(seqs)  # (n, L) each
        return self._forward_keep(ids, mask, pos, keep)

    def _forward_keep(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, keep: int) -> torch.Tensor:
        """One forward; logits of the last ``keep`` positions ``(n, keep, V)`` (only those hit the LM head)."""
        dev = self.device
        kwargs: dict = {"input_ids": ids.to(dev), "attention_mask": mask.to(dev), "use_cache": False}
        if self._pass_positions:
            kwargs["position_ids"] = pos.to(dev)
        if self._keep_arg is not None:
            kwargs[self._keep_arg] = keep
        with self._autocast():
            out = self.model(**kwargs)
        logits = out.logits if hasattr(out, "logits") else out[0]
        return logits[:, -keep:]  # (n, keep, V)

    @property
    def can_share_prefix(self) -> bool:
        """Whether this model takes the packed shared-prefix layout (position ids and a custom 4D mask)."""
        return supports_packing(self.model)

    def _score_packed(self, encs: Sequence[Encoded], conts: list[list[list[int]]], n_cols: int,
                      micro_batch: int | None) -> torch.Tensor:
        """``(B, n_cols)`` summed log-probs of each row's continuations after its shared prompt, packed."""
        lengths = [len(e.prompt_ids) + sum(len(c) for c in row) for e, row in zip(encs, conts)]
        chunks, inverse = self._chunks(lengths, micro_batch)
        p = next(self.model.parameters())
        mask_dtype = p.dtype if p.dtype.is_floating_point else torch.float32
        outs = []
        for idx in chunks:
            pb = pack_shared_prefix([encs[i].prompt_ids for i in idx], [conts[i] for i in idx], self._pad_id,
                                    mask_dtype=mask_dtype)
            logits = self._forward_keep(pb.input_ids, pb.attention_mask, pb.position_ids, pb.keep)  # (n, keep, V)
            outs.append(packed_logp(logits, pb, n_cols))  # (n, n_cols)
        return torch.cat(outs)[inverse.to(outs[0].device)]

    def _chunks(self, lengths: Sequence[int], micro_batch: int | None) -> tuple[list[list[int]], torch.Tensor]:
        """Length-sorted chunks of indices and the permutation that restores the input order."""
        n = len(lengths)
        mb = micro_batch or self.micro_batch or n
        order = sorted(range(n), key=lambda i: lengths[i]) if mb < n else list(range(n))
        chunks = [order[s: s + mb] for s in range(0, n, mb)]
        inverse = torch.empty(n, dtype=torch.long)
        inverse[torch.as_tensor(order, dtype=torch.long)] = torch.arange(n)
        return chunks, inverse

    def _token_logp(self, encs: Sequence[Encoded], micro_batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-aligned answer-token log-probs ``(N, T)`` and mask ``(N, T)`` for encoded sequences."""
        tlens = [len(e.target_ids) for e in encs]
        T = max(tlens)
        chunks, inverse = self._chunks([len(e.prompt_ids) + t for e, t in zip(encs, tlens)], micro_batch)
        outs = []
        for idx in chunks:
            Tc = max(tlens[i] for i in idx)
            seqs = [encs[i].prompt_ids + encs[i].target_ids for i in idx]
            logits = self._last_logits(seqs, Tc + 1)[:, :Tc].float()  # (n, Tc, V): position j predicts token j+1
            tgt = torch.zeros((len(idx), Tc), dtype=torch.long)
            for r, i in enumerate(idx):  # right-aligned targets
                tgt[r, Tc - tlens[i]:] = torch.as_tensor(encs[i].target_ids, dtype=torch.long)
            tgt = tgt.to(logits.device)
            picked = logits.gather(-1, tgt.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # (n, Tc)
            # right-aligned -> left-aligned, padded to T
            tl = torch.as_tensor([tlens[i] for i in idx], device=logits.device)
            m = torch.arange(T, device=logits.device)
            src = (Tc - tl).unsqueeze(1) + m.unsqueeze(0)  # (n, T)
            valid = m.unsqueeze(0) < tl.unsqueeze(1)
            left = picked.gather(1, src.clamp(max=Tc - 1)) * valid  # (n, T)
            outs.append(left)
        token_logp = torch.cat(outs)[inverse.to(outs[0].device)]  # (N, T)
        mask = torch.arange(T).unsqueeze(0) < torch.as_tensor(tlens).unsqueeze(1)
        return token_logp, mask.to(token_logp.device)

    def _seq_loglik(self, items, shape: tuple[int, ...], return_token_logp: bool, micro_batch: int | None):
        if not items:
            z = torch.zeros(shape, device=self.device)
            if return_token_logp:
                return TokenLoglik(z, z.new_zeros(shape + (0,)), torch.zeros(shape + (0,), dtype=torch.bool))
            return z
        encs = self._encode_items(items)
        self.tokens_seen += sum(len(e.prompt_ids) + len(e.target_ids) for e in encs)
        tok, mask = self._token_logp(encs, micro_batch)  # (N, T)
        loglik = tok.sum(-1).view(shape)
        if return_token_logp:
            T = tok.shape[-1]
            return TokenLoglik(loglik, tok.view(shape + (T,)), mask.view(shape + (T,)))
        return loglik

    # ------------------------------------------------------------------ public scoring API
    def answer_loglik(
        self,
        examples: Sequence[Any],
        passages: Sequence[Sequence[str]],
        targets: Sequence[str] | None = None,
        return_token_logp: bool = False,
        micro_batch: int | None = None,
    ) -> torch.Tensor | TokenLoglik:
        """``log p(y_b | x_b, z_bk)`` for every example ``b`` and each of its ``K`` passages, one passage per prompt.

        Args:
            examples: ``B`` objects with ``.question``, ``.options`` (letter -> text) and ``.answer``
                (or ``.answer_text`` for free-text QA), e.g. :class:`jmlr.data.QAExample`.
            passages: ``B`` lists of ``K`` passage strings.
            targets: ``B`` answer strings appended verbatim to the prompt (mind the leading space, see
                :meth:`target_for`); ``None`` uses each example's answer with the reader's ``target`` kind.
            return_token_logp: also return per-token log-probs ``(B, K, T)`` and their mask (``rag_token``).
            micro_batch: sequences per forward for this call (default: the reader's ``micro_batch``).

        Returns:
            ``(B, K)`` float32 tensor with gradient, or a :class:`TokenLoglik` when ``return_token_logp``.
        """
        rows = self._check_rows(examples, passages, equal=True)
        tg = self._check_targets(examples, targets)
        B, K = len(examples), (len(rows[0]) if rows else 0)
        items = [(ex, [p], tg[b]) for b, ex in enumerate(examples) for p in rows[b]]
        return self._seq_loglik(items, (B, K), return_token_logp, micro_batch)

    def concat_loglik(
        self,
        examples: Sequence[Any],
        passages: Sequence[Sequence[str]],
        targets: Sequence[str] | None = None,
        return_token_logp: bool = False,
        micro_batch: int | None = None,
    ) -> torch.Tensor | TokenLoglik:
        """``log p(y_b | x_b, z_b1 .. z_bm)`` with all of an example's passages in ONE prompt: ``(B,)``.

        Rows may hold different numbers of passages (an empty row scores the closed-book answer). When too
        long, the passages share the token budget (see :mod:`jmlr.reader.encoding`).
        """
        rows = self._check_rows(examples, passages, equal=False)
        tg = self._check_targets(examples, targets)
        items = [(ex, rows[b], tg[b]) for b, ex in enumerate(examples)]
        return self._seq_loglik(items, (len(examples),), return_token_logp, micro_batch)

    def loo_loglik(
        self,
        examples: Sequence[Any],
        passages: Sequence[Sequence[str]],
        targets: Sequence[str] | None = None,
        micro_batch: int | None = None,
    ) -> torch.Tensor:
        """Leave-one-out: ``log p(y_b | x_b, all passages of b but z_bk)``, batched over ``B*K``: ``(B, K)``."""
        rows = self._check_rows(examples, passages, equal=True)
        tg = self._check_targets(examples, targets)
        B, K = len(examples), (len(rows[0]) if rows else 0)
        items = [(ex, rows[b][:k] + rows[b][k + 1:], tg[b]) for b, ex in enumerate(examples) for k in range(K)]
        return self._seq_loglik(items, (B, K), False, micro_batch)

    def option_letters(self, example: Any) -> list[str]:
        """The example's option letters, in order (column order of :meth:`score_options`)."""
        options = getattr(example, "options", None)
        if not options:
            raise ValueError(f"example {getattr(example, 'id', '?')!r} has no options; score_options needs MCQ")
        return list(options)

    def score_options(
        self,
        examples: Sequence[Any],
        passages: Sequence[Sequence[str]] | None = None,
        micro_batch: int | None = None,
        shared_prefix: bool | None = None,
    ) -> torch.Tensor:
        """Log-likelihood of each option as the answer after the prompt: ``(B, n_options)``.

        Column ``j`` is the ``j``-th option of the example (``"A"`` first); questions with fewer options get
        ``-inf`` in the missing columns. ``passages[b]`` are ALL placed in example ``b``'s prompt (the way the
        reader answers at test time). With the letter targets the scored string is the option's letter
        (``" B"``, or ``"B"`` for chat), tokenized in context (see :meth:`_target_ids`); when every letter is
        one token this is one forward per question with a single kept position. With ``target="option_text"``
        (cloze) each option's text is scored as the continuation of a prompt that does not list the options,
        summed over its tokens. Multi-token options share their question's prompt: it is fitted once (passages
        truncated so that the LONGEST option still fits, so every option is scored against the same context) and,
        with ``shared_prefix`` (default: the reader's setting), computed once in one packed forward per question
        (:mod:`jmlr.reader.prefix`); otherwise one sequence per option. Both give the same scores.
        Values are log-probabilities over the whole vocabulary, not renormalised over the options.
        """
        rows = self._check_rows(examples, passages, equal=False)
        letters = [self.option_letters(ex) for ex in examples]
        B, n_max = len(examples), max(len(ls) for ls in letters)
        kind = "option_text" if self.target == "option_text" else "letter"
        tids = [[self._target_ids(target_string(self.template, L, ex.options, kind)) for L in ls]
                for ex, ls in zip(examples, letters)]
        if all(len(t) == 1 for row in tids for t in row):
            encs = self._encode_items([(ex, rows[b], None) for b, ex in enumerate(examples)],
                                      reserve_target=False, reserve=1)
            chunks, inverse = self._chunks([len(e.prompt_ids) for e in encs], micro_batch)
            outs = []
            for idx in chunks:
                logp = F.log_softmax(self._last_logits([encs[i].prompt_ids for i in idx], 1)[:, -1].float(), -1)
                col = torch.zeros((len(idx), n_max), dtype=torch.long)
                valid = torch.zeros((len(idx), n_max), dtype=torch.bool)
                for r, i in enumerate(idx):
                    col[r, : len(tids[i])] = torch.as_tensor([t[0] for t in tids[i]])
                    valid[r, : len(tids[i])] = True
                got = logp.gather(1, col.to(logp.device))  # (n, n_max)
                outs.append(got.masked_fill(~valid.to(logp.device), float("-inf")))
            return torch.cat(outs)[inverse.to(outs[0].device)]  # (B, n_max)
        # multi-token targets: every option continues ONE prompt per question, fitted for the longest option
        encs = self._encode_items([(ex, rows[b], None) for b, ex in enumerate(examples)], reserve_target=False,
                                  reserve=[max(len(t) for t in row) for row in tids])
        share = self.shared_prefix if shared_prefix is None else shared_prefix
        if share and self.can_share_prefix:
            self.tokens_seen += sum(len(e.prompt_ids) + sum(len(t) for t in row) for e, row in zip(encs, tids))
            return self._score_packed(encs, tids, n_max, micro_batch)  # (B, n_max)
        flat_encs = [Encoded(e.prompt, e.prompt_ids, t, e.truncated) for e, row in zip(encs, tids) for t in row]
        self.tokens_seen += sum(len(e.prompt_ids) + len(e.target_ids) for e in flat_encs)
        flat = self._token_logp(flat_encs, micro_batch)[0].sum(-1)  # (sum of option counts,)
        scores = torch.full((B, n_max), float("-inf"), device=flat.device)
        bi = torch.as_tensor([b for b, row in enumerate(tids) for _ in row], device=flat.device)
        ji = torch.as_tensor([j for row in tids for j in range(len(row))], device=flat.device)
        return scores.index_put((bi, ji), flat)  # (B, n_max)

    def predict(
        self,
        examples: Sequence[Any],
        passages: Sequence[Sequence[str]] | None = None,
        mode: str = "score",
        max_new_tokens: int = 16,
    ) -> list[str | None]:
        """Predicted letters. ``mode="score"``: the argmax of :meth:`score_options` (always a letter).
        ``mode="generate"``: greedy generation parsed by :func:`parse_answer` (``None`` when unparsable)."""
        if mode == "score":
            with torch.no_grad():
                scores = self.score_options(examples, passages)
            best = scores.argmax(-1).tolist()
            return [self.option_letters(ex)[j] for ex, j in zip(examples, best)]
        if mode == "generate":
            texts = self.generate(self.format_prompts(examples, passages, reserve_tokens=max_new_tokens),
                                  max_new_tokens=max_new_tokens)
            return [parse_answer(t, ex.options) for t, ex in zip(texts, examples)]
        raise ValueError(f"unknown predict mode {mode!r}; expected 'score' or 'generate'")

