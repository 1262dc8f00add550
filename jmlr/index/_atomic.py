"""Atomic writes of files and whole folders: the one implementation lives in :mod:`jmlr.fs` (with fsync)."""
from __future__ import annotations

from jmlr.fs import _rename_exchange, atomic_dir, write_json_atomic, write_text_atomic  # noqa: F401

__all__ = ["atomic_dir", "write_json_atomic", "write_text_atomic"]
