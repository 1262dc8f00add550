"""From config keys to :meth:`jmlr.reader.Reader.from_pretrained` arguments, for big readers.

One place turns the ``reader.*`` keys (:class:`jmlr.config.ReaderConfig`, and the stage recipes' ``model.*``)
into loading arguments, and checks them before any model loads:

* ``torch_dtype``: weights dtype (``bf16``, ``fp16``, ``fp32``, ``auto``); empty keeps transformers' default.
* ``attn_implementation``: ``eager``, ``sdpa``, ``flash_attention_2``...; empty keeps transformers' choice.
* ``quantization``: ``none``, ``4bit`` (QLoRA: NF4 with double quantisation, compute in ``torch_dtype`` or
  bf16) or ``8bit``, through bitsandbytes. Quantised weights do not train: it needs ``lora``.
* the LoRA adapter: ``lora_r``, ``lora_alpha``, ``lora_dropout``, ``lora_target_modules`` (module names, or
  ``all-linear``; empty: peft's default for the architecture) and ``lora_train_lm_head`` (the LM head trains in
  full beside the adapters, peft's ``modules_to_save``, as JMLR-13B did).

>>> reader = Reader.from_pretrained(cfg.reader.model, **reader_load_kwargs(cfg.reader))   # doctest: +SKIP
"""
from __future__ import annotations

import importlib.util
from typing import Any

QUANTIZATION = ("none", "4bit", "8bit")
_QUANT_ALIASES = {"": "none", "no": "none", "off": "none", "false": "none", "int4": "4bit", "nf4": "4bit",
                  "4": "4bit", "int8": "8bit", "8": "8bit"}


class MissingDependencyError(ImportError, ValueError):
    """An optional package a setting needs is not installed (a ValueError too, so the CLI prints one line)."""


def has_bitsandbytes() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def normalize_quantization(value: Any, key: str = "reader.quantization") -> str:
    q = "none" if value is None or value is False else str(value).strip().lower()
    q = _QUANT_ALIASES.get(q, q)
    if q not in QUANTIZATION:
        raise ValueError(f"{key}={value!r}: expected one of {', '.join(QUANTIZATION)}")
    return q


def check_quantization(quantization: Any, key: str = "reader.quantization") -> str:
    """The normalised setting; raises :class:`MissingDependencyError` when bitsandbytes is missing."""
    q = normalize_quantization(quantization, key)
    if q != "none" and not has_bitsandbytes():
        raise MissingDependencyError(
            f"{key}={q} loads the reader through bitsandbytes, which is not installed: pip install bitsandbytes "
            f"(needs a CUDA GPU), or set {key}=none")
    return q


def target_modules(value: Any) -> list[str] | str | None:
    """``lora_target_modules`` as peft takes it: a list of names, ``"all-linear"``, or None (peft's default)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    names = [str(v).strip() for v in value if str(v).strip()]
    if not names:
        return None
    if names == ["all-linear"]:
        return "all-linear"
    return names


def _lora_accepts(name: str) -> bool:
    import dataclasses

    from peft import LoraConfig

    return name in {f.name for f in dataclasses.fields(LoraConfig)}


def lora_kwargs(cfg, prefix: str = "reader") -> dict | None:
    """The ``peft.LoraConfig`` arguments named by ``cfg`` (None when ``cfg.lora`` is off)."""
    if not getattr(cfg, "lora", False):
        return None
    kw: dict[str, Any] = {"r": int(cfg.lora_r), "lora_alpha": int(cfg.lora_alpha)}
    dropout = float(getattr(cfg, "lora_dropout", 0.0) or 0.0)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{prefix}.lora_dropout={dropout}: expected a probability in [0, 1)")
    if dropout:
        kw["lora_dropout"] = dropout
    tm = target_modules(getattr(cfg, "lora_target_modules", None))
    if tm is not None:
        kw["target_modules"] = tm
    if getattr(cfg, "lora_train_lm_head", False):
        kw["modules_to_save"] = ["lm_head"]
        if _lora_accepts("ensure_weight_tying"):  # a head tied to the input embeddings stays tied
            kw["ensure_weight_tying"] = True
    if kw["r"] < 1:
        raise ValueError(f"{prefix}.lora_r={kw['r']}: expected a rank >= 1")
    return kw


def reader_load_kwargs(cfg, prefix: str = "reader") -> dict:
    """``Reader.from_pretrained`` keyword arguments for the big-reader keys of ``cfg`` (a ReaderConfig or a
    StageModelConfig), checked before anything loads."""
    q = check_quantization(getattr(cfg, "quantization", "none"), f"{prefix}.quantization")
    lora = lora_kwargs(cfg, prefix)
    if q != "none" and lora is None:
        raise ValueError(f"{prefix}.quantization={q}: quantised weights cannot be trained in full; set "
                         f"{prefix}.lora=true (QLoRA)")
    out: dict[str, Any] = {"lora": lora}
    if getattr(cfg, "torch_dtype", None):
        out["torch_dtype"] = cfg.torch_dtype
    if getattr(cfg, "attn_implementation", None):
        out["attn_implementation"] = cfg.attn_implementation
    if q != "none":
        out["quantization"] = q
    return out


def quantization_config(quantization: str, compute_dtype=None):
    """A ``transformers.BitsAndBytesConfig`` for ``4bit`` (NF4, double quantisation) or ``8bit``."""
    import torch
    from transformers import BitsAndBytesConfig

    q = check_quantization(quantization)
    if q == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype if isinstance(compute_dtype, torch.dtype)
                                  else torch.bfloat16)
    return BitsAndBytesConfig(load_in_8bit=True)


# ----------------------------------------------------------------------------------------- FSDP2 (dist.strategy=fsdp)
def is_sharded(model) -> bool:
    """Whether ``model`` was sharded by FSDP2 ``fully_shard`` (its parameters are DTensors)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without distributed
        return False
    return isinstance(model, FSDPModule)


def shard_reader(reader, mesh, reshard_after_forward: bool = True):
    """Shard ``reader.model`` over ``mesh`` with FSDP2: ``fully_shard`` on every transformer block (the classes
    in the HF model's ``_no_split_modules``), then on the model root (embeddings, final norm, LM head; a peft
    root for LoRA, so frozen base weights and adapters are sharded alike). Calls go through ``reader.model``
    as before: each sharded module gathers its weights for its own forward and frees them after.
    """
    from torch.distributed.fsdp import fully_shard

    base = reader.base_model
    names = set(getattr(base, "_no_split_modules", None) or [])
    blocks = [m for m in base.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"dist.strategy=fsdp: {type(base).__name__} names no transformer block classes "
                         "(_no_split_modules), so there is nothing to shard it by; use dist.strategy=ddp")
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(reader.model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return reader


def full_state_dict(model) -> dict:
    """The full, unsharded state dict of an FSDP2 ``model`` on rank 0's CPU (an empty dict elsewhere).

    A collective: every rank calls it (FSDP gathers each parameter from all ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(model, state: dict, strict: bool = True):
    """Load a full state dict held by rank 0 (the others pass ``{}``) into an FSDP2 ``model`` in place: each
    rank keeps its own shard. A collective; returns the missing and unexpected keys."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    return set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True,
                                                                       broadcast_from_rank0=True, strict=strict))
