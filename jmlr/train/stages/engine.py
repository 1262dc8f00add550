"""The stage loop: pretrain, SFT and DPO train through :func:`train_loop`, on the engine of :mod:`jmlr.train.loop`.

It reads top to bottom like nanoGPT's: set up accelerate (DDP under torchrun), the optimizer and schedule,
resume if asked, then for each optimizer step take ``grad_accum`` global micro-batches, give this rank its
share, run forward and backward under the autocast of ``optim.precision`` with the summed loss divided by the
loss units of the WHOLE step over all ranks (tokens for language modelling, pairs for DPO: accumulation and
ranks give the gradient of one big batch), clip, step AdamW with warmup + schedule, append a JSONL row,
checkpoint every ``checkpoint_every`` steps, and stop at the step budget, the epoch limit or the end of the
data. At the end the main process saves the reader (:meth:`jmlr.reader.Reader.save_pretrained`, atomic) and
``summary.json`` (wall time, tokens, FLOPs estimate ``6 * N * tokens``).

``resume=latest`` restores the trainable weights, optimizer, scheduler, RNG, the data position and the
counters from ``checkpoints/step-N``; the resumed run's losses are those of the uninterrupted run.
"""
from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jmlr.train.run_folder import remove_outputs
from jmlr.core.fs import check_writable_dir, clean_stale_tmp, run_folder_lock
from jmlr.core.precision import resolve_precision
from jmlr.models import require
from jmlr.train import checkpoint as ckpt
from jmlr.train.loop import (LossModule, MetricsLog, MicroBatch, accumulate_step, find_resume, is_main_rank,
                             load_checkpoint, make_accelerator, save_checkpoint, shard)

from .config import StageModelConfig, StageOptimConfig, check_optim
from .data_io import write_json_atomic

logger = logging.getLogger("jmlr.train.stages")

__all__ = ["StageRun", "train_loop", "holds_run_folder", "resume_state"]

RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "summary.json", "model")
"""What a fresh run with ``overwrite=true`` removes from its folder."""


@dataclass
class StageRun:
    """What one stage hands the loop.

    Attributes:
        stage: ``pretrain``, ``sft`` or ``dpo`` (logs and summary).
        reader: a :class:`jmlr.reader.Reader`; its trainable parameters are optimised.
        data: a global batch schedule (:mod:`jmlr.train.stages.batching`): ``batch(k, world)`` and ``collate``.
        loss_fn: ``loss_fn(model, tensors) -> (loss_sum, stats)``, the loss SUMMED over the micro-batch's units;
            ``stats`` (floats) are unit-weighted means in the log rows.
        extra_flops: adds e.g. the reference forwards of DPO to the FLOPs estimate.
        extra_summary: merged into the summary (data counts, skipped examples...).
        extra_state: saved in every checkpoint and handed back by :func:`resume_state` (weights_only values).
        accelerator: the run's ``Accelerator`` when the stage made one already.
    """

    stage: str
    reader: Any
    data: Any
    loss_fn: Callable[[Any, dict], tuple[Any, dict]]
    extra_flops: Callable[[], float] | None = None
    extra_summary: dict = field(default_factory=dict)
    extra_state: dict = field(default_factory=dict)
    accelerator: Any = None


def _scheduler(optim, cfg: StageOptimConfig):
    from transformers import get_scheduler

    names = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
    if cfg.schedule not in names:
        raise ValueError(f"unknown optim.schedule {cfg.schedule!r}; expected linear, cosine or constant")
    return get_scheduler(names[cfg.schedule], optim, num_warmup_steps=cfg.warmup_steps,
                         num_training_steps=max(cfg.steps, 1))


def _steps_left(step: int, cfg, folder) -> None:
    if step >= cfg.optim.steps:
        raise ValueError(f"resume: checkpoint {folder} is at step {step} and optim.steps={cfg.optim.steps}: nothing "
                         "left to train; raise optim.steps to train further")


def resume_state(cfg) -> dict | None:
    """The state saved in the checkpoint ``cfg.resume`` names (None for a fresh run), without the weights:
    for what a stage computes before the loop (DPO's reference log-probs)."""

    folder = find_resume(cfg.output_dir, getattr(cfg, "resume", ""))
    return None if folder is None else ckpt.load_state(folder)


def _claim(cfg, out: Path) -> None:
    """Fresh run or resume, decided before any model loads."""

    if getattr(cfg, "checkpoint_every", 0) < 0:
        raise ValueError(f"checkpoint_every must be >= 0, got {cfg.checkpoint_every}")
    if getattr(cfg, "resume", ""):
        folder = find_resume(out, cfg.resume)
        step = ckpt.checkpoint_step(folder)
        if step is not None:
            _steps_left(step, cfg, folder)
        return
    if not hasattr(cfg, "resume"):
        return
    if not cfg.overwrite:
        if ckpt.list_checkpoints(out):
            raise FileExistsError(f"output_dir {out} holds checkpoints of an earlier run; pass resume=latest to "
                                  "continue it, overwrite=true to replace it, or choose another output_dir")
        return  # a fresh run appends to the folder's metrics log
    remove_outputs(out, RUN_OUTPUTS, log=logger)


def holds_run_folder(run: Callable) -> Callable:
    """Decorate a stage runner ``run(cfg, ...)``: before anything loads, check ``cfg.optim``'s ranges, that
    ``cfg.output_dir`` can be written and what ``resume`` asks for, then hold its writer lock for the whole run
    (a second run into the same folder is refused, naming the holder) and remove temporaries left by a killed
    run. Under torchrun, global rank 0 alone owns the folder."""

    @functools.wraps(run)
    def wrapper(cfg, *args, **kwargs):

        if isinstance(getattr(cfg, "optim", None), StageOptimConfig):
            check_optim(cfg.optim)
        reader = kwargs.get("reader", args[0] if args else None)
        if reader is None and isinstance(getattr(cfg, "model", None), StageModelConfig):

            require(cfg.model.model, "model.model")
        if not is_main_rank():
            return run(cfg, *args, **kwargs)
        out = check_writable_dir(cfg.output_dir, "output_dir")
        with run_folder_lock(out, f"output_dir {out}"):
            clean_stale_tmp(out, locked=True)
            clean_stale_tmp(out / "checkpoints", locked=True)
            _claim(cfg, out)
            return run(cfg, *args, **kwargs)

    return wrapper


def _micro_batches(run: StageRun, k: int, n: int, rank: int, world: int):
    """Up to ``n`` micro-batches from global batch ``k`` on: ``(this rank's MicroBatches, last epoch, done)``."""

    micro, epoch = [], None
    for j in range(n):
        got = run.data.batch(k + j, world)
        if got is None:
            return micro, epoch, True
        items, epoch = got
        mine = shard(items, rank, world)
        if mine:
            sb = run.data.collate(mine)
            micro.append(MicroBatch(sb.tensors, sb.n_units, sb.n_tokens))
        else:  # a ragged last batch left this rank nothing: a zero-weight pass keeps DDP in step
            sb = run.data.collate(list(items[:1]))
            micro.append(MicroBatch(sb.tensors, 0, 0, weight=0.0))
    return micro, epoch, False


def train_loop(cfg, run: StageRun, progress: bool = True, save: bool = True) -> dict:
    """Train ``run.reader.model`` on ``run.data`` with ``run.loss_fn`` as ``cfg`` says; return the summary.

    Args:
        cfg: the stage config: ``optim`` (:class:`StageOptimConfig`), ``output_dir``, ``log_every``,
            ``checkpoint_every`` and ``resume``.
        run: a :class:`StageRun`.
        save: write the trained reader to ``output_dir/model``.

    Returns:
        ``{"stage", "steps", "epochs", "stopped_by", "wall_s", "train_s", "tokens", "loss_units",
        "tokens_per_s", "n_params", "n_trainable", "flops_est", "first_loss", "final_loss", "losses",
        "output_dir", "model_dir", "precision", "world_size", "resumed_from"}``; ``flops_est`` is
        ``6 * n_params * tokens`` (+ ``extra_flops``).
    """
    import torch
    from tqdm.auto import tqdm



    ocfg = cfg.optim
    check_optim(ocfg)
    t_start = time.perf_counter()
    out = Path(cfg.output_dir)
    acc = run.accelerator if run.accelerator is not None else make_accelerator(device_placement=False)
    rank, world, main = acc.process_index, acc.num_processes, acc.is_main_process
    model = run.reader.model
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: the reader has no trainable parameters")
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in params)
    optim = torch.optim.AdamW(params, lr=ocfg.lr, weight_decay=ocfg.weight_decay)
    sched = _scheduler(optim, ocfg)
    module, optim = acc.prepare(LossModule(model, run.loss_fn), optim)  # the model stays on its device
    device = next(model.parameters()).device
    precision = resolve_precision(ocfg.precision, device)
    autocast = precision.autocast(device)

    step, k, tokens, units, train_s, epoch, losses = 0, 0, 0, 0, 0.0, 0.0, []
    resumed = find_resume(out, getattr(cfg, "resume", ""))
    if resumed is not None:
        state = load_checkpoint(resumed, model, optim, sched)
        _steps_left(int(state["step"]), cfg, resumed)
        loop = json.loads(state["loop"])
        if loop.get("world", world) != world:
            raise ValueError(f"resume={resumed}: the checkpoint was written by {loop['world']} process(es), this run "
                             f"has {world}; resume with the same number (the global batch is batch_size x ranks)")
        step, k, tokens, units = int(state["step"]), loop["k"], loop["tokens"], loop["units"]
        train_s, epoch, losses = loop["train_s"], loop["epoch"], loop["losses"]
        logger.info("%s: resumed from %s at step %d", run.stage, resumed, step)

    def checkpoint() -> None:
        loop = {"world": world, "k": k, "tokens": tokens, "units": units, "train_s": train_s, "epoch": epoch, "losses": losses}
        save_checkpoint(acc, out / "checkpoints" / f"step-{step}", step, model, optim, sched,
                        {"loop": json.dumps(loop), **run.extra_state})

    module.train()
    exhausted, saved_at = False, step
    bar = tqdm(total=ocfg.steps, initial=step, desc=f"{run.stage} [{precision.name}]",
               disable=not (progress and main), dynamic_ncols=True)
    with MetricsLog(out / "metrics.jsonl", main=main, resume_step=step if resumed else None) as log:
        while step < ocfg.steps and not exhausted:
            if ocfg.epochs and epoch >= ocfg.epochs:
                break
            micro, last_epoch, exhausted = _micro_batches(run, k, ocfg.grad_accum, rank, world)
            if not micro:
                break
            k += len(micro)
            t0 = time.perf_counter()
            res = accumulate_step(acc, module, micro, autocast, device)  # forward + backward of the whole step
            grad_norm = None
            if ocfg.max_grad_norm and ocfg.max_grad_norm > 0:
                grad_norm = float(acc.clip_grad_norm_(params, ocfg.max_grad_norm))
            optim.step()
            sched.step()
            optim.zero_grad(set_to_none=True)
            step += 1
            dt = time.perf_counter() - t0
            train_s += dt
            tokens += res.tokens
            units += res.units
            epoch = last_epoch
            losses.append(res.loss)
            row = {"step": step, "loss": res.loss, "lr": sched.get_last_lr()[0], "tokens": res.tokens,
                   "units": res.units, "epoch": round(epoch, 4), "step_s": dt, **res.stats}
            if grad_norm is not None:
                row["grad_norm"] = grad_norm
            if step % max(cfg.log_every, 1) == 0 or step == ocfg.steps:
                log.write(row)
            if cfg_every(cfg) and step % cfg_every(cfg) == 0:
                checkpoint()
                saved_at = step
            bar.set_postfix(loss=f"{res.loss:.4f}", tok_s=f"{res.tokens / max(dt, 1e-9):.0f}")
            bar.update(1)
    bar.close()
    if step == 0:
        raise ValueError(f"{run.stage}: no training data reached the loop (0 micro-batches)")
    if cfg_every(cfg) and saved_at != step:
        checkpoint()
    model.eval()
    model_dir = out / "model" if save else None
    if save and main:
        run.reader.save_pretrained(model_dir)
    flops = 6.0 * n_params * tokens + (run.extra_flops() if run.extra_flops else 0.0)
    summary = {
        "stage": run.stage, "steps": step, "epochs": round(epoch, 4), "stopped_by": (
            "steps" if step >= ocfg.steps else "data" if exhausted else "epochs"),
        "wall_s": time.perf_counter() - t_start, "train_s": train_s, "tokens": tokens, "loss_units": units,
        "tokens_per_s": tokens / train_s if train_s > 0 else 0.0, "n_params": n_params, "n_trainable": n_trainable,
        "flops_est": flops, "first_loss": losses[0], "final_loss": losses[-1], "losses": losses,
        "output_dir": str(out), "model_dir": None if model_dir is None else str(model_dir),
        "precision": precision.as_dict(), "world_size": world, "resumed_from": None if resumed is None else str(resumed),
    }
    summary.update(run.extra_summary)
    if main:
        write_json_atomic(out / "summary.json", summary)
    acc.wait_for_everyone()
    return summary


def cfg_every(cfg) -> int:
    """``cfg.checkpoint_every`` (0 for configs without it)."""
    return int(getattr(cfg, "checkpoint_every", 0) or 0)
