"""A training run's folder: claimed (checked, locked, cleaned) before any model loads, and its metrics log
trimmed on resume. Used by the joint trainer and the stage recipes alike."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Iterable

from jmlr.config import TrainConfig
from jmlr.core.fs import LOCK_NAMES, check_writable_dir, clean_stale_tmp, run_folder_lock, write_text_atomic
from jmlr.train import checkpoint as ckpt

logger = logging.getLogger(__name__)

__all__ = ["RUN_OUTPUTS", "claim_run_folder", "check_steps_left", "remove_outputs", "trim_metrics"]

RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "summary.json", "config.yaml", "tb", "curves.png")
"""What a joint training run writes into its output_dir (what ``overwrite=true`` removes)."""


def remove_outputs(out: str | os.PathLike, names: Iterable[str], log: logging.Logger = logger) -> list[str]:
    """``overwrite=true``: remove the earlier run's outputs ``names`` from ``out`` (folders and files alike);
    returns the names removed, after one warning on ``log`` that lists them."""
    out = Path(out)
    removed = [n for n in names if (out / n).exists()]
    for name in removed:
        p = out / name
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    if removed:
        log.warning("overwrite=true: removed the earlier run's %s from %s", ", ".join(removed), out)
    return removed


def claim_run_folder(cfg: TrainConfig):
    """Check, create and lock ``cfg.output_dir`` before any model loads; return the held lock (None off rank 0).

    A fresh run (no ``resume``) refuses a folder that already holds files unless ``overwrite=true``, which
    removes the old run's outputs (:data:`RUN_OUTPUTS`) first, so stale ``checkpoints/step-N`` folders can never
    be picked up by a later ``resume=latest``. A resume that has nothing left to train is refused here when
    the checkpoint's step is known without loading it. Temporary folders left by a killed run are removed.
    """
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, global rank 0 owns the folder
        return None
    out = Path(cfg.output_dir)
    check_writable_dir(out, "output_dir")
    lock = run_folder_lock(out, f"output_dir {out}").acquire()
    try:
        clean_stale_tmp(out, locked=True)
        clean_stale_tmp(out / "checkpoints", locked=True)
        if cfg.resume:
            if str(cfg.resume) == "latest":
                found = ckpt.latest_or_raise(out, digests=False)
            else:
                found = Path(cfg.resume)
                if not (found / ckpt.STATE_FILE).is_file():
                    raise FileNotFoundError(f"resume={cfg.resume}: not a jmlr checkpoint (no {ckpt.STATE_FILE})")
            step = ckpt.checkpoint_step(found)
            if step is not None:
                check_steps_left(step, cfg, found)
                newer = [p.name for s, p in ckpt.list_checkpoints(out) if s > step]
                if newer:
                    logger.warning("resuming from step %d while %s in %s hold(s) later steps of the earlier run; "
                                   "the resumed run replaces them as it reaches those steps, and resume=latest "
                                   "would pick them until then", step, ", ".join(newer), out / "checkpoints")
        else:
            present = sorted(p.name for p in out.iterdir() if p.name not in LOCK_NAMES)
            if present and not cfg.overwrite:
                shown = ", ".join(present[:4]) + (f" and {len(present) - 4} more" if len(present) > 4 else "")
                raise FileExistsError(
                    f"output_dir {out} is not empty (it holds {shown}); a fresh run would mix with it: pass "
                    "overwrite=true to replace the old run's outputs, resume=latest to continue it, or choose "
                    "another output_dir")
            if present:
                remove_outputs(out, RUN_OUTPUTS)
    except BaseException:
        lock.release()
        raise
    return lock


def check_steps_left(step: int, cfg, folder) -> None:
    """Refuse a resume from a checkpoint at or past ``optim.steps``: nothing would be left to train."""
    if step >= cfg.optim.steps:
        raise ValueError(f"resume: checkpoint {folder} is at step {step} and optim.steps={cfg.optim.steps}: nothing "
                         "left to train; raise optim.steps to train further")


def trim_metrics(path: Path, step: int) -> int:
    """Drop the rows of ``metrics.jsonl`` logged after ``step`` (a resumed run logs them again), and a line cut
    short by the kill that ended the earlier run; returns how many were dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    keep, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            s = row["eval"].get("step", 0) if "eval" in row else row.get("step", 0)
        except (ValueError, AttributeError, TypeError):
            dropped += 1  # a line cut short by the kill that ended the earlier run
            continue
        if s is not None and int(s) > step:
            dropped += 1
        else:
            keep.append(line)
    if dropped:
        write_text_atomic(path, "".join(f"{x}\n" for x in keep))
        logger.info("%s: dropped %d row(s) after step %d, logged by the run being resumed", path, dropped, step)
    return dropped
