"""Checkpoints: weights in safetensors, trainer state loadable with ``torch.load(weights_only=True)``.

A checkpoint is written to a temporary folder next to its final name, fsynced, then renamed into place, so a
crash never leaves a half-written checkpoint under the final name. Its ``checkpoint.json`` manifest records
the step and the size and blake2b digest of every file, so a file damaged later (a truncated copy, a full
disk during a sync) is named, and ``resume=latest`` falls back to the newest checkpoint that passes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jmlr.core.fs import atomic_dir as _atomic_dir
from jmlr.core.fs import write_error

STATE_FILE = "trainer_state.pt"
MANIFEST = "checkpoint.json"

logger = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states in a weights_only-loadable form."""
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])


def atomic_dir(final: str | os.PathLike):
    """Context manager yielding a temporary folder that replaces ``final`` on success (fsynced, one rename).

    The one implementation is :func:`jmlr.core.fs.atomic_dir`.
    """
    return _atomic_dir(final)


class CorruptCheckpointError(ValueError):
    """A checkpoint file is missing, truncated or does not match its manifest."""


def save_state(folder: Path, state: dict[str, Any]) -> None:
    """``torch.save`` through a Python file, so a write error surfaces as an ``OSError`` (ENOSPC...) naming
    the file instead of a C++ stream message."""
    path = Path(folder) / STATE_FILE
    try:
        with open(path, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:
        raise write_error(e, path) from e


def load_state(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"not a jmlr checkpoint (no {STATE_FILE}): {folder}")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # RuntimeError, EOFError, pickle.UnpicklingError, zip errors
        if isinstance(e, OSError) and e.errno is not None:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CorruptCheckpointError(f"{path}: cannot be read, the file is truncated or corrupt ({first}); resume "
                                     "from another checkpoint (resume=latest skips damaged ones)") from e


# ------------------------------------------------------------------------------------------ manifest
def _digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def write_manifest(folder: str | os.PathLike, step: int) -> Path:
    """Record the step and every file's size and digest in ``folder/checkpoint.json``."""
    folder = Path(folder)
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink() and p.name != MANIFEST:
            files[p.relative_to(folder).as_posix()] = {"size": p.stat().st_size, "blake2b": _digest(p)}
    path = folder / MANIFEST
    path.write_text(json.dumps({"format": "jmlr-checkpoint", "version": 1, "step": int(step), "files": files},
                               indent=1))
    return path


def verify_checkpoint(folder: str | os.PathLike, digests: bool = True) -> str | None:
    """None when ``folder`` is a complete checkpoint, else what is wrong with it, naming the file.

    Checkpoints without a manifest (written by older jmlr) only need their trainer state file.
    """
    folder = Path(folder)
    if not (folder / STATE_FILE).is_file():
        return f"{folder / STATE_FILE} is missing"
    mpath = folder / MANIFEST
    if not mpath.is_file():
        return None
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{mpath} is unreadable ({e})"
    for rel, rec in files.items():
        p = folder / rel
        if not p.is_file():
            return f"{p} is missing"
        size = p.stat().st_size
        if size != rec["size"]:
            return f"{p} holds {size} bytes, expected {rec['size']} (truncated or overwritten)"
        if digests and _digest(p) != rec["blake2b"]:
            return f"{p} does not match its checksum (corrupt)"
    return None


def checkpoint_step(folder: str | os.PathLike) -> int | None:
    """The step of a checkpoint from its manifest or its ``step-N`` name, without loading it (None if unknown)."""
    folder = Path(folder)
    try:
        return int(json.loads((folder / MANIFEST).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    m = re.fullmatch(r"step-(\d+)", folder.name)
    return int(m.group(1)) if m else None


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, folder)`` of a run's ``checkpoints/step-N`` folders, newest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    steps = []
    for p in root.iterdir():
        m = re.fullmatch(r"step-(\d+)", p.name)
        if m and p.is_dir():
            steps.append((int(m.group(1)), p))
    return sorted(steps, reverse=True)


def latest_checkpoint(output_dir: str | os.PathLike, verify: bool = True, digests: bool = True) -> Path | None:
    """The newest ``checkpoints/step-N`` folder of a run that passes :func:`verify_checkpoint`, or None.

    A newer one that fails is skipped with a warning naming the damaged file and the one used instead.
    ``digests=False`` checks file sizes only (fast); ``verify=False`` only needs the trainer state file.
    """
    skipped = []
    for step, p in list_checkpoints(output_dir):
        problem = (verify_checkpoint(p, digests=digests) if verify
                   else None if (p / STATE_FILE).is_file() else "no state")
        if problem is None:
            if skipped and digests:
                logger.warning("resume=latest: skipping %s; falling back to %s, the newest checkpoint that passes its "
                               "checksum", "; ".join(skipped), p.name)
            return p
        if verify:
            skipped.append(f"{p.name} ({problem})")
    if skipped and digests:
        logger.warning("resume=latest: no checkpoint passes its checksum: %s", "; ".join(skipped))
    return None


def latest_or_raise(output_dir: str | os.PathLike, digests: bool = True) -> Path:
    """``resume=latest``: the newest good checkpoint of a run (see :func:`latest_checkpoint`), or
    ``FileNotFoundError`` when there is none."""
    found = latest_checkpoint(output_dir, digests=digests)
    if found is None:
        raise FileNotFoundError(f"resume=latest but {Path(output_dir) / 'checkpoints'} holds no usable checkpoint; "
                                "start a fresh run without resume")
    return found


def verified(folder: str | os.PathLike) -> Path:
    """``folder`` when it passes :func:`verify_checkpoint` (digests of every file), else
    :class:`CorruptCheckpointError` naming the damaged file: the check before any checkpoint is loaded."""
    folder = Path(folder)
    problem = verify_checkpoint(folder)
    if problem:
        raise CorruptCheckpointError(f"resume={folder}: {problem}; resume from another checkpoint (resume=latest "
                                     "falls back to the newest good one)")
    return folder
