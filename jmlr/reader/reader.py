"""The :class:`Reader`: any Hugging Face causal LM plus its tokenizer, scoring answers given passages.

``Reader`` is assembled from one mixin per responsibility, each in its own module:

* :mod:`jmlr.reader.weights`: loading (``from_pretrained``, k-bit, LoRA add/merge) and saving
  (``save_pretrained``, ``load_weights``, sharded weights);
* :mod:`jmlr.reader.encoding`: prompts, answer targets and their token ids, passages truncated to fit
  (``encode``, ``format_prompts``);
* :mod:`jmlr.reader.scoring`: the forward machinery and the answer log-likelihoods (``answer_loglik``,
  ``concat_loglik``, ``loo_loglik``, ``score_options``, ``predict``);
* :mod:`jmlr.reader.generation`: ``generate`` and ``parse_answer``.

This module holds the constructor (the settings every part reads) and the device helpers.
"""
from __future__ import annotations

import torch

from .encoding import Encoded, EncodingMixin
from .generation import GenerationMixin
from .prompts import TARGET_KINDS, check_template
from .scoring import ScoringMixin, TokenLoglik
from .weights import READER_CONFIG_NAME, WeightsMixin, _as_dtype

__all__ = ["Reader", "Encoded", "TokenLoglik", "READER_CONFIG_NAME"]


class Reader(WeightsMixin, EncodingMixin, ScoringMixin, GenerationMixin):
    """A causal LM reader for retrieval-augmented (medical) QA.

    Args:
        model: a Hugging Face causal LM (``AutoModelForCausalLM``), optionally wrapped by peft.
        tokenizer: its tokenizer. A pad token is set to the EOS token when missing.
        template: ``"jmlr"`` (base models), ``"chat"`` (instruct models, uses the tokenizer's chat template) or
            ``"freetext"`` (open questions); see :mod:`jmlr.reader.prompts`.
        max_length: the longest scored sequence (prompt + answer), in tokens; passages are truncated to fit.
        max_passage_tokens: optional cap on each passage, in tokens.
        target: the default answer string for MCQ: ``"letter"`` (``" B"``), ``"letter_text"``
            (``" B. <option text>"``) or ``"option_text"`` (cloze: the prompt does not list the options, the
            target is ``" <option text>"``, and :meth:`score_options` scores each option's text). Small readers
            (~100M parameters) bind letters poorly and answer "A" whatever the passages say; the cloze target
            makes them use the passages.
        micro_batch: how many sequences one forward holds (``None``: all of them).
        autocast_dtype: run forwards under ``torch.autocast`` with this dtype (e.g. ``torch.bfloat16`` on CPU);
            ``None`` leaves the caller's autocast state alone.
        shared_prefix: score the options of a question in ONE packed forward that computes the prompt once
            (:mod:`jmlr.reader.prefix`); ``False`` scores one full sequence per option. Same scores either way.

    Example:
        >>> reader = Reader.from_pretrained("smollm2-135m", template="chat")   # doctest: +SKIP
        >>> ll = reader.answer_loglik(examples, passages)   # (B, K), with gradient   # doctest: +SKIP
        >>> reader.predict(examples, passages)               # ['B', 'D', ...]         # doctest: +SKIP
    """

    def __init__(
        self,
        model,
        tokenizer,
        template: str = "jmlr",
        max_length: int = 512,
        max_passage_tokens: int | None = None,
        target: str = "letter",
        micro_batch: int | None = None,
        autocast_dtype: torch.dtype | str | None = None,
        shared_prefix: bool = True,
    ):
        self.model = model
        self.shared_prefix = bool(shared_prefix)
        self.tokenizer = tokenizer
        self.template = check_template(template)
        if max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {max_length}")
        if max_passage_tokens is not None and max_passage_tokens < 0:
            raise ValueError(f"max_passage_tokens must be >= 0 or None, got {max_passage_tokens}")
        if target not in TARGET_KINDS:
            raise ValueError(f"target must be one of {', '.join(TARGET_KINDS)}, got {target!r}")
        if micro_batch is not None and micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1 or None, got {micro_batch}")
        self.max_length = int(max_length)
        self.max_passage_tokens = max_passage_tokens
        self.target = target
        self.micro_batch = micro_batch
        self.autocast_dtype = _as_dtype(autocast_dtype)
        if template == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ValueError("template='chat' needs a tokenizer with a chat template; use template='jmlr'")
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # The chat template renders BOS itself; the plain templates let the tokenizer add its special tokens.
        # (what every tokenization of a prompt passes as ``add_special_tokens=``, here and in other packages)
        self.add_special_tokens: bool = template != "chat"
        self._target_cache: dict[str, list[int]] = {}
        self._probe_ids: list[int] | None = None
        self.tokens_seen = 0  # tokens through scoring forwards (prompt + answer), for cost accounting
        self._appends_eos: bool | None = None
        # MCQ answers of the plain templates are one line; free-text answers may span paragraphs
        self.stop_strings: list[str] = {"chat": [], "jmlr": ["\n"], "freetext": ["\nQuestion:", "\n\n"]}[template]
        self._inspect_forward()

    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter."""
        return next(self.model.parameters()).device

    def to(self, device) -> "Reader":
        """Move the model to ``device``."""
        self.model.to(device)
        return self

    def __repr__(self) -> str:
        name = getattr(getattr(self.base_model, "config", None), "_name_or_path", "") or type(self.base_model).__name__
        return (f"Reader({name!r}, template={self.template!r}, max_length={self.max_length}, "
                f"target={self.target!r}, peft={self.is_peft})")

