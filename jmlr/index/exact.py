"""Exact inner-product index over a dense (N, d) matrix, searched with ``jmlr.kernels.topk.topk``."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .base import BaseIndex

EMB_NAME = "embeddings.npy"
SCALES_NAME = "scales.npy"
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

    >>> idx = ExactIndex(384); idx.add(ids, emb)            # doctest: +SKIP
    >>> scores, ids = idx.search(q, 10)                      # (B, 10), (B, 10)
    """

    kind = "exact"

    def __init__(self, dim: int, metric: str = "ip", *, dtype: str = "float32", device: str | None = None,
                 backend: str = "auto"):
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

    def params(self):
        return {"dtype": self.dtype, "backend": self.backend}

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
            from jmlr.kernels.topk import quantize

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
        rows = docs[pos.clamp_min(0).reshape(-1).to(docs.device)].float()  # (n, d)
        if self.scales is not None:
            rows = rows * self.scales[pos.clamp_min(0).reshape(-1).to(docs.device)].float()[:, None]
        rows[(pos.reshape(-1) < 0).to(rows.device)] = 0
        return rows.reshape(*pos.shape, self.dim).cpu()

    def search_positions(self, q, k: int):
        """``(scores (B, k) float32, positions (B, k) int64)``, best first. Tensor queries stay tensors: they go
        to the device of the stored rows for the top-k (the CUDA/Triton kernels when that is a GPU), and the
        results come back on the queries' device. Other inputs take the base path (results on the CPU)."""
        import torch

        from jmlr.kernels.topk import topk

        from .base import as_float32_tensor

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

        from jmlr.kernels.topk import topk

        docs = self.embeddings
        q = torch.from_numpy(x).to(docs.device)
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

    @classmethod
    def _load_payload(cls, folder: Path, meta: dict, *, mmap: bool = True, device: str | None = None,
                      backend: str = "auto") -> "ExactIndex":
        import torch

        params = meta.get("params") or {}
        idx = cls(meta["dim"], meta.get("metric", "ip"), dtype=params.get("dtype", "float32"), device=device,
                  backend=backend)
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
        idx._restore_common(folder, meta)
        return idx
