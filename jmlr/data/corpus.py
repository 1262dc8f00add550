"""A memory-light passage collection: :class:`Corpus`.

Storage: ids, texts and titles each live in one UTF-8 buffer with an int64 offsets array (no Python
object per passage). Id lookup uses a sorted array of 64-bit string hashes (16 bytes per passage)
instead of a dict. ``benchmarks/corpus_memory.py`` measures it at 1M short passages (144 bytes of UTF-8
each): 187 bytes per passage resident, against 398 for three lists of ``str`` plus an id dict and 446 for a
list of ``Passage`` objects plus an id dict (see docs/data.md). Id lookup costs about 3x a dict's.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence, overload

import numpy as np

from ._io import DataFormatError, atomic_write_lines, iter_jsonl, iter_lines, open_text
from .text import normalize_for_dedup
from .types import Passage, join_title

logger = logging.getLogger("jmlr.data")

_ENC = "surrogatepass"  # round-trips any Python str through UTF-8
_BLOCK = 1 << 16


# ---------------------------------------------------------------------------------------------- string column
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

    def build(self, source: str | None = None, loc_name: str = "line") -> "Corpus":
        parents = None
        if self.parents is not None:
            pcol = self.parents.build()
            parents = (pcol, np.arange(len(pcol), dtype=np.int64))
        return Corpus._from_columns(self.ids.build(), self.texts.build(), self.titles.build(), parents=parents,
                                    source=source, locs=np.frombuffer(self.locs, dtype=np.int64) if self.locs else None,
                                    loc_name=loc_name)


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


# ---------------------------------------------------------------------------------------------- Corpus
class Corpus(Sequence[Passage]):
    """An ordered, id-addressable collection of :class:`Passage` with compact storage.

    Build one from passages (``Corpus([Passage(...), ...])``, dicts work too) or load a file with
    :meth:`load`. Ids must be unique. ``corpus[i]`` and iteration give ``Passage`` objects made on the
    fly; ``corpus.get(id)`` / ``corpus.index_of(id)`` look up by id; ``corpus.texts()`` gives the
    strings a doc encoder sees (``"title. text"``).

    Example::

        corpus = Corpus.load("pubmed_sections.jsonl").dedup().chunk(256, 32, tokenizer=tok)
        i = corpus.index_of("pubmed-21645374-0"); corpus[i].title
    """

    def __init__(self, passages: Iterable[Passage | Mapping[str, Any]] = ()):
        b = _CorpusBuilder()
        for k, p in enumerate(passages):
            if isinstance(p, Mapping):
                try:
                    p = Passage(p["id"], p["text"], p.get("title") or "")
                except KeyError as e:
                    raise ValueError(f"passage {k}: missing key {e.args[0]!r}; expected {{id, text, title?}}") from None
            elif not isinstance(p, Passage):
                raise TypeError(f"passage {k}: expected a Passage or a dict {{id, text, title?}}, got {type(p).__name__}")
            b.add(p.id, p.text, p.title, k)
        self._set(b.ids.build(), b.texts.build(), b.titles.build(), None)
        self._check_ids(None, np.frombuffer(b.locs, dtype=np.int64) if b.locs else None, "passage")

    # -- construction ---------------------------------------------------------------------------
    def _set(self, ids: StrColumn, texts: StrColumn, titles: StrColumn | None,
             parents: tuple[StrColumn, np.ndarray] | None) -> None:
        if titles is not None and titles.total_chars_bytes() == 0:
            titles = None  # no titles at all: store nothing per passage
        self._ids, self._texts, self._titles = ids, texts, titles
        self._parents = parents
        self._hash_sorted: np.ndarray | None = None
        self._hash_order: np.ndarray | None = None
        self.source: str | None = None
        self.dedup_report: DedupReport | None = None

    @classmethod
    def _from_columns(cls, ids: StrColumn, texts: StrColumn, titles: StrColumn | None, *,
                      parents: tuple[StrColumn, np.ndarray] | None = None, source: str | None = None,
                      locs: np.ndarray | None = None, loc_name: str = "line", check: bool = True) -> "Corpus":
        c = cls.__new__(cls)
        c._set(ids, texts, titles, parents)
        c.source = source
        if check:
            c._check_ids(source, locs, loc_name)
            c._warn_empty(source, locs, loc_name)
        return c

    def _warn_empty(self, source: str | None, locs: np.ndarray | None, loc_name: str) -> int:
        """Log a warning when passages have empty (or blank) text: they are kept, but carry nothing to match."""
        off = self._texts._off
        short = np.nonzero(np.diff(off) <= 16)[0]  # only short entries can be blank; no full decode
        empty = [int(k) for k in short if not self._texts[int(k)].strip()]
        if empty:
            k = empty[0]
            where = f"{loc_name} {int(locs[k])}" if locs is not None and locs[k] >= 0 else f"passage {k}"
            logger.warning("%s: %d passage(s) have empty text (first: id %r at %s); they are indexed but match "
                           "nothing; remove them or fill in their text", source or "corpus", len(empty),
                           self._ids[k], where)
        return len(empty)

    def _check_ids(self, source: str | None, locs: np.ndarray | None, loc_name: str) -> None:
        """Build the id index; raise ``ValueError`` on an empty or duplicate id, naming both places."""
        hs, order = self._build_index()
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
                pid = self._ids[i]
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

    def _build_index(self) -> tuple[np.ndarray, np.ndarray]:
        n = len(self._ids)
        h = np.fromiter((hash(s) for s in self._ids), dtype=np.int64, count=n)  # (N,)
        order = np.argsort(h, kind="stable")
        self._hash_sorted, self._hash_order = h[order], order
        return self._hash_sorted, self._hash_order

    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        if self._hash_sorted is None:
            return self._build_index()
        return self._hash_sorted, self._hash_order

    def __getstate__(self):
        # string hashes differ between processes (PYTHONHASHSEED): rebuild the index after unpickling
        return {"ids": self._ids, "texts": self._texts, "titles": self._titles, "parents": self._parents,
                "source": self.source, "dedup_report": self.dedup_report}

    def __setstate__(self, st):
        self._set(st["ids"], st["texts"], st["titles"], st["parents"])
        self.source, self.dedup_report = st["source"], st["dedup_report"]

    @classmethod
    def from_texts(cls, texts: Iterable[str], ids: Iterable[str] | None = None,
                   titles: Iterable[str] | None = None, id_prefix: str = "p") -> "Corpus":
        """A corpus from parallel lists; ids default to ``f"{id_prefix}{i}"``."""
        texts = list(texts)
        ids = [f"{id_prefix}{i}" for i in range(len(texts))] if ids is None else [str(x) for x in ids]
        titles = [""] * len(texts) if titles is None else list(titles)
        if not len(ids) == len(texts) == len(titles):
            raise ValueError(f"from_texts: {len(texts)} texts, {len(ids)} ids, {len(titles)} titles; expected equal lengths")
        return cls(Passage(i, t, ti or "") for i, t, ti in zip(ids, texts, titles))

    @classmethod
    def from_hf(cls, dataset: Any, id: str | None = "id", text: str = "text", title: str | None = "title", *,
                split: str | None = None, batch_size: int = 16384) -> "Corpus":
        """A corpus from a Hugging Face ``datasets.Dataset`` (or ``IterableDataset``, a ``DatasetDict`` with
        ``split=``, or a ``save_to_disk`` folder), naming the columns of the id, text and title.

        Columns are read in Arrow record batches and copied from Arrow's UTF-8 buffers straight into the compact
        store: no Python string per passage, no list or pandas copy. ``id=None`` numbers the rows (``"0"``,
        ``"1"``, ...); integer id columns become strings. The title column is optional when left at its default
        ``"title"``. A missing column, a null id or text, an empty id or a duplicate id raises ``ValueError``
        naming the column (or record).

        >>> ds = datasets.Dataset.from_dict({"pmid": [1, 2], "abstract": ["...", "..."]})   # doctest: +SKIP
        >>> corpus = Corpus.from_hf(ds, id="pmid", text="abstract")                        # doctest: +SKIP
        """
        from .hf import arrow_batches, check_columns, column_names, resolve_dataset, string_chunks

        ds, desc = resolve_dataset(dataset, split)
        cols = column_names(ds)
        if title == "title" and cols and "title" not in cols:
            title = None  # the default title column is optional
        check_columns(ds, desc, {"id": id, "text": text, "title": title})
        b = _CorpusBuilder()
        want = [c for c in (id, text, title) if c is not None]
        n = 0
        for table in arrow_batches(ds, want, batch_size):
            rows = table.num_rows
            if id is None:
                for j in range(n, n + rows):
                    b.ids.append(str(j))
            else:
                ids = string_chunks(table, id, desc, "id", n)
                import pyarrow.compute as pc

                for chunk in ids:
                    empty = pc.equal(pc.binary_length(chunk), 0)
                    if pc.any(empty).as_py():
                        first = int(pc.index(empty, True).as_py())
                        raise DataFormatError(None, f"{desc}, record {n + first}", f"column {id!r} (id) is empty; "
                                                                                   "expected a non-empty id")
                    b.ids.extend_arrow(chunk)
            for chunk in string_chunks(table, text, desc, "text", n):
                b.texts.extend_arrow(chunk)
            if title is not None:
                for chunk in string_chunks(table, title, desc, "title", n, required=False):
                    b.titles.extend_arrow(chunk)
            else:
                b.titles.off.extend([len(b.titles.buf)] * rows)
            n += rows
        if n == 0:
            raise DataFormatError(None, desc, "dataset is empty; expected passages")
        return Corpus._from_columns(b.ids.build(), b.texts.build(), b.titles.build(), source=desc,
                                    locs=np.arange(n, dtype=np.int64), loc_name="record")

    @staticmethod
    def concat(corpora: Sequence["Corpus"]) -> "Corpus":
        """One corpus holding all passages of ``corpora`` in order (ids must stay unique)."""
        corpora = list(corpora)
        if not corpora:
            return Corpus()
        ids = StrColumn.concat([c._ids for c in corpora])
        texts = StrColumn.concat([c._texts for c in corpora])
        titles = StrColumn.concat([c._title_col() for c in corpora])
        parents = None
        if any(c._parents is not None for c in corpora):
            pcols, pidx, base = [], [], 0
            for c in corpora:
                col, idx = c._parent_view()
                pcols.append(col)
                pidx.append(idx + base)
                base += len(col)
            parents = (StrColumn.concat(pcols), np.concatenate(pidx))
        return Corpus._from_columns(ids, texts, titles, parents=parents, loc_name="passage")

    # -- sequence protocol ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    @overload
    def __getitem__(self, i: int) -> Passage: ...
    @overload
    def __getitem__(self, i: slice) -> "Corpus": ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.select(np.arange(len(self))[i])
        if isinstance(i, (list, np.ndarray)):
            return self.select(i)
        if isinstance(i, (np.integer,)):
            i = int(i)
        if not isinstance(i, int):
            raise TypeError(f"corpus indices are ints, slices or index lists (use corpus.get(id) for ids), "
                            f"got {type(i).__name__}")
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"passage index {i} out of range for a corpus of {n}")
        return Passage(self._ids[i], self._texts[i], self._titles[i] if self._titles is not None else "")

    def __iter__(self) -> Iterator[Passage]:
        titles = self._titles if self._titles is not None else _Empty(len(self))
        for pid, text, title in zip(self._ids, self._texts, titles):
            yield Passage(pid, text, title)

    def __contains__(self, pid: object) -> bool:
        if isinstance(pid, Passage):
            pid = pid.id
        if not isinstance(pid, str):
            return False
        return self._find(pid) >= 0

    def __repr__(self) -> str:
        src = f", source={self.source!r}" if self.source else ""
        return f"Corpus(n={len(self)}{src})"

    # -- id lookup ----------------------------------------------------------------------------------
    def _find(self, pid: str) -> int:
        hs, order = self._index()
        h = hash(pid)
        j = int(np.searchsorted(hs, h, side="left"))
        while j < len(hs) and hs[j] == h:
            i = int(order[j])
            if self._ids[i] == pid:
                return i
            j += 1
        return -1

    def index_of(self, pid: str) -> int:
        """Position of passage ``pid``; ``KeyError`` when absent."""
        i = self._find(pid)
        if i < 0:
            raise KeyError(f"passage id {pid!r} is not in the corpus ({len(self)} passages)")
        return i

    def indices_of(self, pids: Iterable[str], missing: str = "raise") -> np.ndarray:
        """Positions of many ids at once, as an int64 array. ``missing="raise"`` or ``-1`` (mark with -1)."""
        pids = list(pids)
        if missing not in ("raise", -1, "-1"):
            raise ValueError(f"missing must be 'raise' or -1, got {missing!r}")
        hs, order = self._index()
        h = np.fromiter((hash(p) for p in pids), dtype=np.int64, count=len(pids))
        js = np.searchsorted(hs, h, side="left")  # (M,)
        out = np.full(len(pids), -1, dtype=np.int64)
        for k, (pid, j) in enumerate(zip(pids, js.tolist())):
            while j < len(hs) and hs[j] == h[k]:
                i = int(order[j])
                if self._ids[i] == pid:
                    out[k] = i
                    break
                j += 1
            if out[k] < 0 and missing == "raise":
                raise KeyError(f"passage id {pid!r} is not in the corpus ({len(self)} passages)")
        return out

    _NO_DEFAULT = object()

    def get(self, pid: str, default: Any = _NO_DEFAULT) -> Passage:
        """The passage with id ``pid``; ``KeyError`` when absent unless ``default`` is given."""
        i = self._find(pid)
        if i < 0:
            if default is not Corpus._NO_DEFAULT:
                return default
            raise KeyError(f"passage id {pid!r} is not in the corpus ({len(self)} passages)")
        return self[i]

    # -- columns ---------------------------------------------------------------------------------------
    @property
    def ids(self) -> Sequence[str]:
        """All ids in order (a compact read-only sequence; ``list(corpus.ids)`` to materialise)."""
        return self._ids

    @property
    def titles(self) -> Sequence[str]:
        return self._title_col()

    def _title_col(self) -> StrColumn:
        if self._titles is None:
            return StrColumn(b"", np.zeros(len(self) + 1, dtype=np.int64))
        return self._titles

    def text(self, i: int) -> str:
        """The text of passage ``i`` (no title)."""
        return self._texts[i]

    def texts(self, with_title: bool = True, start: int = 0, stop: int | None = None) -> list[str]:
        """The strings a doc encoder sees for passages ``start:stop``: ``"title. text"`` (or just text)."""
        stop = len(self) if stop is None else min(stop, len(self))
        if not with_title or self._titles is None:
            return list(self._texts.iter_range(start, stop))
        return [join_title(t, x) for t, x in zip(self._titles.iter_range(start, stop), self._texts.iter_range(start, stop))]

    def iter_batches(self, batch_size: int, with_title: bool = True) -> Iterator[tuple[int, list[str]]]:
        """Yield ``(start, texts)`` batches for encoding without materialising every string at once."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        for s in range(0, len(self), batch_size):
            yield s, self.texts(with_title, s, s + batch_size)

    # -- parents (chunking) ---------------------------------------------------------------------------------
    def _parent_view(self) -> tuple[StrColumn, np.ndarray]:
        if self._parents is None:
            return self._ids, np.arange(len(self), dtype=np.int64)
        return self._parents

    @property
    def is_chunked(self) -> bool:
        """True when the passages are chunks of other passages (see :meth:`chunk`)."""
        return self._parents is not None

    def parent_id(self, i: int) -> str:
        """The id of the passage that passage ``i`` was chunked from (its own id when not chunked)."""
        col, idx = self._parent_view()
        return col[int(idx[i])]

    @property
    def parent_ids(self) -> Sequence[str]:
        """``parent_id(i)`` for every passage, in order."""
        col, idx = self._parent_view()
        if self._parents is None:
            return col
        return _Gather(col, idx)

    # -- identity and memory ------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """A content hash (ids, titles, texts, in order): equal corpora give equal fingerprints.

        Indexes store it to detect a corpus that changed under them.
        """
        h = hashlib.blake2b(digest_size=16)
        for col in (self._ids, self._title_col(), self._texts):
            off = np.ascontiguousarray(col._off - col._off[0])
            h.update(len(col).to_bytes(8, "little"))
            h.update(off.tobytes())
            h.update(memoryview(col._buf)[int(col._off[0]):int(col._off[-1])])
        return h.hexdigest()

    def memory_usage(self) -> dict[str, int]:
        """Bytes held by the columns and the id index (not counting the Python objects around them)."""
        out = {"ids": self._ids.nbytes, "texts": self._texts.nbytes,
               "titles": 0 if self._titles is None else self._titles.nbytes,
               "index": 0 if self._hash_sorted is None else self._hash_sorted.nbytes + self._hash_order.nbytes}
        if self._parents is not None:
            out["parents"] = self._parents[0].nbytes + self._parents[1].nbytes
        out["total"] = sum(out.values())
        return out

    # -- transforms ---------------------------------------------------------------------------------------
    def select(self, indices: Iterable[int] | np.ndarray) -> "Corpus":
        """A new corpus with the passages at ``indices`` (in that order; no repeats)."""
        idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64)
        if idx.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {idx.shape}")
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"indices out of range for a corpus of {len(self)}")
        idx = np.where(idx < 0, idx + len(self), idx)
        parents = None
        if self._parents is not None:
            parents = (self._parents[0], self._parents[1][idx])
        titles = self._titles.take(idx) if self._titles is not None else None
        out = Corpus._from_columns(self._ids.take(idx), self._texts.take(idx), titles, parents=parents,
                                   loc_name="passage")
        out.source = self.source
        return out

    def dedup(self, *, key: str = "text", progress: bool | None = None) -> "Corpus":
        """Drop exact duplicates after normalisation (NFKC, case-fold, whitespace collapsed); keep the first.

        ``key="text"`` compares texts; ``key="title+text"`` compares title and text. The result carries a
        :class:`DedupReport` in ``.dedup_report`` (counts, and ``duplicate_of[dropped_id] = kept_id`` so gold
        ids can be remapped); the counts are also logged.
        """
        from tqdm.auto import tqdm

        if key not in ("text", "title+text"):
            raise ValueError(f"key must be 'text' or 'title+text', got {key!r}")
        seen: dict[bytes, int] = {}
        keep = array("q")
        dup_of: dict[str, str] = {}
        titles = self._title_col()
        it = zip(self._texts, titles) if key == "title+text" else ((t, "") for t in self._texts)
        show = len(self) > 50_000 if progress is None else progress
        for i, (text, title) in enumerate(tqdm(it, total=len(self), desc="dedup", disable=not show, unit="psg")):
            k = normalize_for_dedup(text) if not title else normalize_for_dedup(title) + "\x00" + normalize_for_dedup(text)
            d = hashlib.blake2b(k.encode("utf-8", _ENC), digest_size=16).digest()
            j = seen.setdefault(d, i)
            if j == i:
                keep.append(i)
            else:
                dup_of[self._ids[i]] = self._ids[j]
        out = self.select(np.frombuffer(keep, dtype=np.int64)) if len(keep) else self.select([])
        out.dedup_report = DedupReport(len(self), len(out), dup_of)
        logger.info("%s%s", f"{self.source}: " if self.source else "", out.dedup_report)
        return out

    def chunk(self, size: int, overlap: int = 0, *, tokenizer: Any = None, unit: str | None = None,
              batch_size: int = 512, progress: bool | None = None) -> "Corpus":
        """Split long passages into windows of ``size`` tokens (with ``tokenizer``) or characters.

        Args:
            size: window length, in tokens of ``tokenizer`` or in characters.
            overlap: how much consecutive windows share (``0 <= overlap < size``).
            tokenizer: any Hugging Face tokenizer; fast ones slice the original text by their offsets,
                slow ones decode the window's tokens. Counts cover the text only (titles are repeated on
                every chunk and not counted).
            unit: ``"tokens"`` or ``"chars"``; defaults to tokens when a tokenizer is given.

        A passage that fits keeps its id; a longer one becomes ``f"{id}#{j}"`` for ``j = 0, 1, ...``, with
        the title repeated. ``parent_id(i)`` maps a chunk back to its passage. Character windows end at
        whitespace when one is in the window's second half, so words are not cut.
        """
        from tqdm.auto import tqdm

        unit = unit or ("tokens" if tokenizer is not None else "chars")
        if unit not in ("tokens", "chars"):
            raise ValueError(f"unit must be 'tokens' or 'chars', got {unit!r}")
        if unit == "tokens" and tokenizer is None:
            raise ValueError("unit='tokens' needs a tokenizer (any Hugging Face tokenizer)")
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"size must be a positive int, got {size!r}")
        if not isinstance(overlap, int) or not 0 <= overlap < size:
            raise ValueError(f"overlap must be an int with 0 <= overlap < size ({size}), got {overlap!r}")
        b = _CorpusBuilder()
        src = array("q")  # per chunk: index into pcol of the passage it came from
        pcol, pidx = self._parent_view()
        titles = self._title_col()
        n = len(self)
        show = n > 20_000 if progress is None else progress
        bar = tqdm(total=n, desc=f"chunk ({unit})", disable=not show, unit="psg")
        for s in range(0, n, batch_size):
            e = min(s + batch_size, n)
            texts = [self._texts[i] for i in range(s, e)]
            if unit == "chars":
                pieces = [[text[a:b2] for a, b2 in _char_windows(text, size, overlap)] for text in texts]
            else:
                pieces = _token_windows(tokenizer, texts, size, overlap)
            for k, chunks in enumerate(pieces):
                i = s + k
                pid, title, parent = self._ids[i], titles[i], int(pidx[i])
                if len(chunks) <= 1:
                    b.add(pid, texts[k] if not chunks else chunks[0], title, i)
                    src.append(parent)
                else:
                    for j, ch in enumerate(chunks):
                        b.add(f"{pid}#{j}", ch, title, i)
                        src.append(parent)
            bar.update(e - s)
        bar.close()
        out = Corpus._from_columns(b.ids.build(), b.texts.build(), b.titles.build(),
                                   parents=(pcol, np.frombuffer(src, dtype=np.int64).copy() if len(src) else
                                            np.zeros(0, dtype=np.int64)),
                                   source=self.source, locs=np.frombuffer(b.locs, dtype=np.int64) if b.locs else None,
                                   loc_name="from passage")
        return out

    # -- I/O --------------------------------------------------------------------------------------------
    def save_jsonl(self, path: str | os.PathLike) -> Path:
        """Write ``{id, title?, text}`` per line (plus ``parent`` for chunks), atomically (temp + rename).

        ``Corpus.load(path)`` reads it back to an equal corpus (same fingerprint).
        """
        titles = self._title_col()
        pcol, pidx = self._parent_view()
        chunked = self._parents is not None

        def lines() -> Iterator[str]:
            for i, (pid, title, text) in enumerate(zip(self._ids, titles, self._texts)):
                d: dict[str, str] = {"id": pid}
                if title:
                    d["title"] = title
                d["text"] = text
                if chunked:
                    parent = pcol[int(pidx[i])]
                    if parent != pid:
                        d["parent"] = parent
                yield json.dumps(d, ensure_ascii=False)

        return atomic_write_lines(path, lines())

    @classmethod
    def load(cls, path: str | os.PathLike, fmt: str | None = None, **kw: Any) -> "Corpus":
        """Load passages from a file or folder.

        Formats (``fmt``, or inferred from the path):

        - ``jsonl``: ``{"id", "title"?, "text"}`` per line (``.jsonl``, ``.json``, ``.gz`` too); keyword
          arguments ``id_field``, ``text_field``, ``title_field`` rename the fields.
        - ``tsv``: ``id<TAB>text[<TAB>title]`` per line (DPR's ``psgs_w100.tsv`` layout, header optional).
        - ``text``: a ``.txt``/``.md`` file, one passage per blank-line-separated paragraph; ids
          ``f"{file name}:{k}"``; in markdown the nearest heading is the title and headings are not passages.
        - ``folder``: every ``.md``/``.markdown``/``.txt`` file below the folder (sorted), as ``text``; ids
          ``f"{relative path}:{k}"``; a ``.txt`` file's title is its stem.
        - ``hf``: a folder written by ``datasets``' ``save_to_disk``, through :meth:`from_hf` (keyword arguments
          ``id``, ``text``, ``title``, ``split`` name the columns and the split).

        Raises ``FileNotFoundError`` for a missing path and ``ValueError`` naming the file and line for
        malformed input, a missing field, an empty file, or duplicate ids.
        """
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or folder (expected a corpus: JSONL, TSV, text or a folder)")
        fmt = _infer_corpus_format(p) if fmt is None else fmt.lower()
        loaders = {"jsonl": _load_jsonl, "tsv": _load_tsv, "text": _load_text, "txt": _load_text, "md": _load_text,
                   "markdown": _load_text, "folder": _load_folder, "hf": Corpus.from_hf}
        if fmt not in loaders:
            raise ValueError(f"unknown corpus format {fmt!r}; expected one of: jsonl, tsv, text, folder, hf")
        if fmt == "hf":
            out = Corpus.from_hf(p, **kw)
            out.source = str(p)
            return out
        if fmt == "folder" and not p.is_dir():
            raise DataFormatError(p, None, "is not a folder; expected a folder of .md/.txt files")
        if fmt != "folder" and p.is_dir():
            raise DataFormatError(p, None, f"is a folder; format {fmt!r} expects a file (use fmt='folder')")
        out = loaders[fmt](p, **kw)
        out.source = str(p)
        return out


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


# ---------------------------------------------------------------------------------------------- chunking
def _char_windows(text: str, size: int, overlap: int) -> list[tuple[int, int]]:
    """``(start, end)`` windows of at most ``size`` characters, preferring to end at whitespace."""
    n = len(text)
    if n <= size:
        return [(0, n)]
    out: list[tuple[int, int]] = []
    start = 0
    while start < n:
        while start < n and text[start].isspace():
            start += 1
        if start >= n:
            break
        end = start + size
        if end >= n:
            end = n
        else:
            lo = start + size // 2
            cut = max(text.rfind(" ", lo, end + 1), text.rfind("\n", lo, end + 1), text.rfind("\t", lo, end + 1))
            if cut > start:
                end = cut
        e2 = end
        while e2 > start and text[e2 - 1].isspace():
            e2 -= 1
        out.append((start, e2))
        if end >= n:
            break
        nxt = end - overlap
        if overlap > 0:  # start the overlap at a word boundary
            k = nxt
            while k < end and k > 0 and not text[k - 1].isspace():
                k += 1
            if k < end:
                nxt = k
        start = max(nxt, start + 1)
    return out


def _token_windows(tokenizer: Any, texts: list[str], size: int, overlap: int) -> list[list[str]]:
    """Token windows per text: slices of the original text (fast tokenizers) or decoded tokens (slow ones)."""
    fast = bool(getattr(tokenizer, "is_fast", False))
    kwargs: dict[str, Any] = {"add_special_tokens": False, "return_attention_mask": False, "verbose": False}
    if fast:
        kwargs["return_offsets_mapping"] = True
    enc = tokenizer(texts, **kwargs)
    step = size - overlap
    out: list[list[str]] = []
    for k, text in enumerate(texts):
        ids = enc["input_ids"][k]
        m = len(ids)
        if m <= size:
            out.append([text])
            continue
        offs = enc["offset_mapping"][k] if fast else None
        chunks = []
        for s in range(0, m, step):
            e = min(s + size, m)
            if fast:
                piece = text[offs[s][0]: offs[e - 1][1]].strip()
            else:
                piece = tokenizer.decode(ids[s:e], skip_special_tokens=True).strip()
            if piece:
                chunks.append(piece)
            if e >= m:
                break
        out.append(chunks or [text])
    return out


# ---------------------------------------------------------------------------------------------- loaders
def _infer_corpus_format(p: Path) -> str:
    if p.is_dir():
        if (p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file():
            return "hf"  # written by datasets' save_to_disk
        return "folder"
    name = p.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for suf, fmt in ((".jsonl", "jsonl"), (".json", "jsonl"), (".tsv", "tsv"), (".txt", "text"), (".md", "text"),
                     (".markdown", "text")):
        if name.endswith(suf):
            return fmt
    raise ValueError(f"{p}: cannot tell the corpus format from the name; pass fmt= one of jsonl, tsv, text, folder")


def _str_field(path: Path, where: str, rec: Mapping, key: str, required: bool, alt: str | None = None) -> str:
    if key not in rec and alt is not None and alt in rec:
        key = alt
    if key not in rec or rec[key] is None:
        if required:
            raise DataFormatError(path, where, f"missing field {key!r}; expected a passage {{id, title?, text}} "
                                               f"(record has {sorted(rec)})")
        return ""
    v = rec[key]
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise DataFormatError(path, where, f"field {key!r} is {type(v).__name__}; expected a string")
    return str(v)


def _load_jsonl(p: Path, id_field: str = "id", text_field: str = "text", title_field: str = "title") -> Corpus:
    b = _CorpusBuilder()
    expected = "one passage object {id, title?, text} per line"
    alt_text = "contents" if text_field == "text" else None  # Pyserini's JSONL name
    for where, rec in iter_jsonl(p, expected):
        pid = _str_field(p, where, rec, id_field, True)
        if not pid:
            raise DataFormatError(p, where, f"empty id; expected a non-empty {id_field!r}")
        text = _str_field(p, where, rec, text_field, True, alt_text)
        title = _str_field(p, where, rec, title_field, False)
        parent = rec.get("parent")
        b.add(pid, text, title, int(where.split()[-1]), parent if isinstance(parent, str) else None)
    return b.build(str(p))


def _load_tsv(p: Path, quoting: bool = True) -> Corpus:
    csv.field_size_limit(2**31 - 1)
    b = _CorpusBuilder()
    with open_text(p) as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE)
        line = 1
        try:
            for row in reader:
                where, line = line, reader.line_num + 1
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(b) == 0 and row[0].strip().lower() == "id" and len(row) > 1 and row[1].strip().lower() == "text":
                    continue  # header
                if len(row) not in (2, 3):
                    raise DataFormatError(p, f"line {where}", f"{len(row)} tab-separated column(s); "
                                                              "expected id<TAB>text[<TAB>title]")
                if not row[0].strip():
                    raise DataFormatError(p, f"line {where}", "empty id; expected id<TAB>text[<TAB>title]")
                b.add(row[0], row[1], row[2] if len(row) == 3 else "", where)
        except csv.Error as e:
            raise DataFormatError(p, f"line {line}", f"malformed TSV ({e}); expected id<TAB>text[<TAB>title]") from None
        except UnicodeDecodeError as e:
            raise DataFormatError(p, f"near line {line}", f"not valid UTF-8 ({e.reason})") from None
    if len(b) == 0:
        raise DataFormatError(p, None, "file is empty; expected lines id<TAB>text[<TAB>title]")
    return b.build(str(p))


_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s{0,3}(```|~~~)")


def _paragraphs(p: Path, markdown: bool) -> Iterator[tuple[int, str, str]]:
    """``(first line, title, paragraph)`` for each blank-line-separated paragraph of a text file."""
    title = ""
    buf: list[str] = []
    start = 0
    in_fence = False
    for lineno, line in iter_lines(p):
        if markdown and _FENCE.match(line):
            in_fence = not in_fence
        if markdown and not in_fence:
            m = _HEADING.match(line)
            if m:
                if buf:
                    yield start, title, "\n".join(buf).strip()
                    buf = []
                title = m.group(2).strip()
                continue
        if not line.strip() and not in_fence:
            if buf:
                yield start, title, "\n".join(buf).strip()
                buf = []
            continue
        if not buf:
            start = lineno
        buf.append(line)
    if buf:
        yield start, title, "\n".join(buf).strip()


def _add_text_file(b: _CorpusBuilder, p: Path, rel: str, default_title: str) -> int:
    md = p.suffix.lower() in (".md", ".markdown")
    k = 0
    for lineno, title, para in _paragraphs(p, md):
        if not para:
            continue
        b.add(f"{rel}:{k}", para, title or default_title, lineno)
        k += 1
    return k


def _load_text(p: Path) -> Corpus:
    b = _CorpusBuilder()
    if _add_text_file(b, p, p.name, "") == 0:
        raise DataFormatError(p, None, "file is empty; expected paragraphs separated by blank lines")
    return b.build(str(p))


_TEXT_SUFFIXES = (".md", ".markdown", ".txt")


def _load_folder(p: Path) -> Corpus:
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in _TEXT_SUFFIXES)
    if not files:
        raise DataFormatError(p, None, "folder holds no .md/.markdown/.txt files; expected text documents")
    b = _CorpusBuilder()
    for f in files:
        rel = f.relative_to(p).as_posix()
        md = f.suffix.lower() in (".md", ".markdown")
        _add_text_file(b, f, rel, f.stem if not md else f.stem)
    if len(b) == 0:
        raise DataFormatError(p, None, f"all {len(files)} text files are empty; expected paragraphs of text")
    return b.build(str(p), loc_name="passage")
