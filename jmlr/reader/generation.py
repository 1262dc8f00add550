"""Generation of a :class:`~jmlr.reader.Reader`: the :class:`GenerationMixin` part of the reader
(:meth:`~GenerationMixin.generate`, and :meth:`~GenerationMixin.parse_answer` to read a letter from its text)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .parse import parse_answer

__all__ = ["GenerationMixin"]


class GenerationMixin:
    """Free generation from prompts with a :class:`~jmlr.reader.Reader` (``self.model``, ``self.tokenizer``)."""

    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 32,
        batch_size: int = 8,
        do_sample: bool = False,
        stop: Sequence[str] | None = None,
        progress: bool = False,
        **generate_kwargs,
    ) -> list[str]:
        """Generate a continuation of each prompt (greedy unless ``do_sample``), left-padded in batches.

        Args:
            prompts: prompt strings, e.g. from :meth:`format_prompts` or :meth:`build_prompt`.
            max_new_tokens: the most new tokens per prompt.
            batch_size: prompts per ``model.generate`` call.
            do_sample: sample instead of greedy decoding.
            stop: cut each output at the first of these strings (default: the template's ``stop_strings``:
                ``"\\n"`` for jmlr, ``"\\nQuestion:"`` and ``"\\n\\n"`` for freetext, none for chat, which ends
                at EOS).
            progress: show a tqdm bar.
            **generate_kwargs: passed to ``model.generate`` (``temperature``, ``top_p``...).

        Returns:
            The new text of each prompt, special tokens removed, cut at the stop strings.
        """
        from tqdm.auto import tqdm

        if isinstance(prompts, str):
            raise ValueError("generate expects a list of prompts, got a single string")
        stop = self.stop_strings if stop is None else list(stop)
        tok = self.tokenizer
        texts: list[str] = []
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            starts = range(0, len(prompts), batch_size)
            for s in tqdm(starts, desc="generate", disable=not progress, total=len(starts)):
                enc = tok(list(prompts[s: s + batch_size]), return_tensors="pt", padding=True,
                          add_special_tokens=self.add_special_tokens).to(self.device)
                kw = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "pad_token_id": self._pad_id}
                if not do_sample:
                    kw.update(temperature=None, top_p=None, top_k=None)
                kw.update(generate_kwargs)
                with torch.no_grad(), self._autocast():
                    out = self.model.generate(**enc, **kw)
                new = out[:, enc["input_ids"].shape[1]:]
                texts.extend(tok.batch_decode(new, skip_special_tokens=True))
        finally:
            tok.padding_side = side
        cut = []
        for t in texts:
            t = t.lstrip()
            for s_ in stop:
                if s_ and s_ in t:
                    t = t[: t.index(s_)]
            cut.append(t.strip())
        return cut

    @staticmethod
    def parse_answer(text: str | None, options: Mapping[str, str] | None) -> str | None:
        """See :func:`jmlr.reader.parse.parse_answer` (``None`` when unparsable; never a default letter)."""
        return parse_answer(text, options)
