"""Exact inner-product index over a dense (N, d) matrix, searched with ``jmlr.kernels.topk.topk``."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from jmlr.core.fs import atomic_dir, release_pages
from jmlr.kernels.topk import QuantizedDocs, quantize, topk

from .base import IDS_NAME, META_NAME, BaseIndex, as_float32_tensor

EMB_NAME = "embeddings.npy"
SCALES_NAME = "scales.npy"
RERANK_NAME = "rerank_fp32.npy"  # optional: float32 rows for the exact rerank of reduced-precision storage
_KERNEL_NAMES = {"float16": "fp16", "bfloat16": "bf16", "int8": "int8"}
_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
DTYPES = ("float32", "float16", "bfloat16", "int8")


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.int8}[name]


def _from_numpy(arr):
    import torch

    with warnings.catch_warnings():  # read-only memmaps: the index never writes to them
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.ascontiguousarray(arr))


class ExactIndex(BaseIndex):
    """Brute-force top-k through the kernel dispatch (CPU or GPU).

    Storage ``dtype``: ``float32`` (default), ``float16``, ``bfloat16`` or ``int8`` (per-row scales); scores are
    exact with respect to the stored values. Vectors may live in a memory-mapped ``.npy`` (see
    :meth:`from_array` and :class:`jmlr.index.store.EmbeddingStore`); a saved index loads memory-mapped, so
    opening it is instant and pages are read on first search. Only ``metric="ip"`` (normalise for cosine).

    ``rerank=True`` (reduced storage only) also keeps the float32 rows: the kernels pick ``rerank_k`` candidates
    from the small copy and rescore them exactly in fp32, so scores are exact against the original vectors.
    :meth:`write_quantized` builds such an index folder from an ``(N, d)`` float32 memmap chunk by chunk (10M x
    384 without holding it in RAM); :func:`~jmlr.index.load_index` maps it back without copying.

    >>> idx = ExactIndex(384); idx.add(ids, emb)            # doctest: +SKIP
    >>> scores, ids = idx.search(q, 10)                      # (B, 10), (B, 10)
    """

    kind = "exact"

    def __init__(self, dim: int, metric: str = "ip", *, dtype: str = "float32", device: str | None = None,
                 backend: str = "auto", rerank: bool = False, rerank_k: int | None = None):
        if metric != "ip":
            raise ValueError(f"ExactIndex supports metric='ip' only, got {metric!r}; normalise the vectors "
                             "for cosine, or use FaissIndex for l2")
        dtype = _ALIASES.get(dtype, dtype)
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        super().__init__(dim, metric)
        self.dtype = dtype
        self.device = device
        self.backend = backend
        self._pending: list[np.ndarray] = []  # float32 rows not yet converted to storage
        self._store = None  # torch (N, d) in the storage dtype
        self._scales = None  # torch (N,) float32 for int8
        self.rerank = bool(rerank) and dtype != "float32"
        self.rerank_k = None if rerank_k is None else int(rerank_k)
        self._rerank = None  # torch (N, d) float32 rows for the exact rerank (reduced storage with rerank=True)

    def params(self):
        p = {"dtype": self.dtype, "backend": self.backend}
        if self.rerank:
            p.update(rerank=True, rerank_k=self.rerank_k)
        return p

    @classmethod
    def from_array(cls, ids, emb: np.ndarray, **kw) -> "ExactIndex":
        """Wrap an existing float32/float16 ``(N, d)`` array (e.g. a read-only memmap) without copying it."""
        if emb.dtype not in (np.float16, np.float32) or emb.ndim != 2:
            raise ValueError(f"expected a 2-D float32 or float16 array, got {emb.dtype} {emb.shape}")
        kw.setdefault("dtype", "float16" if emb.dtype == np.float16 else "float32")
        idx = cls(emb.shape[1], **kw)
        if np.dtype(idx.dtype) != emb.dtype:
            raise ValueError(f"from_array keeps the array as is: dtype={idx.dtype!r} but the array is {emb.dtype}")
        ids = idx._check_new_ids(ids)
        if len(ids) != emb.shape[0]:
            raise ValueError(f"{len(ids)} ids but {emb.shape[0]} embedding rows")
        idx._store = _from_numpy(emb)
        idx._register_ids(ids)
        return idx

    def _add_vectors(self, x: np.ndarray) -> None:
        self._pending.append(x.copy())  # the caller's array or tensor may change after add()

    def _convert(self, x):
        """float32 torch rows -> (storage rows, scales or None)."""
        if self.dtype == "int8":
            qd = quantize(x, "int8", keep_fp32=False)
            return qd.data, qd.scales
        return x.to(_torch_dtype(self.dtype)), None

    def _materialize(self) -> None:
        import torch

        if not self._pending:
            return
        new = torch.from_numpy(np.concatenate(self._pending, 0) if len(self._pending) > 1 else self._pending[0])
        self._pending = []
        rows, scales = self._convert(new)
        if self.rerank:
            fp32 = new if self._rerank is None else torch.cat([self._rerank, new], 0)
            self._rerank = fp32.to(self.device) if self.device else fp32
        if self.device:
            rows = rows.to(self.device)
            scales = None if scales is None else scales.to(self.device)
        if self._store is None or self._store.shape[0] == 0:
            self._store, self._scales = rows, scales
        else:
            self._store = torch.cat([self._store.to(rows.device), rows], 0)
            if scales is not None:
                self._scales = torch.cat([self._scales.to(scales.device), scales], 0)

    @property
    def embeddings(self):
        """The stored rows as one ``(N, d)`` torch tensor in the storage dtype (int8: see :attr:`scales`)."""
        import torch

        self._materialize()
        if self._store is None:
            return torch.zeros((0, self.dim), dtype=_torch_dtype(self.dtype))
        if self.device and self._store.device != torch.device(self.device):
            self._store = self._store.to(self.device)
            self._scales = None if self._scales is None else self._scales.to(self.device)
        return self._store

    @property
    def scales(self):
        """Per-row scales ``(N,)`` of int8 storage, else None."""
        self._materialize()
        return self._scales

    def vectors(self, positions):
        """Stored rows at ``positions`` (any shape of row numbers, ``-1`` gives zeros) as float32 ``(..., d)``."""
        import torch

        pos = torch.as_tensor(np.asarray(positions.cpu() if hasattr(positions, "cpu") else positions), dtype=torch.long)
        docs = self.embeddings
        if self._rerank is not None:
            docs = self._rerank
        rows = docs[pos.clamp_min(0).reshape(-1).to(docs.device)].float()  # (n, d)
        if self._rerank is None and self.scales is not None:
            rows = rows * self.scales[pos.clamp_min(0).reshape(-1).to(docs.device)].float()[:, None]
        rows[(pos.reshape(-1) < 0).to(rows.device)] = 0
        return rows.reshape(*pos.shape, self.dim).cpu()

    def search_positions(self, q, k: int):
        """``(scores (B, k) float32, positions (B, k) int64)``, best first. Tensor queries stay tensors: they go
        to the device of the stored rows for the top-k (the CUDA/Triton kernels when that is a GPU), and the
        results come back on the queries' device. Other inputs take the base path (results on the CPU)."""
        import torch

        if not isinstance(q, torch.Tensor):
            return super().search_positions(q, k)
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        x = as_float32_tensor(q, self.dim, what="queries")  # (B, d), on the queries' device
        B, n, k = x.shape[0], len(self), int(k)
        kk = min(k, n)
        scores = torch.full((B, k), float("-inf"), dtype=torch.float32, device=x.device)
        pos = torch.full((B, k), -1, dtype=torch.int64, device=x.device)
        if kk and B:
            docs = self.embeddings
            s, p = topk(x.to(docs.device), docs, kk, backend=self.backend, scales=self.scales)  # (B, kk)
            scores[:, :kk] = s.float().to(x.device)
            pos[:, :kk] = p.to(device=x.device, dtype=torch.int64)
            pos[pos >= n] = -1
        return scores, pos

    def _search(self, x: np.ndarray, k: int):
        import torch

        docs = self.embeddings
        q = torch.from_numpy(x).to(docs.device)
        if self._rerank is not None:  # reduced-precision candidates, then exact fp32 rescoring
            qd = QuantizedDocs(docs, self.scales, _KERNEL_NAMES[self.dtype], self._rerank.to(docs.device))
            scores, idx = topk(q, qd, k, backend=self.backend, rerank_k=self.rerank_k)  # (B, k), (B, k)
        else:
            scores, idx = topk(q, docs, k, backend=self.backend, scales=self.scales)  # (B, k), (B, k)
        return scores.float().cpu(), idx.cpu()

    def _save_payload(self, folder: Path) -> None:
        import torch

        emb = self.embeddings.cpu()
        if emb.dtype == torch.bfloat16:
            emb = emb.view(torch.int16)  # numpy has no bfloat16: saved as its bit pattern
        np.save(folder / EMB_NAME, emb.numpy())
        if self.scales is not None:
            np.save(folder / SCALES_NAME, self.scales.cpu().numpy())
        if self._rerank is not None:
            np.save(folder / RERANK_NAME, self._rerank.cpu().numpy())

    @classmethod
    def _load_payload(cls, folder: Path, meta: dict, *, mmap: bool = True, device: str | None = None,
                      backend: str = "auto") -> "ExactIndex":
        import torch

        params = meta.get("params") or {}
        idx = cls(meta["dim"], meta.get("metric", "ip"), dtype=params.get("dtype", "float32"), device=device,
                  backend=backend, rerank=bool(params.get("rerank")), rerank_k=params.get("rerank_k"))
        path = folder / EMB_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (incomplete index folder)")
        emb = np.load(path, mmap_mode="r" if mmap else None)
        if emb.shape != (meta["count"], meta["dim"]):
            raise ValueError(f"{path}: shape {emb.shape}, but meta.json says ({meta['count']}, {meta['dim']})")
        store = _from_numpy(emb)
        if idx.dtype == "bfloat16":
            store = store.view(torch.bfloat16)
        idx._store = store
        if idx.dtype == "int8":
            idx._scales = _from_numpy(np.load(folder / SCALES_NAME, mmap_mode="r" if mmap else None))
        if idx.rerank:
            rpath = folder / RERANK_NAME
            if not rpath.is_file():
                raise FileNotFoundError(f"{rpath} not found: meta.json says the index reranks in fp32")
            rer = np.load(rpath, mmap_mode="r" if mmap else None)
            if rer.shape != emb.shape or rer.dtype != np.float32:
                raise ValueError(f"{rpath}: {rer.dtype} {rer.shape}, expected float32 {emb.shape}")
            idx._rerank = _from_numpy(rer)
        idx._restore_common(folder, meta)
        return idx

    @classmethod
    def write_quantized(cls, directory, ids, source: np.ndarray, *, dtype: str = "int8", rerank: str = "none",
                        rerank_k: int | None = None, chunk_rows: int = 262_144, version: int = 0,
                        encoder_fingerprint: str | None = None, corpus_fingerprint: str | None = None,
                        info: dict | None = None) -> Path:
        """Write an index folder from a float32 ``(N, d)`` array (typically a read-only memmap) chunk by chunk.

        ``dtype``: ``int8`` (per-row scales), ``bfloat16`` or ``float16`` storage. ``rerank``: ``"none"``,
        ``"copy"`` (the float32 rows are copied next to the storage, for the exact rerank) or ``"link"``
        (a hard link to ``source``'s ``.npy`` file when on the same filesystem, else a copy). Peak memory is
        one chunk plus the ids: the pages the pass touches in ``source`` and in the written files are released
        from the process's RSS after each chunk (:func:`jmlr.core.fs.release_pages`). The folder is written
        atomically; open it with ``load_index(directory)``.
        """
        import os

        import torch

        dtype = _ALIASES.get(dtype, dtype)
        if dtype not in _KERNEL_NAMES:
            raise ValueError(f"write_quantized: dtype must be int8, bfloat16 or float16, got {dtype!r}")
        if rerank not in ("none", "copy", "link"):
            raise ValueError(f"rerank must be 'none', 'copy' or 'link', got {rerank!r}")
        if source.ndim != 2 or source.dtype != np.float32:
            raise ValueError(f"expected a 2-D float32 array, got {source.dtype} {source.shape}")
        N, d = source.shape
        idx = cls(d, dtype=dtype, rerank=rerank != "none", rerank_k=rerank_k)
        ids = idx._check_new_ids(ids)
        if len(ids) != N:
            raise ValueError(f"{len(ids)} ids but {N} embedding rows")
        idx._register_ids(ids)
        idx.version = int(version)
        idx.encoder_fingerprint, idx.corpus_fingerprint = encoder_fingerprint, corpus_fingerprint
        idx.info = dict(info or {})
        src_file = getattr(source, "filename", None)
        with atomic_dir(directory) as tmp:
            store = np.lib.format.open_memmap(tmp / EMB_NAME, mode="w+", shape=(N, d),
                                              dtype=np.int16 if dtype == "bfloat16" else np.dtype(dtype))
            scales = (np.lib.format.open_memmap(tmp / SCALES_NAME, mode="w+", shape=(N,), dtype=np.float32)
                      if dtype == "int8" else None)
            linked = False
            if rerank == "link" and src_file is not None and getattr(source, "offset", None) is not None:
                try:
                    os.link(src_file, tmp / RERANK_NAME)
                    linked = np.load(tmp / RERANK_NAME, mmap_mode="r").shape == (N, d)
                except OSError:
                    linked = False
            rer = (np.lib.format.open_memmap(tmp / RERANK_NAME, mode="w+", shape=(N, d), dtype=np.float32)
                   if rerank != "none" and not linked else None)
            for s in range(0, N, chunk_rows):
                release_pages(source, store, scales, rer)  # the previous chunk's pages leave the RSS
                blk = np.array(source[s:s + chunk_rows], dtype=np.float32)  # (n, d): one chunk in RAM (a copy)
                qd = quantize(torch.from_numpy(blk), _KERNEL_NAMES[dtype], keep_fp32=False)
                data = qd.data.view(torch.int16) if dtype == "bfloat16" else qd.data
                store[s:s + len(blk)] = data.numpy()
                if scales is not None:
                    scales[s:s + len(blk)] = qd.scales.numpy()
                if rer is not None:
                    rer[s:s + len(blk)] = blk
            release_pages(source, store, scales, rer)  # flushes the written maps, then drops their pages
            del store, scales, rer
            (tmp / IDS_NAME).write_text(json.dumps(ids))
            meta = idx.meta()
            (tmp / META_NAME).write_text(json.dumps(meta, indent=2))
        return Path(directory)
