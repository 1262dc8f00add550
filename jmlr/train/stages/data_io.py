"""Stage I/O: seeding, atomic JSON, the reader a stage trains, QA/corpus resolution (``demo`` or a file),
JSONL records with errors naming the file and line."""
from __future__ import annotations

import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from jmlr.core.fs import write_json_atomic as _write
from jmlr.data import Corpus, iter_records, load_qa
from jmlr.data.demo import demo_corpus, demo_qa
from jmlr.reader import Reader
from jmlr.reader.loading import reader_load_kwargs

from .config import StageModelConfig

__all__ = ["seed_everything", "write_json_atomic", "load_reader", "resolve_qa", "resolve_corpus",
           "add_special_tokens_for", "iter_json_lines"]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON through a temporary file, fsync and ``os.replace`` (:mod:`jmlr.core.fs`)."""

    return _write(path, obj, default=float, ensure_ascii=False, sort_keys=False)


def load_reader(cfg: StageModelConfig, **reader_kwargs):
    """A :class:`jmlr.reader.Reader` from a :class:`StageModelConfig` (LoRA and checkpointing applied)."""

    import torch


    load_kw = reader_load_kwargs(cfg, prefix="model")  # LoRA, dtype, attention, quantisation; checked first
    device = cfg.device
    if device == "auto":  # under torchrun each rank takes its own GPU
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
    return Reader.from_pretrained(cfg.model, template=cfg.template, max_length=cfg.max_length,
                                  gradient_checkpointing=cfg.gradient_checkpointing,
                                  trust_remote_code=cfg.trust_remote_code, device=device, **load_kw, **reader_kwargs)


def resolve_qa(src: str, fmt: str, split: str = "train") -> list:
    """QA examples from a file in format ``fmt``, or the bundled demo split when ``src == "demo"``."""
    if src == "demo":

        return demo_qa(split)

    return load_qa(fmt, src)


def resolve_corpus(src: str, fmt: str | None = None):
    """A :class:`jmlr.data.Corpus` from a file/folder, or the demo corpus when ``src == "demo"``."""
    if src == "demo":

        return demo_corpus()

    return Corpus.load(src, fmt=fmt or None)


def add_special_tokens_for(reader) -> bool:
    """Whether prompts of this reader are tokenized with the tokenizer's special tokens (not for chat, whose
    template renders them itself) -- the same rule the Reader uses for scoring and generation."""
    return bool(getattr(reader, "add_special_tokens", reader.template != "chat"))


def iter_json_lines(path: str | os.PathLike, expected: str) -> Iterable[tuple[str, dict]]:
    """``("line N", record)`` for a JSONL file (or a JSON array), errors naming the file and line."""

    return iter_records(path, expected)


