"""Loading and saving a :class:`~jmlr.reader.Reader`'s weights: the :class:`WeightsMixin` part of the reader.

* :meth:`~WeightsMixin.from_pretrained`: a bundled alias, an HF name or path, or a folder written by
  :meth:`~WeightsMixin.save_pretrained` (a full model, or a LoRA adapter over its recorded base model), with
  optional k-bit quantisation (bitsandbytes, :mod:`jmlr.reader.loading`), LoRA adapters and activation
  checkpointing.
* LoRA: :meth:`~WeightsMixin.add_lora`, :meth:`~WeightsMixin.merge_lora`, :attr:`~WeightsMixin.is_peft`,
  :attr:`~WeightsMixin.base_model` (the transformers model under peft's wrapper).
* :meth:`~WeightsMixin.save_pretrained` (atomic) and :meth:`~WeightsMixin.load_weights` (in place, also into an
  FSDP2-sharded model).

transformers and peft are imported where they are used, so that importing the reader stays cheap.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from jmlr.core.fs import atomic_dir
from jmlr.models import resolve

from .loading import check_quantization, is_sharded, load_full_state_dict, quantization_config
from .prefix import is_peft_model, unwrap_peft

__all__ = ["WeightsMixin", "READER_CONFIG_NAME"]

_R = TypeVar("_R", bound="WeightsMixin")  # the Reader class (methods return the reader itself)

READER_CONFIG_NAME = "jmlr_reader.json"
_DTYPES = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
}


def _as_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    if dtype == "auto":
        return dtype
    raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)} or a torch.dtype")


def _read_model_weights(folder: Path) -> dict:
    """The full model's weights a ``save_pretrained`` folder holds (one safetensors file or an indexed set)."""
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
    return state


class WeightsMixin:
    """Construction, LoRA and persistence of a :class:`~jmlr.reader.Reader` (``self.model``, ``self.tokenizer``)."""

    @classmethod
    def from_pretrained(
        cls: type[_R],
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
    ) -> _R:
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

        path = resolve(name_or_path)
        if dtype is not None and torch_dtype is not None and _as_dtype(dtype) != _as_dtype(torch_dtype):
            raise ValueError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree; give one of them")
        torch_dtype = _as_dtype(dtype if dtype is not None else torch_dtype)
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

    def enable_gradient_checkpointing(self: _R) -> _R:
        """Turn on activation checkpointing (non-reentrant; active while the model is in train mode)."""
        self._enable_gc(self.base_model)
        return self

    def add_lora(self: _R, lora: Any) -> _R:
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

    def merge_lora(self: _R) -> _R:
        """Fold the LoRA adapters into the base weights (for fast inference or a full-model save)."""
        if self.is_peft:
            self.model = self.model.merge_and_unload()
            self._inspect_forward()
        return self

    @property
    def is_peft(self) -> bool:
        """Whether the model is wrapped by peft."""
        return is_peft_model(self.model)

    @property
    def base_model(self):
        """The transformers model itself: :attr:`model` without peft's wrapper (``model`` when there is none)."""
        return unwrap_peft(self.model)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters that require gradients (the adapters only, with LoRA)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def save_pretrained(self, save_directory: str | os.PathLike, state_dict: dict | None = None) -> None:
        """Write the model (safetensors; with LoRA only the adapter), the tokenizer and ``jmlr_reader.json``.

        The folder is written under a temporary name, fsynced and moved into place
        (:func:`jmlr.core.fs.atomic_dir`), so a crash never leaves a half-written checkpoint where a good one
        was. ``state_dict``: the weights to write instead of the model's own, e.g. the full state an
        FSDP-sharded model gathered (:func:`jmlr.reader.loading.full_state_dict`), written by rank 0.
        """
        with atomic_dir(save_directory) as tmp:
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

    def load_weights(self, folder: str | os.PathLike) -> None:
        """Load weights written by :meth:`save_pretrained` into THIS model, in place (optimizer references
        stay valid): the adapter for a peft model, else the full model's safetensors (sharded or not)."""
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
        result = self.model.load_state_dict(_read_model_weights(folder), strict=False)
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
            state = _read_model_weights(folder)
            out_emb = self.model.get_output_embeddings()
            if getattr(self.model.config, "tie_word_embeddings", False) and out_emb is not None:
                tied = [n for n, p in self.model.named_parameters(remove_duplicate=False) if p is out_emb.weight]
                have = next((state[n] for n in tied if n in state), None)
                if have is not None:  # the tied LM head is saved once, under the input embedding's name
                    state.update({n: have for n in tied})
        return state

