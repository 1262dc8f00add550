"""The names that code outside the stages imports from ``jmlr.train.stages.common`` (an example, a reader
test), kept working after the split. The stages import from where things live now: :mod:`.config` (config
sections and loading), :mod:`.data_io` (seeding, I/O, reader loading), :mod:`.batching` (padding, log-probs,
batch schedules), :mod:`.counters` and :mod:`.engine` (the loop)."""
from __future__ import annotations

from .config import StageModelConfig, load_stage_config
from .data_io import load_reader

__all__ = ["StageModelConfig", "load_stage_config", "load_reader"]
