"""FAISS index files: reading and writing them, adopting an existing faiss index, and reading stored vectors
back. :class:`~jmlr.index.faiss_index.FaissIndex` takes these methods from :class:`FaissFiles`."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

INDEX_NAME = "index.faiss"
TYPES = ("flat", "ivf", "ivfpq", "hnsw", "sq8", "sq16")
_ALIASES = {"ivfflat": "ivf", "ivf-flat": "ivf", "ivf_flat": "ivf", "ivf-pq": "ivfpq", "ivf_pq": "ivfpq",
            "sqfp16": "sq16", "sq-fp16": "sq16", "fp16": "sq16", "sqint8": "sq8", "sq-int8": "sq8", "int8": "sq8"}
FACTORY = "factory"  # index_type of an index built from a faiss index_factory string
ADOPTED = "file"  # index_type of an index adopted with from_faiss (whatever the faiss object is)


def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss-cpu is a dependency
        raise ImportError("FaissIndex needs faiss: pip install faiss-cpu (or faiss-gpu-cu12)") from e
    return faiss


class FaissFiles:
    """Persistence, adoption and vector read-back of a :class:`~jmlr.index.faiss_index.FaissIndex`."""

    def vectors(self, positions):
        """Stored rows at ``positions`` (``-1`` gives zeros) as float32 ``(..., d)``; decoded (approximate) for
        quantised kinds. IVF kinds build their id -> list map on first use."""
        pos = np.asarray(positions.cpu() if hasattr(positions, "cpu") else positions, dtype=np.int64)
        flat = pos.reshape(-1)
        out = np.zeros((flat.size, self.dim), dtype=np.float32)
        ok = flat >= 0
        if ok.any():
            faiss = _faiss()
            idx = faiss.index_gpu_to_cpu(self._index) if self._on_gpu else self._index
            ivf = faiss.try_extract_index_ivf(idx) if self.index_type not in ("flat", "hnsw", "sq8", "sq16") else None
            if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
                ivf.make_direct_map()
            try:
                out[ok] = idx.reconstruct_batch(flat[ok])
            except RuntimeError as e:
                raise ValueError(f"faiss index {self.factory or self.index_type!r} cannot give back stored vectors: "
                                 f"{_faiss_error(e)}") from None
        return torch.from_numpy(out.reshape(*pos.shape, self.dim))

    def _save_payload(self, folder: Path) -> None:
        faiss = _faiss()
        idx = self._index
        if idx is None:  # a trained kind that has seen no vectors yet
            (folder / INDEX_NAME).write_bytes(b"")
            return
        if self._on_gpu:
            idx = faiss.index_gpu_to_cpu(idx)
        faiss.write_index(idx, str(folder / INDEX_NAME))

    @classmethod
    def _load_payload(cls, folder: Path, meta: dict, *, use_gpu: bool | str = "auto", mmap: bool = False,
                      **overrides) -> "FaissIndex":
        faiss = _faiss()
        params = dict(meta.get("params") or {})
        params.update(overrides)
        idx = cls(meta["dim"], params.pop("index_type"), meta.get("metric", "ip"), use_gpu=use_gpu, **params)
        path = folder / INDEX_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (incomplete index folder)")
        if path.stat().st_size:
            flags = faiss.IO_FLAG_MMAP if mmap else 0
            raw = faiss.read_index(str(path), flags)
            if raw.ntotal != meta["count"]:
                raise ValueError(f"{path}: holds {raw.ntotal} vectors, but meta.json says count={meta['count']}")
            if idx.index_type in ("ivf", "ivfpq"):
                faiss.extract_index_ivf(raw).nprobe = idx.nprobe
            if idx.index_type == "hnsw":
                raw.hnsw.efSearch = idx.ef_search
            if idx.index_type in (FACTORY, ADOPTED):
                idx._check_adoptable(raw, str(path))
            idx._apply_search_params(raw)
            idx._index = raw if idx.index_type == ADOPTED or "HNSW" in (idx.factory or "") else idx._maybe_to_gpu(raw)
        idx._restore_common(folder, meta)
        return idx

    def _check_adoptable(self, raw, where: str) -> None:
        if raw.d != self.dim:
            raise ValueError(f"{where}: the faiss index has dimension {raw.d}, but {self.dim} was expected")
        metric = _metric_name(raw, where)
        if metric != self.metric:
            raise ValueError(f"{where}: the faiss index ranks by {metric}, but metric={self.metric!r} was expected")

    @classmethod
    def from_faiss(cls, index, ids=None, *, encoder=None, metric: str | None = None,
                   use_gpu: bool | str = False, source: str | None = None) -> "FaissIndex":
        """Adopt an existing faiss index (an object, or the path of a ``faiss.write_index`` file).

        ``ids`` name its rows in insertion order (one id per vector; ints or strs). For an ``IndexIDMap`` the
        ids may be left out: its own labels are used, and the inner index is searched. With ``encoder`` (a
        DualEncoder) the index must have the encoder's dimension, and an L2 index needs an encoder that
        normalises its embeddings (then L2 and inner product rank alike); ``metric`` states the metric you
        expect. Any mismatch raises ``ValueError`` naming both sides (and ``source``, e.g. the file name).

        >>> raw = faiss.read_index("pubmed.faiss")                                   # doctest: +SKIP
        >>> index = FaissIndex.from_faiss(raw, ids=pmids, encoder=dual)               # doctest: +SKIP
        """
        faiss = _faiss()
        where = source or "the faiss index"
        if isinstance(index, (str, os.PathLike)):
            where, index = str(index), read_faiss_file(index)
        if not isinstance(index, faiss.Index):
            raise ValueError(f"expected a faiss.Index (or a path to one), got {type(index).__name__}")
        if hasattr(faiss, "GpuIndex") and isinstance(index, faiss.GpuIndex):
            index = faiss.index_gpu_to_cpu(index)
        outer = faiss.downcast_index(index)
        raw = outer
        if isinstance(outer, (faiss.IndexIDMap, faiss.IndexIDMap2)):
            labels = faiss.vector_to_array(outer.id_map).tolist()
            ids = labels if ids is None else ids
            raw = faiss.downcast_index(outer.index)
        if ids is None:
            raise ValueError(f"{where}: pass ids (one per vector, in insertion order) for a "
                             f"{type(outer).__name__}; only an IndexIDMap carries its own")
        ids = list(ids)
        if len(ids) != raw.ntotal:
            raise ValueError(f"{where}: holds {raw.ntotal} vectors but {len(ids)} ids were given; expected one id per "
                             "vector, in insertion order")
        have = _metric_name(raw, where)
        if metric is not None and metric != have:
            raise ValueError(f"{where}: the faiss index ranks by {have}, but metric={metric!r} was expected")
        if encoder is not None:
            if raw.d != encoder.dim:
                raise ValueError(f"{where}: the faiss index has dimension {raw.d}, but the encoder gives {encoder.dim}-d "
                                 "embeddings; expected the encoder the index was built with")
            if have == "l2" and not encoder.normalize:
                raise ValueError(f"{where}: the faiss index ranks by L2 distance but the encoder does not normalise its "
                                 "embeddings, so L2 and the encoder's inner-product scores rank differently; expected "
                                 "an inner-product index, or an encoder with normalize=True")
        if not raw.is_trained and raw.ntotal:
            raise ValueError(f"{where}: holds vectors but reports is_trained=False")
        out = cls(raw.d, ADOPTED, have, use_gpu=use_gpu, calibrate_blas=False)
        out._keepalive = (index, outer)  # the owning proxies: an IndexIDMap owns the inner index we search
        out._index = raw
        out._register_ids(out._check_new_ids(ids))
        out.info["adopted"] = type(raw).__name__
        return out


def read_faiss_file(path: str | os.PathLike):
    """``faiss.read_index(path)`` with errors that name the file."""
    faiss = _faiss()
    where = str(path)
    if not os.path.isfile(where):
        raise FileNotFoundError(f"{where}: no such faiss index file")
    try:
        return faiss.read_index(where)
    except RuntimeError as e:
        raise ValueError(f"{where}: not a faiss index file ({_faiss_error(e)})") from None


def idmap_labels(index) -> list[int] | None:
    """The labels of an ``IndexIDMap`` / ``IndexIDMap2`` in row order, else None."""
    faiss = _faiss()
    outer = faiss.downcast_index(index)
    if isinstance(outer, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return faiss.vector_to_array(outer.id_map).tolist()
    return None


def _metric_name(raw, where: str) -> str:
    faiss = _faiss()
    if raw.metric_type == faiss.METRIC_INNER_PRODUCT:
        return "ip"
    if raw.metric_type == faiss.METRIC_L2:
        return "l2"
    raise ValueError(f"{where}: faiss metric type {raw.metric_type} is neither inner product nor L2; "
                     "expected METRIC_INNER_PRODUCT or METRIC_L2")


def _faiss_error(e: Exception) -> str:
    """The informative part of a faiss C++ error message (the text after 'Error:')."""
    msg = str(e)
    tail = msg.split("Error: ", 1)[-1] if "Error: " in msg else msg
    return " ".join(tail.split())[:300]


def read_ids_file(path: str) -> list[str]:
    """One id per line (surrounding whitespace stripped; trailing empty lines ignored)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such ids file (expected one id per line)")
    lines = p.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    ids, seen = [], {}
    for n, line in enumerate(lines, start=1):
        pid = line.strip()
        if not pid:
            raise ValueError(f"{p} line {n}: empty id; expected one id per line")
        if pid in seen:
            raise ValueError(f"{p} line {n}: duplicate id {pid!r} (first at line {seen[pid]})")
        seen[pid] = n
        ids.append(pid)
    return ids
