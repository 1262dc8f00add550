"""Moved to :mod:`jmlr.index.bm25`: this re-export stays only until benchmarks/retrieval_real.py imports the new place."""
from jmlr.index.bm25 import BM25Index, _stemmer  # noqa: F401

__all__ = ["BM25Index"]
