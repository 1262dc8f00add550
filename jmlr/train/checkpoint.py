"""Checkpoints: weights in safetensors, trainer state loadable with ``torch.load(weights_only=True)``.

A checkpoint is written to a temporary folder next to its final name, then renamed into place, so a crash
never leaves a half-written checkpoint under the final name.
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "trainer_state.pt"


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
    """Context manager yielding a temporary folder that is renamed to ``final`` on success."""
    final = Path(final)

    class _Ctx:
        def __enter__(self):
            final.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
            return self.tmp

        def __exit__(self, exc_type, exc, tb):
            if exc_type is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                return False
            if final.exists():
                old = final.with_name(f".{final.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(self.tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(self.tmp, final)
            return False

    return _Ctx()


def save_state(folder: Path, state: dict[str, Any]) -> None:
    torch.save(state, folder / STATE_FILE)


def load_state(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"not a jmlr checkpoint (no {STATE_FILE}): {folder}")
    return torch.load(path, weights_only=True, map_location="cpu")


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest ``checkpoints/step-N`` folder of a run, or None."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    steps = []
    for p in root.iterdir():
        if p.name.startswith("step-") and (p / STATE_FILE).is_file():
            try:
                steps.append((int(p.name[5:]), p))
            except ValueError:
                continue
    return max(steps)[1] if steps else None
