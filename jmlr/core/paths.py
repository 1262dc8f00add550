"""Where jmlr keeps its cache: ``$JMLR_CACHE``, else ``~/.cache/jmlr``.

The kernels (``jmlr.kernels``, which import nothing of jmlr) resolve the same folder on their own for their
compiled extensions (``$JMLR_CACHE/torch_extensions``).
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """jmlr's cache folder: ``$JMLR_CACHE`` or ``~/.cache/jmlr`` (not created here)."""
    return Path(os.environ.get("JMLR_CACHE") or Path.home() / ".cache" / "jmlr")
