"""The :class:`Reader`: any Hugging Face causal LM plus its tokenizer, scoring answers given passages.

What the joint trainer needs from a reader is ``log p(y | x, z_k)``: the log-likelihood of the answer ``y``
given the question ``x`` and ONE retrieved passage ``z_k``, for every question of a batch and every one of
its ``K`` passages, with gradient. :meth:`Reader.answer_loglik` builds the ``B*K`` sequences
``prompt(x, z_k) + y``, left-pads them, runs ONE forward (or chunks of ``micro_batch``), and projects onto
the vocabulary only the positions that predict answer tokens (``logits_to_keep``): the LM head of a
49k-word vocabulary would otherwise cost more than the transformer itself on short answers.

Sequence layout (left padding, so that every answer ends at the last position)::

    [pad pad pad | prompt(x, z_k) tokens ............ | y_1 .. y_T]
                  ^ position_ids start at 0 here        ^ logits of the T positions before these are kept

``position_ids`` are passed explicitly (``cumsum(mask) - 1``), so a padded sequence scores exactly as the
same sequence alone.

Truncation: when ``prompt + answer`` exceeds ``max_length`` tokens, the PASSAGES are cut (their ends, at
token boundaries, shared fairly between passages: short passages stay whole and the long ones share the
rest), never the question, the options or the answer. If those alone do not fit, a ``ValueError`` names the
example. ``max_passage_tokens`` also caps every passage on its own.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from jmlr.core.precision import autocast

from .parse import parse_answer
from .prefix import pack_shared_prefix, packed_logp, supports_packing
from .prompts import TARGET_KINDS, build_prompt, check_template, target_string

logger = logging.getLogger(__name__)

__all__ = ["Reader", "Encoded", "TokenLoglik", "READER_CONFIG_NAME"]

READER_CONFIG_NAME = "jmlr_reader.json"
_DTYPES = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
}


class Encoded(NamedTuple):
    """One scored sequence: the (possibly passage-truncated) prompt, its token ids and the answer's ids."""

    prompt: str
    prompt_ids: list[int]
    target_ids: list[int]
    truncated: bool


class TokenLoglik(NamedTuple):
    """Per-token answer log-probabilities (``return_token_logp=True``).

    ``loglik``: ``(..., )`` summed over answer tokens; ``token_logp``: ``(..., T)`` with answer token ``t`` at
    index ``t`` (left-aligned) and zeros after the answer's end; ``mask``: ``(..., T)`` bool, True on real tokens.
    """

    loglik: torch.Tensor
    token_logp: torch.Tensor
    mask: torch.Tensor


def _as_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    if dtype == "auto":
        return dtype
    raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)} or a torch.dtype")


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


class Reader:
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
        self._add_special = template != "chat"
        self._target_cache: dict[str, list[int]] = {}
        self._probe_ids: list[int] | None = None
        self.tokens_seen = 0  # tokens through scoring forwards (prompt + answer), for cost accounting
        self._appends_eos: bool | None = None
        # MCQ answers of the plain templates are one line; free-text answers may span paragraphs
        self.stop_strings: list[str] = {"chat": [], "jmlr": ["\n"], "freetext": ["\nQuestion:", "\n\n"]}[template]
        self._inspect_forward()

    # ------------------------------------------------------------------ construction / persistence
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        dtype: torch.dtype | str | None = None,
        lora: Any = None,
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        device: str | torch.device | None = None,
        torch_dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = None,
        quantization: str | None = None,
        **reader_kwargs,
    ) -> "Reader":
        """Load a reader from a bundled alias (``"smollm2-135m"``), an HF name, a local folder, or a folder
        written by :meth:`save_pretrained` (full model, or a LoRA adapter over its recorded base model).

        Args:
            name_or_path: what to load; bundled aliases go through :func:`jmlr.models.resolve`.
            dtype: weights dtype (``torch.bfloat16``, ``"bf16"``, ``"fp32"``...); ``None`` keeps transformers' default.
            lora: a ``peft.LoraConfig`` or a dict of its arguments: wraps the model so only adapters train.
            gradient_checkpointing: recompute activations in backward (less memory, ~30% more compute).
            trust_remote_code: passed to transformers; off unless you trust the model's code.
            device: move the model there after loading (quantised weights are loaded straight onto it).
            torch_dtype: the same as ``dtype`` (the Hugging Face name); give one of the two.
            attn_implementation: passed to transformers (``"eager"``, ``"sdpa"``, ``"flash_attention_2"``...).
            quantization: ``"4bit"`` (NF4, QLoRA) or ``"8bit"`` through bitsandbytes, or ``None``/``"none"``;
                the model is prepared for k-bit training before ``lora`` adapters are added.
            **reader_kwargs: :class:`Reader` arguments (``template``, ``max_length``...). Values saved in the
                folder's ``jmlr_reader.json`` are the defaults.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = name_or_path
        try:
            from jmlr.models import resolve

            path = resolve(name_or_path)
        except ImportError:  # jmlr.models unavailable: treat the name as an HF name or path
            pass
        if dtype is not None and torch_dtype is not None and _as_dtype(dtype) != _as_dtype(torch_dtype):
            raise ValueError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree; give one of them")
        torch_dtype = _as_dtype(dtype if dtype is not None else torch_dtype)
        from .loading import check_quantization, quantization_config

        quant = check_quantization(quantization, "quantization")  # before anything loads
        saved: dict = {}
        cfg_file = Path(path) / READER_CONFIG_NAME
        if cfg_file.is_file():
            try:
                saved = json.loads(cfg_file.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{cfg_file}: not valid JSON ({e}); expected the reader settings") from e
        kwargs = {**saved.get("reader", {}), **reader_kwargs}
        load_kw: dict = {"trust_remote_code": trust_remote_code}
        if torch_dtype is not None:
            load_kw["dtype"] = torch_dtype
        if attn_implementation:
            load_kw["attn_implementation"] = attn_implementation
        if quant != "none":
            load_kw["quantization_config"] = quantization_config(quant, torch_dtype)
            dev = torch.device(device) if device is not None else torch.device(  # this rank's GPU under torchrun
                "cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))) \
                if torch.cuda.is_available() else torch.device("cpu")
            load_kw["device_map"] = {"": dev}
            device = None  # bitsandbytes weights are placed at load and cannot be moved afterwards
        adapter = Path(path) / "adapter_config.json"
        if adapter.is_file():
            from peft import PeftModel

            base_path = json.loads(adapter.read_text()).get("base_model_name_or_path")
            if not base_path:
                raise ValueError(f"{adapter}: base_model_name_or_path is empty; cannot find the base model")
            model = AutoModelForCausalLM.from_pretrained(base_path, **load_kw)
            model = cls._prepare_kbit(model, quant, gradient_checkpointing)
            if gradient_checkpointing:
                cls._enable_gc(model)
            model = PeftModel.from_pretrained(model, path, is_trainable=True)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **load_kw)
            model = cls._prepare_kbit(model, quant, gradient_checkpointing)
            if gradient_checkpointing:
                cls._enable_gc(model)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if device is not None:
            model = model.to(device)
        reader = cls(model, tokenizer, **kwargs)
        if lora is not None:
            if adapter.is_file():
                raise ValueError(f"{path} already holds a LoRA adapter; do not pass lora= when loading it")
            reader.add_lora(lora)
        return reader

    @staticmethod
    def _prepare_kbit(model, quant: str, gradient_checkpointing: bool):
        """peft's k-bit preparation (fp32 norms and head, input grads) for QLoRA; a no-op without quantisation."""
        if quant == "none":
            return model
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                               gradient_checkpointing_kwargs={"use_reentrant": False})

    @staticmethod
    def _enable_gc(model) -> None:
        kw = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
        if getattr(model, "config", None) is not None:
            model.config.use_cache = False

    def enable_gradient_checkpointing(self) -> "Reader":
        """Turn on activation checkpointing (non-reentrant; active while the model is in train mode)."""
        self._enable_gc(self._base_model())
        return self

    def add_lora(self, lora: Any) -> "Reader":
        """Wrap the model with LoRA adapters (``peft.LoraConfig`` or a dict of its arguments).

        Only the adapter weights stay trainable. Target modules default to peft's choice for the architecture.
        """
        from peft import LoraConfig, get_peft_model

        if isinstance(lora, Mapping):
            lora = LoraConfig(**{"task_type": "CAUSAL_LM", **lora})
        if not isinstance(lora, LoraConfig):
            raise ValueError(f"lora must be a peft.LoraConfig or a dict, got {type(lora).__name__}")
        if self.is_peft:
            raise ValueError("the model already has peft adapters")
        self.model = get_peft_model(self.model, lora)
        self._inspect_forward()
        return self

    def merge_lora(self) -> "Reader":
        """Fold the LoRA adapters into the base weights (for fast inference or a full-model save)."""
        if self.is_peft:
            self.model = self.model.merge_and_unload()
            self._inspect_forward()
        return self

    @property
    def is_peft(self) -> bool:
        """Whether the model is wrapped by peft."""
        return hasattr(self.model, "peft_config") and hasattr(self.model, "get_base_model")

    def _base_model(self):
        return self.model.get_base_model() if self.is_peft else self.model

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters that require gradients (the adapters only, with LoRA)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def save_pretrained(self, save_directory: str | os.PathLike, state_dict: dict | None = None) -> None:
        """Write the model (safetensors; with LoRA only the adapter), the tokenizer and ``jmlr_reader.json``.

        The folder is written under a temporary name and moved into place, so a crash never leaves a
        half-written checkpoint where a good one was. ``state_dict``: the weights to write instead of the
        model's own, e.g. the full state an FSDP-sharded model gathered
        (:func:`jmlr.reader.loading.full_state_dict`), written by rank 0.
        """
        out = Path(save_directory)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            if state_dict is not None:
                self.model.save_pretrained(str(tmp), state_dict=state_dict)
            else:
                self.model.save_pretrained(str(tmp))
            self.tokenizer.save_pretrained(str(tmp))
            settings = {
                "template": self.template, "max_length": self.max_length,
                "max_passage_tokens": self.max_passage_tokens, "target": self.target,
                "micro_batch": self.micro_batch,
            }
            (tmp / READER_CONFIG_NAME).write_text(json.dumps({"reader": settings}, indent=2))
            if out.exists():
                old = out.with_name(f".{out.name}.old-{os.getpid()}")
                os.replace(out, old)
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def load_weights(self, folder: str | os.PathLike) -> None:
        """Load weights written by :meth:`save_pretrained` into THIS model, in place (optimizer references
        stay valid): the adapter for a peft model, else the full model's safetensors (sharded or not)."""
        from safetensors.torch import load_file

        from .loading import is_sharded

        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such reader folder (expected a save_pretrained output)")
        if is_sharded(self.model):
            return self._load_sharded_weights(folder)
        if self.is_peft:
            from peft import set_peft_model_state_dict

            f = folder / "adapter_model.safetensors"
            if not f.is_file():
                raise FileNotFoundError(f"{f} is missing: the reader has LoRA adapters but {folder} holds none")
            result = set_peft_model_state_dict(self.model, load_file(str(f)))
            bad = [k for k in getattr(result, "unexpected_keys", []) or []]
            if bad:
                raise ValueError(f"{f}: adapter weights {bad[:5]} do not match this model's adapters")
            return
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (folder / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            raise FileNotFoundError(f"{folder}: neither model.safetensors nor model.safetensors.index.json found")
        state: dict = {}
        for name in files:
            state.update(load_file(str(folder / name)))
        result = self.model.load_state_dict(state, strict=False)
        tied = set()
        if getattr(getattr(self.model, "config", None), "tie_word_embeddings", False):
            out_emb = self.model.get_output_embeddings()
            tied = {n for n, p in self.model.named_parameters(remove_duplicate=False)
                    if out_emb is not None and p is out_emb.weight}
        missing = [k for k in result.missing_keys if k not in tied]
        if missing or result.unexpected_keys:
            raise ValueError(f"{folder}: weights do not match the model (missing {missing[:5]}, "
                             f"unexpected {result.unexpected_keys[:5]})")

    def _load_sharded_weights(self, folder: Path) -> None:
        """:meth:`load_weights` for an FSDP2-sharded model (a collective): rank 0 reads the saved files, every
        rank keeps its own shard of them."""
        import torch.distributed as dist

        from .loading import load_full_state_dict

        state: dict = {}
        error = None
        if dist.get_rank() == 0:
            try:
                state = self._read_full_state(folder)
            except Exception as e:  # noqa: BLE001 (told to every rank first: none is left waiting)
                error = e
        failed = [error is not None]
        dist.broadcast_object_list(failed, src=0)
        if failed[0]:
            raise error if error is not None else RuntimeError(
                f"{folder}: rank 0 could not read the reader weights (its error names the cause)")
        load_full_state_dict(self.model, state, strict=False)

    def _read_full_state(self, folder: Path) -> dict:
        """The saved weights of ``folder`` under THIS model's state-dict names (rank 0 of a sharded load)."""
        from safetensors.torch import load_file

        state: dict = {}
        if self.is_peft:
            f = folder / "adapter_model.safetensors"
            saved = load_file(str(f)) if f.is_file() else {}
            # peft writes adapter keys without the adapter name; the live model's keys carry it
            name = getattr(self.model, "active_adapter", "default")
            names = name if isinstance(name, (list, tuple)) else [name]
            live = {}
            for k in self.model.state_dict().keys():
                plain = k
                for n in names:
                    plain = plain.replace(f".modules_to_save.{n}.", ".").replace(f".{n}.", ".")
                live.setdefault(plain, k)
            state = {live[k]: v for k, v in saved.items() if k in live}
            if len(state) != len(saved) or not saved:
                raise ValueError(f"{f}: adapter weights do not match this model's adapters")
        else:
            index = folder / "model.safetensors.index.json"
            files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file()
                     else ["model.safetensors"])
            for name in files:
                state.update(load_file(str(folder / name)))
            out_emb = self.model.get_output_embeddings()
            if getattr(self.model.config, "tie_word_embeddings", False) and out_emb is not None:
                tied = [n for n, p in self.model.named_parameters(remove_duplicate=False) if p is out_emb.weight]
                have = next((state[n] for n in tied if n in state), None)
                if have is not None:  # the tied LM head is saved once, under the input embedding's name
                    state.update({n: have for n in tied})
        return state

    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter."""
        return next(self.model.parameters()).device

    def to(self, device) -> "Reader":
        """Move the model to ``device``."""
        self.model.to(device)
        return self

    def __repr__(self) -> str:
        name = getattr(getattr(self._base_model(), "config", None), "_name_or_path", "") or type(self._base_model()).__name__
        return (f"Reader({name!r}, template={self.template!r}, max_length={self.max_length}, "
                f"target={self.target!r}, peft={self.is_peft})")

    # ------------------------------------------------------------------ prompts and tokenization
    def _inspect_forward(self) -> None:
        params = inspect.signature(self._base_model().forward).parameters
        self._keep_arg = next((n for n in ("logits_to_keep", "num_logits_to_keep") if n in params), None)
        self._pass_positions = "position_ids" in params

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
        ids = self.tokenizer(list(texts), add_special_tokens=self._add_special)["input_ids"]
        if self._appends_eos is None:
            eos = self.tokenizer.eos_token_id
            with_sp = self.tokenizer("x", add_special_tokens=self._add_special)["input_ids"]
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

    # ------------------------------------------------------------------ forward machinery
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
        long, the passages share the token budget (see the module notes).
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

    # ------------------------------------------------------------------ generation
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
                          add_special_tokens=self._add_special).to(self.device)
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
