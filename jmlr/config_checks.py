"""The range and consistency checks of a :class:`jmlr.config.TrainConfig`, run by ``load_config`` before anything
loads: one ``ValueError`` that names every bad key."""
from __future__ import annotations

import math

from jmlr.retriever.pooling import POOLINGS

__all__ = ["validate"]

_CHOICES = {
    "optim.schedule": ("linear", "cosine", "constant"),
    "optim.nonfinite": ("skip", "raise", "ignore"),
    "reader.template": ("jmlr", "chat", "freetext"),
    "reader.target": ("letter", "letter_text", "option_text"),
    "index.storage": ("fp32", "fp16", "bf16", "int8", "float32", "float16", "bfloat16"),
    "data.long_prompts": ("refuse", "truncate"),
}
# key -> (lower bound, inclusive?); None values pass for Optional keys.
_BOUNDS = {
    "eval_every": (0, True), "checkpoint_every": (0, True), "log_every": (0, True),
    "data.max_train": (1, True), "data.max_eval": (1, True),
    "retriever.max_length": (1, True), "retriever.lr": (0, True), "retriever.temperature": (0, False),
    "reader.max_length": (8, True), "reader.lora_r": (1, True), "reader.lora_alpha": (0, False),
    "reader.lr": (0, True),
    "index.top_k": (1, True), "index.over_retrieve": (0, True), "index.sample_m": (0, True),
    "refresh.every": (0, True), "refresh.probe_size": (1, True),
    "optim.steps": (1, True), "optim.batch_size": (1, True), "optim.grad_accum": (1, True),
    "optim.warmup_steps": (0, True), "optim.max_grad_norm": (0, True), "optim.weight_decay": (0, True),
    "optim.max_time_s": (0, True),
    "optim.max_nonfinite_skips": (0, True),
}


def _get(cfg, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def validate(cfg):
    """Check every value's range before anything loads; raise one ``ValueError`` naming each bad key.

    >>> validate(load_config(None, ["optim.grad_accum=0"]))  # doctest: +SKIP
    ValueError: invalid config: optim.grad_accum must be >= 1, got 0
    """
    problems = []
    for key, (low, inclusive) in _BOUNDS.items():
        try:
            v = _get(cfg, key)
        except AttributeError:
            continue
        if v is None:
            continue
        if isinstance(v, float) and not math.isfinite(v):
            problems.append(f"{key} must be a finite number, got {v!r}")
        elif v < low or (v == low and not inclusive):
            problems.append(f"{key} must be {'>=' if inclusive else '>'} {low}, got {v!r}")
    for key, allowed in _CHOICES.items():
        try:
            v = _get(cfg, key)
        except AttributeError:
            continue
        if v not in allowed:
            problems.append(f"{key} must be one of {', '.join(allowed)}, got {v!r}")
    pooling = cfg.retriever.pooling  # None = the model folder's own; else modes of jmlr.retriever.POOLINGS, '+'-joined
    if pooling is not None:
        bad = [m for m in str(pooling).split("+") if m not in POOLINGS]
        if bad:
            problems.append(f"retriever.pooling must be one of {', '.join(POOLINGS)} (or several joined by '+'), "
                            f"got {pooling!r}")
    if cfg.index.sample_m and cfg.index.sample_m > cfg.index.top_k:
        problems.append(f"index.sample_m={cfg.index.sample_m} must be in 1..index.top_k={cfg.index.top_k} (0 = off)")
    if "temperature" in cfg.loss.options:
        problems.append(f"loss.options.temperature={cfg.loss.options['temperature']!r}: the loss's temperature is "
                        "retriever.temperature (one temperature for every softmax(s/tau) of the retriever); set "
                        "retriever.temperature instead")
    if cfg.dist.strategy == "deepspeed":
        problems.append("dist.strategy=deepspeed is not supported: use dist.strategy=fsdp (FSDP2 through accelerate; "
                        "it shards the reader like ZeRO-3) or ddp")
    elif cfg.dist.strategy not in ("ddp", "fsdp"):
        problems.append(f"dist.strategy must be one of ddp, fsdp, got {cfg.dist.strategy!r}")
    st = cfg.refresh.staleness_threshold
    if st is not None and not 0 < st <= 1:
        problems.append(f"refresh.staleness_threshold must be in (0, 1], got {st!r}")
    ce = cfg.refresh.check_every
    if ce is not None and ce < 1:
        problems.append(f"refresh.check_every must be >= 1 step between staleness checks (empty = half of "
                        f"refresh.every), got {ce!r}")
    if not str(cfg.output_dir).strip():
        problems.append("output_dir must be a folder path, got ''")
    if problems:
        raise ValueError("invalid config: " + "; ".join(problems))
    return cfg
