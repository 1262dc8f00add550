"""Bundled demo data: an invented drug formulary (corpus) and multiple-choice questions on it.

All of it is fictional, written by :mod:`jmlr.data.demo.generate` with a fixed seed (not medical advice).
See ``README.md`` in this folder for the design, the sizes and the measured baselines.

>>> from jmlr.data.demo import demo_corpus, demo_qa
>>> corpus = demo_corpus()             # ~2,000 short passages
>>> test = demo_qa("test")             # 150 four-option MCQs, one gold passage each
"""
from __future__ import annotations

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
"""Folder holding ``corpus.jsonl``, ``train.jsonl``, ``dev.jsonl`` and ``test.jsonl``."""

SPLITS = ("train", "dev", "test")


def _file(name: str) -> Path:
    path = DEMO_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: regenerate the demo data with "
                                f"`python -m jmlr.data.demo.generate --out {DEMO_DIR}`")
    return path


def demo_corpus():
    """The demo corpus (a :class:`jmlr.data.Corpus` read from ``corpus.jsonl``)."""
    from jmlr.data import Corpus

    return Corpus.load(_file("corpus.jsonl"))


def demo_qa(split: str):
    """The demo questions of ``split`` ("train", "dev" or "test") as a list of :class:`jmlr.data.QAExample`."""
    if split not in SPLITS:
        raise ValueError(f"unknown demo split {split!r}: expected one of {', '.join(SPLITS)}")
    from jmlr.data import load_qa

    return load_qa("jmlr", _file(f"{split}.jsonl"))


def load_demo(split: str):
    """Alias of :func:`demo_qa` (the name used in docs/architecture.md)."""
    return demo_qa(split)


__all__ = ["DEMO_DIR", "SPLITS", "demo_corpus", "demo_qa", "load_demo"]
