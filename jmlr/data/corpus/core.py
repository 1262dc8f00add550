"""A memory-light passage collection: :class:`Corpus`.

Storage: ids, texts and titles each live in one UTF-8 buffer with an int64 offsets array (no Python
object per passage, see :mod:`.columns`). Id lookup uses a sorted array of 64-bit string hashes (16 bytes
per passage) instead of a dict. ``benchmarks/corpus_memory.py`` measures it at 1M short passages (144 bytes of
UTF-8 each): 187 bytes per passage resident, against 398 for three lists of ``str`` plus an id dict and 446
for a list of ``Passage`` objects plus an id dict (see docs/data.md). Id lookup costs about 3x a dict's.
Chunking is in :mod:`.chunking`, the file formats in :mod:`.formats`.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence, overload

import numpy as np

from .._io import atomic_write_lines
from ..types import Passage, join_title
from .chunking import chunk_passages
from .columns import (StrColumn, _CorpusBuilder, _Empty, _Gather, check_unique_ids, find_ids, hash_index,
                      warn_empty_texts)
from .dedup import DedupReport, find_duplicates
from .formats import LOADERS, check_corpus_path, jsonl_lines, read_hf

logger = logging.getLogger("jmlr.data")


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

    @classmethod
    def _from_builder(cls, b: _CorpusBuilder, source: str | None, loc_name: str, *,
                      locs: np.ndarray | None = None) -> "Corpus":
        """A corpus from a filled ``_CorpusBuilder`` (ids checked, empty texts warned about, naming ``source``)."""
        return cls._from_columns(b.ids.build(), b.texts.build(), b.titles.build(), parents=b.parents_view(),
                                 source=source, locs=b.locs_array() if locs is None else locs, loc_name=loc_name)

    def _warn_empty(self, source: str | None, locs: np.ndarray | None, loc_name: str) -> int:
        return warn_empty_texts(self._ids, self._texts, source, locs, loc_name)

    def _check_ids(self, source: str | None, locs: np.ndarray | None, loc_name: str) -> None:
        """Build the id index; raise ``ValueError`` on a duplicate id, naming both places."""
        hs, order = self._build_index()
        check_unique_ids(self._ids, hs, order, source, locs, loc_name)

    def _build_index(self) -> tuple[np.ndarray, np.ndarray]:
        self._hash_sorted, self._hash_order = hash_index(self._ids)
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
        b, desc, n = read_hf(dataset, id, text, title, split, batch_size)
        return cls._from_builder(b, desc, "record", locs=np.arange(n, dtype=np.int64))

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
        return int(find_ids(self._ids, *self._index(), [pid])[0])

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
        out = find_ids(self._ids, *self._index(), pids)
        if missing == "raise" and (out < 0).any():
            pid = pids[int(np.flatnonzero(out < 0)[0])]
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
        if key not in ("text", "title+text"):
            raise ValueError(f"key must be 'text' or 'title+text', got {key!r}")
        keep, dup_of = find_duplicates(self._ids, self._texts, self._title_col(), key, len(self), progress)
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

        b, src = chunk_passages(self, size, overlap, tokenizer=tokenizer, unit=unit, batch_size=batch_size,
                                progress=progress)
        pcol, _ = self._parent_view()
        out = Corpus._from_columns(b.ids.build(), b.texts.build(), b.titles.build(),
                                   parents=(pcol, np.frombuffer(src, dtype=np.int64).copy() if len(src) else
                                            np.zeros(0, dtype=np.int64)),
                                   source=self.source, locs=b.locs_array(), loc_name="from passage")
        return out

    # -- I/O --------------------------------------------------------------------------------------------
    def save_jsonl(self, path: str | os.PathLike) -> Path:
        """Write ``{id, title?, text}`` per line (plus ``parent`` for chunks), atomically (temp + rename).

        ``Corpus.load(path)`` reads it back to an equal corpus (same fingerprint).
        """
        return atomic_write_lines(path, jsonl_lines(self))

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
        p, fmt = check_corpus_path(path, fmt)
        if fmt == "hf":
            out = cls.from_hf(p, **kw)
        else:
            b, loc_name = LOADERS[fmt](p, **kw)
            out = cls._from_builder(b, str(p), loc_name)
        out.source = str(p)
        return out
