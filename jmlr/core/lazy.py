"""One helper for the packages' lazy re-exports (PEP 562 module ``__getattr__``).

``import jmlr`` must stay cheap (no torch, transformers or faiss import until a name is used), so the packages
map each public name to the module that defines it and import that module on first access.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_getattr(package: str, table: Mapping[str, str]) -> Callable[[str], object]:
    """A module-level ``__getattr__`` for ``package`` that imports ``table[name]`` and returns its ``name``."""

    def __getattr__(name: str):
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
