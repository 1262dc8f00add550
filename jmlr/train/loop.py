"""The pieces of a training loop that every recipe shares: accelerate, per-rank shards, one token-weighted
optimizer step across ranks, resumable checkpoints and an appending metrics log.

The stage recipes (:mod:`jmlr.train.stages`) run on these; nothing here knows about a stage, a reader
template or a loss, so the joint trainer can use them too.

* :func:`make_accelerator` -- one ``accelerate.Accelerator`` per run (DDP under torchrun, gloo on CPU).
* :func:`shard` -- the part of a GLOBAL micro-batch that this rank computes. A ragged last batch is split
  as evenly as it goes; a rank left without items runs a zero-weight placeholder, so every rank takes part in
  the gradient all-reduce and nothing is counted twice (accelerate's split-batch sampler would instead drop
  or repeat samples of a ragged batch, which changes the loss against a single-process run).
* :func:`accumulate_step` -- the forward/backward of one optimizer step: the summed loss of every micro-batch
  on every rank divided by the units (tokens, pairs) of the WHOLE global step, so 1 rank x batch 4 and
  2 ranks x batch 2 take the same step, as does gradient accumulation.
* :func:`save_checkpoint` / :func:`load_checkpoint` / :func:`find_resume` -- trainable weights in
  safetensors, optimizer, scheduler, RNG and the loop's own counters, through the helpers of
  :mod:`jmlr.train.checkpoint` (atomic folder, manifest with digests, ``resume=latest`` skipping damaged ones).
* :class:`MetricsLog` -- ``metrics.jsonl`` opened for appending; on resume the rows the killed run logged
  after the checkpoint's step are dropped first, so every step appears once.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jmlr.core.fs import write_error
from jmlr.train import checkpoint as ckpt
from jmlr.train.run_folder import trim_metrics

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "trainable.safetensors"
"""The trainable parameters of a loop checkpoint (LoRA adapters only, for a LoRA run)."""

__all__ = ["WEIGHTS_FILE", "make_accelerator", "shard", "LossModule", "MicroBatch", "StepResult", "reduce_sum",
           "accumulate_step", "save_checkpoint", "load_checkpoint", "find_resume", "MetricsLog", "is_main_rank"]


def is_main_rank() -> bool:
    """Whether this process is global rank 0 (torchrun's ``RANK``), usable before accelerate starts."""
    return int(os.environ.get("RANK", "0")) == 0


def make_accelerator(find_unused_parameters: bool = False, device_placement: bool = True):
    """An ``Accelerator`` on CUDA when there is one, else on the CPU (gloo DDP under torchrun).

    ``device_placement=False`` leaves the model where its loader put it (each rank's own GPU, or a CPU model a
    caller passed in); the loop then moves the batches to the model's device.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    return Accelerator(cpu=not torch.cuda.is_available(), device_placement=device_placement,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)])


def shard(items: Sequence, rank: int, world: int) -> list:
    """Rank ``rank``'s contiguous part of a global micro-batch (sizes differ by at most one).

    >>> [shard(list(range(5)), r, 2) for r in range(2)]
    [[0, 1], [2, 3, 4]]
    """
    n = len(items)
    return list(items[(rank * n) // world: ((rank + 1) * n) // world])


class LossModule(nn.Module):
    """``forward(tensors) = loss_fn(model, tensors)``: the loss is the forward that DDP wraps, so a loss that
    calls the model's decoder and head directly (only the labelled positions through the head) still gets
    its gradients all-reduced."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[Any, dict], tuple[Any, dict]]):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, tensors: dict):
        return self.loss_fn(self.model, tensors)


@dataclass
class MicroBatch:
    """This rank's share of one global micro-batch.

    Attributes:
        tensors: what the loss function takes.
        n_units: loss units in it (labelled tokens, pairs); the step divides by the global total.
        n_tokens: tokens the model forwards (throughput).
        weight: 1, or 0 for the placeholder of a rank that got no items (its gradient is zero).
    """

    tensors: dict
    n_units: int
    n_tokens: int
    weight: float = 1.0


@dataclass
class StepResult:
    """One optimizer step's global numbers (the same on every rank)."""

    loss: float
    units: int
    tokens: int
    stats: dict


def reduce_sum(acc, values: Sequence[float]) -> list[float]:
    """Sum ``values`` over the ranks (a float64 tensor on the process group's device)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=acc.device)
    if acc.num_processes > 1:
        t = acc.reduce(t, reduction="sum")
    return t.tolist()


def accumulate_step(acc, module, micro: Sequence[MicroBatch], autocast, device=None) -> StepResult:
    """Forward and backward every micro-batch of one optimizer step (the caller steps the optimizer).

    The batches go to ``device`` (default: the accelerator's).

    The gradient is that of ``sum(loss over all ranks and micro-batches) / global units``: each rank scales its
    summed loss by ``world / global units`` because DDP averages the gradients over the ranks. Gradients are
    all-reduced once, on the last micro-batch (``no_sync`` before it). Stats are unit-weighted means.
    """
    world = acc.num_processes
    units = reduce_sum(acc, [sum(mb.n_units for mb in micro)])[0]
    denom = max(units, 1.0)
    loss_local, tokens_local = 0.0, 0
    stats_local: dict[str, float] = {}
    for i, mb in enumerate(micro):
        tensors = {k: (v.to(device or acc.device) if hasattr(v, "to") else v) for k, v in mb.tensors.items()}
        sync = acc.no_sync(module) if i < len(micro) - 1 and world > 1 else nullcontext()
        with sync:
            with autocast:
                loss_sum, stats = module(tensors)
            acc.backward(loss_sum.float() * (mb.weight * world / denom))
        loss_local += mb.weight * float(loss_sum.detach()) / denom
        tokens_local += mb.n_tokens if mb.weight else 0
        for k, v in stats.items():
            stats_local[k] = stats_local.get(k, 0.0) + mb.weight * float(v) * mb.n_units
    keys = sorted(stats_local)
    got = reduce_sum(acc, [loss_local, tokens_local] + [stats_local[k] for k in keys])
    return StepResult(loss=got[0], units=int(units), tokens=int(got[1]),
                      stats={k: v / denom for k, v in zip(keys, got[2:])})


# ------------------------------------------------------------------------------------------ checkpoints
def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(acc, folder: str | os.PathLike, step: int, model: nn.Module, optim, sched,
                    state: dict | None = None) -> Path:
    """Write ``folder`` atomically on the main process: trainable weights (safetensors), optimizer, scheduler,
    RNG, ``step`` and ``state`` (weights_only-loadable values), with a manifest. Every rank waits for it."""
    from safetensors.torch import save_file

    folder = Path(folder)
    acc.wait_for_everyone()
    if acc.is_main_process:
        for name, p in _trainable(model).items():
            if not bool(torch.isfinite(p.detach()).all()):
                raise ValueError(f"refusing to write checkpoint {folder}: parameter {name} holds NaN/inf values; "
                                 "earlier checkpoints are kept")
        try:
            with ckpt.atomic_dir(folder) as tmp:
                weights = {n: p.detach().cpu().contiguous() for n, p in _trainable(model).items()}
                save_file(weights, str(tmp / WEIGHTS_FILE))
                ckpt.save_state(tmp, {"step": int(step), "optimizer": optim.state_dict(),
                                      "scheduler": sched.state_dict(), "rng": ckpt.rng_state(), **(state or {})})
                ckpt.write_manifest(tmp, step)
        except (OSError, RuntimeError) as e:
            if type(e).__module__.startswith("jmlr"):
                raise
            raise write_error(e, folder) from e
    acc.wait_for_everyone()
    return folder


def find_resume(output_dir: str | os.PathLike, resume: str) -> Path | None:
    """The checkpoint folder ``resume`` names (``latest``: the newest good one under ``output_dir``), or None
    for a fresh run (``resume=""``). Raises ``FileNotFoundError`` when there is none to resume from."""
    if not resume:
        return None
    if str(resume) == "latest":
        return ckpt.latest_or_raise(output_dir)
    found = Path(resume)
    problem = ckpt.verify_checkpoint(found)
    if problem:
        raise FileNotFoundError(f"resume={resume}: {problem}")
    return found


def load_checkpoint(folder: str | os.PathLike, model: nn.Module, optim=None, sched=None) -> dict:
    """Load what :func:`save_checkpoint` wrote into the live ``model``/``optim``/``sched`` (in place), restore
    the RNG, and return the saved state (``step`` and the caller's entries)."""
    from safetensors.torch import load_file

    folder = ckpt.verified(folder)
    state = ckpt.load_state(folder)
    saved = load_file(str(folder / WEIGHTS_FILE))
    live = _trainable(model)
    if set(saved) != set(live):
        diff = sorted(set(saved) ^ set(live))[:3]
        raise ValueError(f"resume={folder}: its trainable weights do not match this model's (e.g. {diff}); "
                         "resume with the same model and LoRA settings")
    with torch.no_grad():
        for name, p in live.items():
            p.copy_(saved[name].to(p.device, p.dtype))
    if optim is not None:
        optim.load_state_dict(state["optimizer"])
    if sched is not None:
        sched.load_state_dict(state["scheduler"])
    ckpt.set_rng_state(state["rng"])
    return state


# ------------------------------------------------------------------------------------------ metrics log
class MetricsLog:
    """``metrics.jsonl`` of a run, appended to; written by the main process only.

    ``resume_step``: rows of steps after it (logged by the run being resumed after its last checkpoint) are
    dropped first, and a line cut short by a kill goes with them.
    """

    def __init__(self, path: str | os.PathLike, main: bool = True, resume_step: int | None = None):
        self.path, self.main = Path(path), main
        self._f = None
        if not main:
            return
        if resume_step is not None:
            trim_metrics(self.path, resume_step)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        if self._f is not None:
            self._f.write(json.dumps(row, default=float) + "\n")
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
