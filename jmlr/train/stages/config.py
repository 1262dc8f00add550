"""Stage config sections and loading: the reader to train, the optimisation, the run folder and resume keys,
and :func:`load_stage_config` (YAML + ``key=value``, unknown keys answered with the stage's own keys)."""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from jmlr.core.fields import config_field as _f
from jmlr.config import ModelLoadConfig, all_keys, load_config, save_config
from jmlr.train.loop import is_main_rank

__all__ = ["StageModelConfig", "StageOptimConfig", "StageRunConfig", "check_optim", "load_stage_config",
           "save_stage_config"]


@dataclass
class StageModelConfig(ModelLoadConfig):
    """The reader a stage starts from."""

    model: str = _f("smollm2-135m", "causal LM to train: a jmlr alias (smollm2-135m), an HF folder (e.g. the "
                                    "model/ folder of an earlier stage) or an HF name")
    template: str = _f("jmlr", "prompt template of the reader: jmlr (base models), chat (instruct models) or freetext")
    max_length: int = _f(512, "max tokens per training sequence (prompt + response)")
    device: str = _f("auto", "where to run: auto (cuda when available, else cpu), cpu, cuda, cuda:1, ...")


@dataclass
class StageOptimConfig:
    """Optimisation: step budget, batch, accumulation, AdamW, schedule, precision."""

    steps: int = _f(100, "step budget: optimizer steps to run (training also stops when epochs is reached)")
    epochs: float = _f(0.0, "stop after this many passes over the data (0 = only the step budget counts)")
    batch_size: int = _f(4, "sequences (or pairs, for DPO) per micro-batch")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    lr: float = _f(2e-5, "peak learning rate")
    warmup_steps: int = _f(0, "linear warmup steps")
    schedule: str = _f("cosine", "learning-rate schedule after warmup: linear, cosine or constant")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 = off)")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    precision: str = _f("auto", "autocast precision: auto (bf16 only where the device runs it natively, else fp32), fp32, bf16 or fp16; weights stay fp32")



@dataclass
class StageRunConfig:
    """The run-folder keys every training stage has (its config adds ``model``, ``data`` and ``optim``)."""

    output_dir: str = _f("runs/stage", "run folder: metrics.jsonl, summary.json, config.yaml, model/, checkpoints/")
    seed: int = _f(0, "random seed")
    log_every: int = _f(1, "write a metrics row every N steps")
    checkpoint_every: int = _f(0, "write a resumable checkpoint (checkpoints/step-N) every N steps and after the "
                                  "last one; 0 = none")
    resume: str = _f("", "continue a run: latest (the newest good checkpoint in output_dir/checkpoints) or a "
                         "checkpoint folder; '' = a fresh run")
    overwrite: bool = _f(False, "a fresh run first removes an earlier run's checkpoints, metrics, summary and "
                                "model from output_dir (without it a folder holding checkpoints is refused, and "
                                "metrics.jsonl is appended to)")


def check_optim(cfg: StageOptimConfig) -> None:
    """Raise ``ValueError`` on impossible optimisation settings, naming the key."""
    for key in ("steps", "batch_size", "grad_accum"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"optim.{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.lr <= 0:
        raise ValueError(f"optim.lr must be > 0, got {cfg.lr}")
    if cfg.epochs < 0:
        raise ValueError(f"optim.epochs must be >= 0, got {cfg.epochs}")



def save_stage_config(cfg, out: str | os.PathLike) -> None:
    """Write the resolved config next to the run's outputs (``config.yaml``)."""

    if not is_main_rank():
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    save_config(cfg, Path(out) / "config.yaml")



# ------------------------------------------------------------------------------------------ config loading
def _check_keys(cls, mapping: Any, prefix: str, where: str, root=None) -> None:
    """Unknown keys of a stage config raise with a suggestion drawn from THAT config's keys."""
    import dataclasses
    import difflib
    import typing


    if not isinstance(mapping, dict):
        return
    root = root or cls
    hints = typing.get_type_hints(cls)
    for k, v in mapping.items():
        key = prefix + str(k)
        if k not in hints:
            known = all_keys(root)
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(sorted(known))}"
            raise ValueError(f"unknown config key '{key}'{where} for {root.__name__}{hint}")
        tp = hints[k]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            _check_keys(tp, v, key + ".", where, root)


def load_stage_config(cls, path: str | os.PathLike | None = None, overrides: Sequence[str] | None = None):
    """Defaults of the dataclass ``cls``, then the YAML at ``path``, then ``key=value`` overrides.

    A thin layer over :func:`jmlr.config.load_config` (same coercion rules) whose unknown-key errors suggest
    keys of ``cls`` rather than of :class:`~jmlr.config.TrainConfig`.
    """
    import yaml


    if path is not None and Path(path).is_file():
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError:
            data = None  # load_config reports the YAML error with the file name
        _check_keys(cls, data, "", f" in {path}")
    for item in overrides or []:
        if "=" in item:
            key = item.split("=", 1)[0].strip()
            node: dict = {}
            cur = node
            parts = key.split(".")
            for p in parts[:-1]:
                cur[p] = {}
                cur = cur[p]
            cur[parts[-1]] = None
            _check_keys(cls, node, "", "")
    return load_config(path, list(overrides or []), cls=cls)
