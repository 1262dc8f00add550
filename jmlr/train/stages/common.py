"""What every stage recipe shares: config sections, reader loading, sequence log-probs and the training loop.

The loop (:func:`train_loop`) reads top to bottom like nanoGPT's: for each optimizer step it takes
``grad_accum`` micro-batches, runs each forward under the autocast of ``optim.precision``, divides the summed loss by the
number of loss units of the WHOLE step (tokens for language modelling, pairs for DPO, so that gradient
accumulation gives the same gradient as one big batch), steps AdamW with warmup + schedule and clipping,
logs a JSONL row, and stops at the step budget (or when the data runs out). At the end it saves the reader
with :meth:`jmlr.reader.Reader.save_pretrained` (atomic) and writes ``summary.json`` (wall time, tokens,
FLOPs estimate ``6 * N * tokens``).

:func:`sequence_logps` computes ``sum_t log p(y_t | y_<t)`` over the positions whose label is not ``-100``,
projecting ONLY those positions through the LM head (the head of a 49k-word vocabulary costs more than the
transformer on short responses).
"""
from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from jmlr.config import _f

logger = logging.getLogger("jmlr.train.stages")

IGNORE_INDEX = -100
"""Label value of positions that carry no loss (prompt and padding)."""

__all__ = ["IGNORE_INDEX", "StageModelConfig", "StageOptimConfig", "load_reader", "sequence_logps",
           "right_pad", "train_loop", "StepBatch", "write_json_atomic", "seed_everything", "resolve_qa",
           "resolve_corpus"]


# ------------------------------------------------------------------------------------------ config sections
@dataclass
class StageModelConfig:
    """The reader a stage starts from."""

    model: str = _f("smollm2-135m", "causal LM to train: a jmlr alias (smollm2-135m), an HF folder (e.g. the "
                                    "model/ folder of an earlier stage) or an HF name")
    template: str = _f("jmlr", "prompt template of the reader: jmlr (base models), chat (instruct models) or freetext")
    max_length: int = _f(512, "max tokens per training sequence (prompt + response)")
    lora: bool = _f(False, "train LoRA adapters (peft) instead of all weights")
    lora_r: int = _f(8, "LoRA rank")
    lora_alpha: int = _f(16, "LoRA alpha")
    lora_dropout: float = _f(0.0, "LoRA dropout on the adapter inputs")
    lora_target_modules: list = _f([], "modules that get LoRA adapters: names (q_proj,k_proj,v_proj,o_proj,...) or "
                                       "all-linear; empty = peft's default for the architecture")
    lora_train_lm_head: bool = _f(False, "with LoRA, also train the LM head in full (peft modules_to_save)")
    torch_dtype: Optional[str] = _f(None, "weights dtype at load: bf16, fp16, fp32 or auto (empty: fp32)")
    attn_implementation: Optional[str] = _f(None, "attention kernel: eager, sdpa, flash_attention_2 (empty: "
                                                  "transformers' choice)")
    quantization: str = _f("none", "load the weights in 4bit (QLoRA, NF4) or 8bit through bitsandbytes (needs "
                                   "model.lora=true and a CUDA GPU), or none")
    gradient_checkpointing: bool = _f(False, "recompute activations in backward to save memory")
    trust_remote_code: bool = _f(False, "allow custom model code from the model folder (off by default)")
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


# ------------------------------------------------------------------------------------------ small helpers
def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON through a temporary file, fsync and ``os.replace`` (:mod:`jmlr.fs`)."""
    from jmlr.fs import write_json_atomic as _write

    return _write(path, obj, default=float, ensure_ascii=False, sort_keys=False)


def holds_run_folder(run: Callable) -> Callable:
    """Decorate a stage runner ``run(cfg, ...)``: before anything loads, check ``cfg.optim``'s ranges and that
    ``cfg.output_dir`` can be written, then hold its writer lock for the whole run (a second run into the
    same folder is refused, naming the holder) and remove temporaries left there by a killed run."""
    import functools

    @functools.wraps(run)
    def wrapper(cfg, *args, **kwargs):
        from jmlr.fs import check_writable_dir, clean_stale_tmp, run_folder_lock

        if isinstance(getattr(cfg, "optim", None), StageOptimConfig):
            check_optim(cfg.optim)
        reader = kwargs.get("reader", args[0] if args else None)
        if reader is None and isinstance(getattr(cfg, "model", None), StageModelConfig):
            from jmlr.models import require

            require(cfg.model.model, "model.model")
        out = check_writable_dir(cfg.output_dir, "output_dir")
        with run_folder_lock(out, f"output_dir {out}"):
            clean_stale_tmp(out, locked=True)
            return run(cfg, *args, **kwargs)

    return wrapper


def load_reader(cfg: StageModelConfig, **reader_kwargs):
    """A :class:`jmlr.reader.Reader` from a :class:`StageModelConfig` (LoRA and checkpointing applied)."""
    from jmlr.reader import Reader

    import torch

    from jmlr.reader.loading import reader_load_kwargs

    load_kw = reader_load_kwargs(cfg, prefix="model")  # LoRA, dtype, attention, quantisation; checked first
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return Reader.from_pretrained(cfg.model, template=cfg.template, max_length=cfg.max_length,
                                  gradient_checkpointing=cfg.gradient_checkpointing,
                                  trust_remote_code=cfg.trust_remote_code, device=device, **load_kw, **reader_kwargs)


def resolve_qa(src: str, fmt: str, split: str = "train") -> list:
    """QA examples from a file in format ``fmt``, or the bundled demo split when ``src == "demo"``."""
    if src == "demo":
        from jmlr.data.demo import demo_qa

        return demo_qa(split)
    from jmlr.data import load_qa

    return load_qa(fmt, src)


def resolve_corpus(src: str, fmt: str | None = None):
    """A :class:`jmlr.data.Corpus` from a file/folder, or the demo corpus when ``src == "demo"``."""
    if src == "demo":
        from jmlr.data.demo import demo_corpus

        return demo_corpus()
    from jmlr.data import Corpus

    return Corpus.load(src, fmt=fmt or None)


def add_special_tokens_for(reader) -> bool:
    """Whether prompts of this reader are tokenized with the tokenizer's special tokens (not for chat, whose
    template renders them itself) -- the same rule the Reader uses for scoring and generation."""
    return bool(getattr(reader, "_add_special", reader.template != "chat"))


# ------------------------------------------------------------------------------------------ batching
def right_pad(seqs: Sequence[Sequence[int]], labels: Sequence[Sequence[int]] | None, pad_id: int) -> dict:
    """Right-pad token lists into ``input_ids``/``attention_mask`` (and ``labels`` with ``-100``), all ``(B, L)``.

    Right padding keeps positions ``0..len-1`` for every row, so no ``position_ids`` are needed.
    """
    import torch

    if not seqs:
        raise ValueError("cannot build an empty batch")
    B, L = len(seqs), max(len(s) for s in seqs)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    lab = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
    for i, s in enumerate(seqs):
        n = len(s)
        ids[i, :n] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, :n] = 1
        if labels is not None:
            if len(labels[i]) != n:
                raise ValueError(f"row {i}: {n} tokens but {len(labels[i])} labels")
            lab[i, :n] = torch.as_tensor(list(labels[i]), dtype=torch.long)
    out = {"input_ids": ids, "attention_mask": mask}
    if labels is not None:
        out["labels"] = lab
    return out


def _unwrap(model):
    """The transformers model under a peft wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "peft_config") and hasattr(model, "get_base_model") else model


def sequence_logps(model, input_ids, attention_mask, labels, full_logits: bool = False, position_ids=None):
    """Per-sequence ``sum log p(token)`` over the labelled positions, and the number of those positions.

    Args:
        model: a transformers causal LM (optionally peft-wrapped).
        input_ids, attention_mask, labels: ``(B, L)``; ``labels[b, t]`` is the token expected at position
            ``t`` (usually ``input_ids[b, t]``) or ``-100`` for no loss. Position ``t`` is predicted by the
            hidden state at ``t - 1``. ``attention_mask`` may also be a 4-D ``(B, 1, L, L)`` mask or None
            (document-masked packing, see :func:`jmlr.train.stages.pretrain.document_attention`).
        full_logits: compute logits at every position through ``model(...)`` (the reference path used by
            the tests) instead of projecting only the labelled positions.
        position_ids: ``(B, L)`` positions, when they are not ``0..L-1`` (packed documents).

    Returns:
        ``(logp (B,) float32, n_tokens (B,) long)``.
    """
    import torch
    import torch.nn.functional as F

    tgt = labels[:, 1:]  # (B, L-1): token t+1 predicted from position t
    sel = tgt != IGNORE_INDEX  # (B, L-1)
    B = input_ids.shape[0]
    lm = _unwrap(model)
    body = lm.get_decoder() if hasattr(lm, "get_decoder") else None
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    extra = {} if position_ids is None else {"position_ids": position_ids}
    if full_logits or body is None or head is None or body is lm:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra).logits[:, :-1]
        logits = logits[sel].float()  # (M, V)
    else:
        hidden = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra)[0]  # (B, L, H)
        logits = head(hidden[:, :-1][sel]).float()  # (M, V): only the labelled positions
        cap = getattr(getattr(lm, "config", None), "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
    token_logp = -F.cross_entropy(logits, tgt[sel], reduction="none")  # (M,)
    rows = torch.arange(B, device=input_ids.device).unsqueeze(1).expand_as(sel)[sel]  # (M,)
    logp = torch.zeros(B, device=token_logp.device, dtype=token_logp.dtype).index_add(0, rows, token_logp)
    return logp, sel.sum(-1)


# ------------------------------------------------------------------------------------------ the loop
@dataclass
class StepBatch:
    """One micro-batch: tensors for the loss function plus its bookkeeping.

    Attributes:
        tensors: whatever the stage's loss function needs (``input_ids``, ``labels``...).
        n_units: loss units it holds (labelled tokens for LM stages, pairs for DPO); the step's loss is the
            sum over its micro-batches divided by their total units.
        n_tokens: non-padding tokens the policy forwards (for throughput and the FLOPs estimate).
        epoch: the data epoch it came from (a float, for the ``epochs`` limit).
    """

    tensors: dict
    n_units: int
    n_tokens: int
    epoch: float = 0.0


LossFn = Callable[[Any, dict], "tuple[Any, dict]"]


def _scheduler(optim, cfg: StageOptimConfig):
    from transformers import get_scheduler

    names = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
    if cfg.schedule not in names:
        raise ValueError(f"unknown optim.schedule {cfg.schedule!r}; expected linear, cosine or constant")
    return get_scheduler(names[cfg.schedule], optim, num_warmup_steps=cfg.warmup_steps,
                         num_training_steps=max(cfg.steps, 1))


def check_optim(cfg: StageOptimConfig) -> None:
    """Raise ``ValueError`` on impossible optimisation settings, naming the key."""
    for key in ("steps", "batch_size", "grad_accum"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"optim.{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.lr <= 0:
        raise ValueError(f"optim.lr must be > 0, got {cfg.lr}")
    if cfg.epochs < 0:
        raise ValueError(f"optim.epochs must be >= 0, got {cfg.epochs}")


def train_loop(
    *,
    stage: str,
    reader,
    batches: Iterator[StepBatch],
    loss_fn: LossFn,
    optim_cfg: StageOptimConfig,
    output_dir: str | os.PathLike,
    log_every: int = 1,
    progress: bool = True,
    save: bool = True,
    extra_flops: Callable[[], float] | None = None,
    extra_summary: dict | None = None,
    on_step: Callable[[int, dict], None] | None = None,
) -> dict:
    """Train ``reader.model`` on ``batches`` with ``loss_fn`` and return the run summary.

    Args:
        stage: the stage name (``pretrain``, ``sft``, ``dpo``), used in logs and the summary.
        reader: a :class:`jmlr.reader.Reader`; its trainable parameters are optimised.
        batches: an iterator of :class:`StepBatch`; the loop takes ``grad_accum`` of them per step and stops
            at ``optim_cfg.steps``, at ``optim_cfg.epochs`` (when > 0) or when the iterator ends.
        loss_fn: ``loss_fn(model, tensors) -> (loss_sum, stats)`` where ``loss_sum`` is the loss SUMMED over
            the micro-batch's units; ``stats`` (floats) are averaged per step into the log rows.
        optim_cfg: a :class:`StageOptimConfig`.
        output_dir: run folder: ``metrics.jsonl`` (one row per ``log_every`` steps), ``summary.json`` and, when
            ``save``, the trained reader in ``model/``.
        extra_flops: adds e.g. the reference-model forwards of DPO to the FLOPs estimate.
        extra_summary: merged into the summary (data counts, skipped examples...).

    Returns:
        ``{"stage", "steps", "epochs", "wall_s", "train_s", "tokens", "loss_units", "tokens_per_s",
        "n_params", "n_trainable", "flops_est", "first_loss", "final_loss", "losses", "output_dir",
        "model_dir"}``; ``flops_est`` is ``6 * n_params * tokens`` (+ ``extra_flops``).
    """
    import torch
    from tqdm.auto import tqdm

    check_optim(optim_cfg)
    t_start = time.perf_counter()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = reader.model
    device = reader.device
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: the reader has no trainable parameters")
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in params)
    optim = torch.optim.AdamW(params, lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay)
    sched = _scheduler(optim, optim_cfg)
    from jmlr.core.precision import resolve_precision

    precision = resolve_precision(optim_cfg.precision, device)
    autocast = precision.autocast(device)
    log_path = out / "metrics.jsonl"
    log_path.write_text("")  # a fresh log per run
    model.train()

    losses: list[float] = []
    tokens = units = 0
    train_s = 0.0
    epoch = 0.0
    step = 0
    exhausted = False
    bar = tqdm(total=optim_cfg.steps, desc=f"{stage} [{precision.name}]", disable=not progress, dynamic_ncols=True)
    with open(log_path, "a", encoding="utf-8") as log:
        while step < optim_cfg.steps and not exhausted:
            if optim_cfg.epochs and epoch >= optim_cfg.epochs:
                break
            micro: list[StepBatch] = []
            for _ in range(optim_cfg.grad_accum):
                try:
                    micro.append(next(batches))
                except StopIteration:
                    exhausted = True
                    break
            if not micro:
                break
            t0 = time.perf_counter()
            denom = max(sum(mb.n_units for mb in micro), 1)
            step_loss = 0.0
            stats_sum: dict[str, float] = {}
            for mb in micro:
                tensors = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in mb.tensors.items()}
                with autocast:
                    loss_sum, stats = loss_fn(model, tensors)
                (loss_sum.float() / denom).backward()
                step_loss += float(loss_sum.detach()) / denom
                for k, v in stats.items():
                    stats_sum[k] = stats_sum.get(k, 0.0) + float(v) * mb.n_units
            grad_norm = None
            if optim_cfg.max_grad_norm and optim_cfg.max_grad_norm > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, optim_cfg.max_grad_norm))
            optim.step()
            sched.step()
            optim.zero_grad(set_to_none=True)
            step += 1
            dt = time.perf_counter() - t0
            train_s += dt
            step_tokens = sum(mb.n_tokens for mb in micro)
            tokens += step_tokens
            units += denom
            epoch = micro[-1].epoch
            losses.append(step_loss)
            row = {"step": step, "loss": step_loss, "lr": sched.get_last_lr()[0], "tokens": step_tokens,
                   "units": denom, "epoch": round(epoch, 4), "step_s": dt,
                   **{k: v / denom for k, v in stats_sum.items()}}
            if grad_norm is not None:
                row["grad_norm"] = grad_norm
            if step % max(log_every, 1) == 0 or step == optim_cfg.steps:
                log.write(json.dumps(row, default=float) + "\n")
                log.flush()
            if on_step is not None:
                on_step(step, row)
            bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{step_tokens / max(dt, 1e-9):.0f}")
            bar.update(1)
    bar.close()
    if step == 0:
        raise ValueError(f"{stage}: no training data reached the loop (0 micro-batches)")
    model.eval()
    model_dir = None
    if save:
        model_dir = out / "model"
        reader.save_pretrained(model_dir)
    flops = 6.0 * n_params * tokens + (extra_flops() if extra_flops else 0.0)
    summary = {
        "stage": stage, "steps": step, "epochs": round(epoch, 4), "stopped_by": (
            "steps" if step >= optim_cfg.steps else "data" if exhausted else "epochs"),
        "wall_s": time.perf_counter() - t_start, "train_s": train_s, "tokens": tokens, "loss_units": units,
        "tokens_per_s": tokens / train_s if train_s > 0 else 0.0, "n_params": n_params, "n_trainable": n_trainable,
        "flops_est": flops, "first_loss": losses[0], "final_loss": losses[-1], "losses": losses,
        "output_dir": str(out), "model_dir": None if model_dir is None else str(model_dir),
        "precision": precision.as_dict(),
    }
    summary.update(extra_summary or {})
    write_json_atomic(out / "summary.json", summary)
    return summary


def epoch_batches(n: int, batch_size: int, seed: int, shuffle: bool = True) -> Iterator[tuple[list[int], float]]:
    """Endless ``(indices, epoch_position)`` over ``range(n)``: a fresh permutation per epoch from ``seed``.

    ``epoch_position`` is the fractional number of epochs done once this batch is consumed.
    """
    import numpy as np

    if n <= 0:
        raise ValueError("no training examples")
    epoch = 0
    while True:
        order = np.random.default_rng(seed + epoch).permutation(n) if shuffle else np.arange(n)
        for s in range(0, n, batch_size):
            idx = order[s: s + batch_size].tolist()
            yield idx, epoch + min(s + batch_size, n) / n
        epoch += 1


def iter_json_lines(path: str | os.PathLike, expected: str) -> Iterable[tuple[str, dict]]:
    """``("line N", record)`` for a JSONL file (or a JSON array), errors naming the file and line."""
    from jmlr.data._io import iter_records

    return iter_records(path, expected)


def save_stage_config(cfg, out: str | os.PathLike) -> None:
    """Write the resolved config next to the run's outputs (``config.yaml``)."""
    from jmlr.config import save_config

    Path(out).mkdir(parents=True, exist_ok=True)
    save_config(cfg, Path(out) / "config.yaml")


@dataclass
class Counts:
    """A small ordered counter that always reports every key it was created with (zeros included)."""

    keys: Sequence[str]
    values: dict = field(default_factory=dict)

    def __post_init__(self):
        self.values = {k: 0 for k in self.keys}

    def add(self, key: str, n: int = 1) -> None:
        self.values[key] = self.values.get(key, 0) + n

    def as_dict(self) -> dict:
        return dict(self.values)


# ------------------------------------------------------------------------------------------ config loading
def _check_keys(cls, mapping: Any, prefix: str, where: str, root=None) -> None:
    """Unknown keys of a stage config raise with a suggestion drawn from THAT config's keys."""
    import dataclasses
    import difflib
    import typing

    from jmlr.config import all_keys

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

    from jmlr.config import load_config

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
