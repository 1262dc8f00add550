"""Compact string storage of a corpus: one UTF-8 buffer plus an int64 offsets array per column.

:class:`StrColumn` is the read side; ``_ColumnBuilder`` and ``_CorpusBuilder`` stream passages in (the loaders
and the chunker fill a ``_CorpusBuilder``, :class:`~jmlr.data.corpus.Corpus` turns it into a corpus).
"""
from __future__ import annotations

from array import array
from typing import Iterable, Iterator, Sequence, overload

import logging

import numpy as np

from .._io import DataFormatError

logger = logging.getLogger("jmlr.data")

_ENC = "surrogatepass"  # round-trips any Python str through UTF-8
_BLOCK = 1 << 16


class StrColumn(Sequence[str]):
    """An immutable sequence of strings stored as one UTF-8 buffer plus ``n + 1`` int64 offsets."""

    __slots__ = ("_buf", "_off")

    def __init__(self, buf: bytes | bytearray, offsets: np.ndarray):
        self._buf = buf
        self._off = offsets

    @classmethod
    def from_strings(cls, strings: Iterable[str]) -> "StrColumn":
        b = _ColumnBuilder()
        for s in strings:
            b.append(s)
        return b.build()

    def __len__(self) -> int:
        return len(self._off) - 1

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {n} strings")
        a, b = int(self._off[i]), int(self._off[i + 1])
        return self._buf[a:b].decode("utf-8", _ENC)

    def __iter__(self) -> Iterator[str]:
        return self.iter_range(0, len(self))

    def iter_range(self, start: int, stop: int) -> Iterator[str]:
        """The strings ``start:stop`` in order, decoded block by block."""
        buf, off = self._buf, self._off
        stop = min(stop, len(self))
        for s in range(max(start, 0), stop, _BLOCK):
            o = off[s: min(s + _BLOCK, stop) + 1].tolist()
            for a, b in zip(o[:-1], o[1:]):
                yield buf[a:b].decode("utf-8", _ENC)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StrColumn):
            return len(self) == len(other) and np.array_equal(np.diff(self._off), np.diff(other._off)) \
                and self._buf[self._off[0]:self._off[-1]] == other._buf[other._off[0]:other._off[-1]]
        if isinstance(other, (list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        head = ", ".join(repr(s) for s in self[:3])
        return f"StrColumn([{head}{', ...' if len(self) > 3 else ''}], n={len(self)})"

    @property
    def nbytes(self) -> int:
        return len(self._buf) + self._off.nbytes

    def total_chars_bytes(self) -> int:
        return int(self._off[-1] - self._off[0])

    def take(self, indices: np.ndarray) -> "StrColumn":
        """A new column with the strings at ``indices`` (any order, repeats allowed)."""
        idx = np.asarray(indices, dtype=np.int64)
        starts, ends = self._off[idx], self._off[idx + 1]
        off = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(ends - starts, out=off[1:])
        buf = bytearray()
        mv = memoryview(self._buf)
        s_l, e_l = starts.tolist(), ends.tolist()
        for a, b in zip(s_l, e_l):
            buf += mv[a:b]
        return StrColumn(buf, off)

    @staticmethod
    def concat(cols: Sequence["StrColumn"]) -> "StrColumn":
        buf = bytearray()
        offs = [np.zeros(1, dtype=np.int64)]
        for c in cols:
            base = len(buf)
            buf += memoryview(c._buf)[int(c._off[0]):int(c._off[-1])]
            offs.append(c._off[1:] - c._off[0] + base)
        return StrColumn(buf, np.concatenate(offs))


class _ColumnBuilder:
    """Appends strings to a growing UTF-8 buffer; no per-string Python object is kept."""

    __slots__ = ("buf", "off")

    def __init__(self):
        self.buf = bytearray()
        self.off = array("q", [0])

    def append(self, s: str) -> None:
        self.buf += s.encode("utf-8", _ENC)
        self.off.append(len(self.buf))

    def extend_arrow(self, arr) -> None:
        """Append a ``pyarrow.LargeStringArray`` (no nulls) from its UTF-8 buffer: no Python str per value."""
        if len(arr) == 0:
            return
        _, off_buf, data = arr.buffers()
        offs = np.frombuffer(off_buf, dtype=np.int64)[arr.offset: arr.offset + len(arr) + 1]
        a, b = int(offs[0]), int(offs[-1])
        base = len(self.buf)
        if b > a:
            self.buf += memoryview(data)[a:b]
        self.off.frombytes((offs[1:] - a + base).astype(np.int64).tobytes())

    def build(self) -> StrColumn:
        return StrColumn(self.buf, np.frombuffer(self.off, dtype=np.int64))


class _CorpusBuilder:
    """Streams passages into three columns, remembering where each came from (for error messages)."""

    def __init__(self):
        self.ids, self.texts, self.titles = _ColumnBuilder(), _ColumnBuilder(), _ColumnBuilder()
        self.parents: _ColumnBuilder | None = None
        self.locs = array("q")

    def add(self, pid: str, text: str, title: str = "", loc: int = -1, parent: str | None = None) -> None:
        if parent is not None and self.parents is None:
            # first passage with a parent: the earlier ones are their own parents
            self.parents = _ColumnBuilder()
            buf, off = self.ids.buf, self.ids.off
            for j in range(len(off) - 1):
                self.parents.append(buf[off[j]:off[j + 1]].decode("utf-8", _ENC))
        if self.parents is not None:
            self.parents.append(pid if parent is None else parent)
        self.ids.append(pid)
        self.texts.append(text)
        self.titles.append(title)
        self.locs.append(loc)

    def __len__(self) -> int:
        return len(self.locs)

    def parents_view(self):
        """``(parent column, row -> parent index)`` when any passage named a parent, else None."""
        if self.parents is None:
            return None
        pcol = self.parents.build()
        return pcol, np.arange(len(pcol), dtype=np.int64)

    def locs_array(self) -> np.ndarray | None:
        return np.frombuffer(self.locs, dtype=np.int64) if self.locs else None


class _Empty(Sequence[str]):
    """n empty strings."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return ""

    def __iter__(self):
        return iter([""] * self.n) if self.n < _BLOCK else (("" for _ in range(self.n)))


class _Gather(Sequence[str]):
    """``col[idx[i]]`` as a sequence."""

    def __init__(self, col: StrColumn, idx: np.ndarray):
        self.col, self.idx = col, idx

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.col[int(j)] for j in self.idx[i]]
        return self.col[int(self.idx[i])]


def warn_empty_texts(ids: StrColumn, texts: StrColumn, source: str | None, locs: np.ndarray | None,
                     loc_name: str) -> int:
    """Log a warning when passages have empty (or blank) text: they are kept, but carry nothing to match."""
    off = texts._off
    short = np.nonzero(np.diff(off) <= 16)[0]  # only short entries can be blank; no full decode
    empty = [int(k) for k in short if not texts[int(k)].strip()]
    if empty:
        k = empty[0]
        where = f"{loc_name} {int(locs[k])}" if locs is not None and locs[k] >= 0 else f"passage {k}"
        logger.warning("%s: %d passage(s) have empty text (first: id %r at %s); they are indexed but match "
                       "nothing; remove them or fill in their text", source or "corpus", len(empty),
                       ids[k], where)
    return len(empty)


def check_unique_ids(ids: StrColumn, hs: np.ndarray, order: np.ndarray, source: str | None,
                     locs: np.ndarray | None, loc_name: str) -> None:
    """Raise ``DataFormatError`` on a duplicate id, naming both places; ``hs[order]`` are the sorted id hashes."""
    same = np.flatnonzero(hs[1:] == hs[:-1])
    if len(same) == 0:
        return
    # group runs of equal hashes, then compare the real strings (hash collisions are not duplicates)
    starts = same[np.r_[True, np.diff(same) > 1]]
    dups: list[tuple[int, int, str]] = []  # (position, first position, id)
    for s in starts.tolist():
        e = s + 1
        while e < len(hs) and hs[e] == hs[s]:
            e += 1
        first: dict[str, int] = {}
        for i in sorted(order[s:e].tolist()):
            pid = ids[i]
            if pid in first:
                dups.append((i, first[pid], pid))
            else:
                first[pid] = i
    if not dups:
        return

    def where(k: int) -> str:
        if locs is not None and locs[k] >= 0:
            return f"{loc_name} {int(locs[k])}"
        return f"passage {k}"

    i, j, pid = min(dups)  # report the earliest one in file order
    more = f"; {len(dups) - 1} more duplicate(s) follow" if len(dups) > 1 else ""
    raise DataFormatError(source, where(i), f"duplicate passage id {pid!r} (first at {where(j)}){more}; "
                                            "expected unique ids")


def hash_index(ids: StrColumn) -> tuple[np.ndarray, np.ndarray]:
    """The id index: ``(sorted 64-bit hashes of the ids (N,), the row of each (N,))``."""
    h = np.fromiter((hash(s) for s in ids), dtype=np.int64, count=len(ids))  # (N,)
    order = np.argsort(h, kind="stable")
    return h[order], order


def find_ids(ids: StrColumn, hs: np.ndarray, order: np.ndarray, pids: Sequence[str]) -> np.ndarray:
    """Rows of ``pids`` (int64, ``-1`` when absent) through the id index ``(hs, order)`` of :func:`hash_index`."""
    h = np.fromiter((hash(p) for p in pids), dtype=np.int64, count=len(pids))
    js = np.searchsorted(hs, h, side="left")  # (M,)
    out = np.full(len(pids), -1, dtype=np.int64)
    for k, (pid, j) in enumerate(zip(pids, js.tolist())):
        while j < len(hs) and hs[j] == h[k]:
            i = int(order[j])
            if ids[i] == pid:
                out[k] = i
                break
            j += 1
    return out
