"""Exact-duplicate detection after normalisation (NFKC, case-fold, whitespace collapsed)."""
from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from tqdm.auto import tqdm

from ..text import normalize_for_dedup
from .columns import _ENC

__all__ = ["DedupReport", "find_duplicates"]


@dataclass
class DedupReport:
    """What :meth:`Corpus.dedup` did: counts, and which kept passage each dropped one duplicated."""

    before: int
    after: int
    duplicate_of: dict[str, str] = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        return self.before - self.after

    def __str__(self) -> str:
        return f"dedup: kept {self.after} of {self.before} passages, dropped {self.dropped} duplicate(s)"


def find_duplicates(ids: Sequence[str], texts: Iterable[str], titles: Iterable[str], key: str, n: int,
                    progress: bool | None) -> tuple[array, dict[str, str]]:
    """Rows to keep (first of each normalised text, or title+text) and ``{dropped id: kept id}``."""
    seen: dict[bytes, int] = {}
    keep = array("q")
    dup_of: dict[str, str] = {}
    it = zip(texts, titles) if key == "title+text" else ((t, "") for t in texts)
    show = n > 50_000 if progress is None else progress
    for i, (text, title) in enumerate(tqdm(it, total=n, desc="dedup", disable=not show, unit="psg")):
        k = normalize_for_dedup(text) if not title else normalize_for_dedup(title) + "\x00" + normalize_for_dedup(text)
        d = hashlib.blake2b(k.encode("utf-8", _ENC), digest_size=16).digest()
        j = seen.setdefault(d, i)
        if j == i:
            keep.append(i)
        else:
            dup_of[ids[i]] = ids[j]
    return keep, dup_of
