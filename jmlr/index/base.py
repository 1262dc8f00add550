"""The Index protocol, shared bookkeeping (ids, metadata, fingerprints) and ``load_index``.

Every index stores passage ids next to its vectors and answers ``search(q, k) -> (scores, ids)``:

* ``scores``: ``(B, k)`` float32 torch tensor, best first (inner products; squared distances, ascending,
  for ``metric="l2"``). Slots past the end of a small index hold ``-inf`` (``+inf`` for l2).
* ``ids``: ``(B, k)`` numpy array of the ids given to ``add`` (int64 when they were ints, else object
  dtype holding ``str``); empty slots hold ``-1`` / ``None``.

``save(dir)`` writes a folder atomically (a temporary folder, then one rename) with ``meta.json`` holding
kind, dim, metric, count, version, and the encoder and corpus fingerprints. ``load_index(dir, ...)``
refuses a folder whose fingerprints do not match the encoder or corpus you pass, unless ``force=True``.
"""
from __future__ import annotations

import importlib
import json
import os
import time
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from jmlr.core.fs import atomic_dir, write_error
from jmlr.data.lookup import corpus_parts, texts_fingerprint  # noqa: F401  (re-exported: the index API names them)

META_NAME = "meta.json"
IDS_NAME = "ids.json"
FORMAT_VERSION = 1

# kind -> "module:Class"; imported lazily so that loading one kind never imports the others.
_REGISTRY = {
    "exact": "jmlr.index.exact:ExactIndex",
    "faiss": "jmlr.index.faiss_index:FaissIndex",
    "sharded": "jmlr.index.sharded:ShardedIndex",
    "bm25": "jmlr.index.bm25:BM25Index",
}


class IndexMismatchError(ValueError):
    """An index folder was built with another encoder or corpus than the one given to ``load``."""


@runtime_checkable
class Index(Protocol):
    """What the trainer, the refresher and the CLI rely on."""

    dim: int
    metric: str
    version: int

    def add(self, ids: Sequence, emb) -> None: ...

    def search(self, q, k: int): ...

    def save(self, directory: str | os.PathLike) -> Path: ...

    def __len__(self) -> int: ...


def _as_2d(x, dim: int | None, what: str):
    """``x`` (a numpy array or a tensor) as ``(n, d)``: one row promoted, other ranks and a wrong ``d`` refused."""
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (n, d) array, got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{what} have dimension {x.shape[1]}, expected {dim}")
    return x


def as_float32_matrix(x, dim: int | None = None, what: str = "embeddings") -> np.ndarray:
    """A C-contiguous ``(n, d)`` float32 numpy array from a torch tensor, numpy array or nested list."""
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().to("cpu", torch.float32).numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    x = _as_2d(np.asarray(x, dtype=np.float32), dim, what)
    if not np.isfinite(x).all():
        bad = int(np.argwhere(~np.isfinite(x))[0][0])
        raise ValueError(f"{what} row {bad} holds NaN or inf")
    return np.ascontiguousarray(x)


def as_float32_tensor(x, dim: int | None = None, what: str = "queries"):
    """A contiguous ``(n, d)`` float32 torch tensor from a tensor (kept on its device) or any array-like (CPU).

    The device-preserving twin of :func:`as_float32_matrix`: same shape, dimension and finiteness checks.
    """
    import torch

    if not isinstance(x, torch.Tensor):
        return torch.from_numpy(as_float32_matrix(x, dim, what))
    x = _as_2d(x.detach().to(torch.float32), dim, what)
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise ValueError(f"{what} row {int(bad.nonzero()[0, 0])} holds NaN or inf")
    return x.contiguous()


class BaseIndex:
    """Ids, version, fingerprints and the save/load skeleton shared by every index kind.

    Subclasses implement ``_add_vectors(x)``, ``_search(q, k) -> (scores, positions)`` over row positions,
    ``_save_payload(folder)`` and ``_load_payload(folder, meta)`` (a classmethod), and ``params()``.
    """

    kind = "base"

    def __init__(self, dim: int, metric: str = "ip"):
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if metric not in ("ip", "l2"):
            raise ValueError(f"unknown metric {metric!r}: expected 'ip' or 'l2'")
        self.dim = int(dim)
        self.metric = metric
        self.version = 0
        self.encoder_fingerprint: str | None = None
        self.corpus_fingerprint: str | None = None
        self.info: dict[str, Any] = {}
        self._ids: list = []
        self._id_set: set = set()
        self._ids_array: np.ndarray | None = None
        self._ids_tensor = None  # int ids as a torch tensor on the device of the last lookup_tensor

    # ------------------------------------------------------------------ ids
    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list:
        """The ids in row order."""
        return self._ids

    @property
    def int_ids(self) -> bool:
        return bool(self._ids) and isinstance(self._ids[0], (int, np.integer))

    def _check_new_ids(self, ids: Sequence) -> list:
        ids = list(ids)
        if not ids:
            return ids
        want_int = self.int_ids if self._ids else isinstance(ids[0], (int, np.integer))
        seen = set()
        for j, i in enumerate(ids):
            ok = isinstance(i, (int, np.integer)) and not isinstance(i, bool) if want_int else isinstance(i, str)
            if not ok:
                raise ValueError(f"id {j} ({i!r}) is {type(i).__name__}; expected all ids to be "
                                 f"{'int' if want_int else 'str'} like the first one")
            if i in self._id_set or i in seen:
                raise ValueError(f"duplicate id {i!r} (position {j} of this add)")
            seen.add(i)
        return [int(i) for i in ids] if want_int else ids

    def _register_ids(self, ids: list) -> None:
        self._ids.extend(ids)
        self._id_set.update(ids)
        self._ids_array = None
        self._ids_tensor = None

    def lookup(self, positions) -> np.ndarray:
        """Map row positions ``(B, k)`` (``-1`` for empty) to ids (see the module doc for dtypes)."""
        pos = np.asarray(positions.cpu() if hasattr(positions, "cpu") else positions, dtype=np.int64)
        if self._ids_array is None:
            self._ids_array = np.asarray(self._ids, dtype=np.int64 if self.int_ids else object)
        if not len(self._ids):
            return np.full(pos.shape, -1, dtype=np.int64)
        out = self._ids_array[np.clip(pos, 0, None)]
        out[pos < 0] = -1 if self.int_ids else None
        return out

    def lookup_tensor(self, positions):
        """:meth:`lookup` for int ids, as an int64 tensor on ``positions``' device (no host round trip)."""
        import torch

        pos = torch.as_tensor(positions, dtype=torch.int64)
        if not self._ids:
            return torch.full_like(pos, -1)
        if not self.int_ids:
            raise ValueError("lookup_tensor needs int ids; this index holds str ids (use lookup)")
        t = self._ids_tensor
        if t is None or t.device != pos.device:
            t = self._ids_tensor = torch.as_tensor(self._ids, dtype=torch.int64, device=pos.device)
        return t[pos.clamp_min(0)].masked_fill(pos < 0, -1)

    # ------------------------------------------------------------------ add / search
    def add(self, ids: Sequence, emb) -> None:
        """Append vectors ``emb (n, d)`` under ``ids`` (all str or all int, unique)."""
        x = as_float32_matrix(emb, self.dim)
        ids = self._check_new_ids(ids)
        if len(ids) != x.shape[0]:
            raise ValueError(f"add: {len(ids)} ids but {x.shape[0]} embedding rows")
        if not ids:
            return
        self._add_vectors(x)
        self._register_ids(ids)

    def search_positions(self, q, k: int):
        """``(scores (B, k) float32, positions (B, k) int64)`` as torch tensors, best first, on the device of
        ``q`` when it is a tensor (else on the CPU)."""
        import torch

        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        x = as_float32_matrix(q, self.dim, what="queries")
        B, n = x.shape[0], len(self)
        kk = min(int(k), n)
        fill = float("-inf") if self.metric == "ip" else float("inf")
        scores = torch.full((B, k), fill, dtype=torch.float32)
        pos = torch.full((B, k), -1, dtype=torch.int64)
        if kk and B:
            s, p = self._search(x, kk)  # (B, kk)
            scores[:, :kk] = torch.as_tensor(s, dtype=torch.float32)
            pos[:, :kk] = torch.as_tensor(p, dtype=torch.int64)
            pos[pos >= n] = -1
        dev = q.device if isinstance(q, torch.Tensor) else None
        if dev is not None and dev.type != "cpu":  # results go back where the queries are
            scores, pos = scores.to(dev), pos.to(dev)
        return scores, pos

    def search(self, q, k: int):
        """``(scores (B, k) float32 tensor, ids (B, k) ndarray)`` of the ``k`` best rows per query."""
        scores, pos = self.search_positions(q, k)
        return scores, self.lookup(pos)

    # ------------------------------------------------------------------ persistence
    def params(self) -> dict[str, Any]:
        """Kind-specific construction parameters saved in the metadata."""
        return {}

    def meta(self) -> dict[str, Any]:
        """The metadata written to ``meta.json``."""
        return {"kind": self.kind, "format_version": FORMAT_VERSION, "dim": self.dim, "metric": self.metric,
                "count": len(self), "version": self.version, "encoder_fingerprint": self.encoder_fingerprint,
                "corpus_fingerprint": self.corpus_fingerprint, "ids_type": "int" if self.int_ids else "str",
                "params": self.params(), "info": self.info, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the index to ``directory`` atomically (temporary folder, then one rename)."""
        try:
            with atomic_dir(directory) as tmp:
                self._save_payload(tmp)
                (tmp / IDS_NAME).write_text(json.dumps(self._ids))
                (tmp / META_NAME).write_text(json.dumps(self.meta(), indent=2))
        except OSError as e:  # ENOSPC and friends: name the index folder when the OS did not name a file
            raise write_error(e, directory) from e
        return Path(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike, **kw):
        """Load a saved index (see :func:`load_index` for fingerprint checks)."""
        return load_index(directory, **kw)

    def _restore_common(self, folder: Path, meta: dict) -> None:
        ids = json.loads((folder / IDS_NAME).read_text())
        if len(ids) != meta["count"]:
            raise ValueError(f"{folder / IDS_NAME}: {len(ids)} ids but meta.json says count={meta['count']}")
        self._register_ids(ids)
        self.version = int(meta.get("version", 0))
        self.encoder_fingerprint = meta.get("encoder_fingerprint")
        self.corpus_fingerprint = meta.get("corpus_fingerprint")
        self.info = dict(meta.get("info") or {})

    # subclass hooks
    def _add_vectors(self, x: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _search(self, x: np.ndarray, k: int):  # pragma: no cover - abstract
        raise NotImplementedError

    def _save_payload(self, folder: Path) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        p = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return (f"{type(self).__name__}(n={len(self)}, dim={self.dim}, metric={self.metric!r}, "
                f"version={self.version}{', ' + p if p else ''})")


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``DIR/meta.json``."""
    folder = Path(directory)
    path = folder / META_NAME
    if not path.is_file():
        hint = ""
        if folder.parent.is_dir() and any(folder.parent.glob(f".{folder.name}.old-*")):
            hint = " (an interrupted save left a .old-* folder next to it)"
        raise FileNotFoundError(f"{path} not found: {folder} is not a saved jmlr index{hint}")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e
    for key in ("kind", "dim", "count"):
        if key not in meta:
            raise ValueError(f"{path}: missing key {key!r}")
    if meta["kind"] not in _REGISTRY:
        raise ValueError(f"{path}: unknown index kind {meta['kind']!r}; expected one of {sorted(_REGISTRY)}")
    if int(meta.get("format_version", 1)) > FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {meta['format_version']} is newer than this jmlr "
                         f"understands ({FORMAT_VERSION}); upgrade jmlr")
    return meta


def check_fingerprints(meta: dict, where, encoder_fingerprint: str | None, corpus_fingerprint: str | None,
                       force: bool) -> None:
    """Raise :class:`IndexMismatchError` when a given fingerprint differs from the saved one."""
    for what, want in (("encoder", encoder_fingerprint), ("corpus", corpus_fingerprint)):
        have = meta.get(f"{what}_fingerprint")
        if want is None or have is None or want == have:
            continue
        if force:
            import logging

            logging.getLogger(__name__).warning("%s: %s fingerprint %s differs from %s; loading anyway (force)",
                                                where, what, have, want)
            continue
        raise IndexMismatchError(f"{where}: the index was built with {what} fingerprint {have}, but the {what} "
                                 f"given has {want}; rebuild the index, or pass force=True (--force) to use it "
                                 "anyway")


def load_index(directory: str | os.PathLike, *, encoder=None, corpus=None, encoder_fingerprint: str | None = None,
               corpus_fingerprint: str | None = None, force: bool = False, **kwargs):
    """Load any saved index kind from ``directory``.

    ``encoder`` (a DualEncoder) and ``corpus`` (a Corpus or ``(ids, texts)``) are fingerprinted and compared
    with the saved fingerprints; so are explicit ``*_fingerprint`` strings. A mismatch raises
    :class:`IndexMismatchError` unless ``force=True``. Extra ``kwargs`` go to the kind's loader (e.g.
    ``mmap=True`` for exact, ``use_gpu`` for faiss).
    """
    folder = Path(directory)
    meta = read_meta(folder)
    if encoder is not None and encoder_fingerprint is None:
        encoder_fingerprint = encoder.fingerprint("doc")
    n_given = None
    if corpus is not None and corpus_fingerprint is None:
        given_ids, _, corpus_fingerprint = corpus_parts(corpus)
        n_given = len(given_ids)
    try:
        check_fingerprints(meta, folder, encoder_fingerprint, corpus_fingerprint, force)
    except IndexMismatchError as e:
        if n_given is not None and n_given != int(meta["count"]) and meta.get("corpus_fingerprint") != \
                corpus_fingerprint:  # say what differs
            raise IndexMismatchError(f"{e} (the index holds {meta['count']} passages, the corpus given "
                                     f"{n_given})") from None
        raise
    module, name = _REGISTRY[meta["kind"]].split(":")
    cls = getattr(importlib.import_module(module), name)
    return cls._load_payload(folder, meta, **kwargs)
