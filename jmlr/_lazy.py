"""Moved to :mod:`jmlr.core.lazy`: this re-export stays only until jmlr/train/__init__.py imports the new place."""
from jmlr.core.lazy import lazy_getattr  # noqa: F401
