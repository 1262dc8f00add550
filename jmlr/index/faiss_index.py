"""FAISS indexes: Flat IP/L2, IVF-Flat, IVF-PQ, HNSW, scalar-quantised (int8, fp16), any ``index_factory``
string, and adopted existing indexes (:meth:`FaissIndex.from_faiss`); GPU when available.

The exhaustive parts of flat and IVF searches (the scan of all vectors, or of the IVF centroids) switch
between a per-query SIMD loop and BLAS at ``faiss.cvar.distance_compute_blas_threshold`` (compared with
``n_queries * d``). faiss's default (128000) sends batches of up to 333 queries of 384-d to the slow loop.
Here the first search of each (index kind, size, batch shape) times both paths on the real query batch and
caches the faster choice; the threshold is then set just above or below ``B * d`` for that batch, so
larger operations running in other threads (k-means training) keep BLAS. Files, adoption of an existing faiss
index and vector read-back are in :mod:`.faiss_files`.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import Any

import numpy as np

from .base import BaseIndex, as_float32_matrix
from .faiss_files import (ADOPTED, FACTORY, INDEX_NAME, TYPES, _ALIASES, FaissFiles, _faiss,  # noqa: F401
                          _faiss_error, idmap_labels, read_faiss_file)

logger = logging.getLogger(__name__)

_FAISS_NAMES = {"efSearch": "ef_search", "efConstruction": "ef_construction"}  # faiss spelling -> ours
_BLAS_TYPES = ("flat", "ivf", "ivfpq")  # searches that go through the exhaustive knn routines
_GPU_TYPES = ("flat", "ivf", "ivfpq", "sq8", "sq16")

_BLAS_LOCK = threading.Lock()
_BLAS_CHOICE: dict[tuple, bool] = {}  # (type, d, log2 ntotal, B, k) -> use BLAS?


def num_gpus() -> int:
    """GPUs faiss can use (0 with faiss-cpu)."""
    faiss = _faiss()
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


_GPU_RESOURCES: dict[int, Any] = {}  # one faiss.StandardGpuResources per GPU, shared by this process's indexes


def rank_gpu(n_gpus: int | None = None) -> int:
    """The GPU this process's faiss index goes on: torch's current CUDA device once set (accelerate and
    ``torch.cuda.set_device`` set it per rank), else ``LOCAL_RANK`` (torchrun), else 0; modulo the GPU count."""
    n = num_gpus() if n_gpus is None else int(n_gpus)
    gpu = None
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            gpu = torch.cuda.current_device()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    if gpu is None:
        gpu = int(os.environ.get("LOCAL_RANK", 0) or 0)
    return gpu % n if n > 0 else gpu


def _gpu_resources(gpu: int):
    res = _GPU_RESOURCES.get(gpu)
    if res is None:
        res = _GPU_RESOURCES[gpu] = _faiss().StandardGpuResources()
    return res


def blas_calibration_cache() -> dict[tuple, bool]:
    """The measured choices so far: ``(type, d, log2 ntotal, B, k) -> True`` when BLAS was faster."""
    return dict(_BLAS_CHOICE)


def _set_blas(use_blas: bool, B: int, d: int) -> None:
    # nx * d < threshold -> SIMD loop; otherwise BLAS
    _faiss().cvar.distance_compute_blas_threshold = int(B * d) if use_blas else int(B * d) + 1


def default_nlist(n: int) -> int:
    """IVF list count: about 4 * sqrt(n), with at least 39 training points per list."""
    return int(max(1, min(round(4 * math.sqrt(max(n, 1))), n // 39)))


def default_pq_m(d: int) -> int:
    """PQ sub-quantisers: the divisor of ``d`` closest to ``d / 8`` (8 dims per 1-byte code)."""
    divisors = [m for m in range(1, d + 1) if d % m == 0]
    return min(divisors, key=lambda m: (abs(m - d / 8), -m))


class FaissIndex(FaissFiles, BaseIndex):
    """A faiss index behind the jmlr Index protocol.

    ``index_type``: ``flat`` (exact), ``ivf`` (IVF-Flat), ``ivfpq``, ``hnsw`` (HNSW-Flat), ``sq8`` (int8
    scalar quantiser), ``sq16`` (fp16). Trained kinds (ivf, ivfpq, sq8) train on the vectors of the first
    ``add`` (or call :meth:`train`). Defaults reach recall@10 >= 0.95 against exact on clustered data:
    IVF ``nlist = 4 sqrt(n)`` (at least 39 points per list), ``nprobe = 32``; HNSW ``M = 32``,
    ``efConstruction = 80``, ``efSearch = 128``; IVF-PQ ``m`` close to ``d / 8`` with 8-bit codes.

    Any other ``index_type`` is a faiss ``index_factory`` string (case-sensitive), e.g. ``"IVF4096,PQ64x4fs"``
    or ``"HNSW32,Flat"``; it trains on the first ``add`` when faiss says it needs training. ``search_params``
    (``{"nprobe": 64}``, ``{"efSearch": 256}``, any name faiss's ``ParameterSpace`` knows) are applied after
    construction, training and loading. :meth:`from_faiss` adopts an index built elsewhere.

    ``use_gpu="auto"`` moves flat / IVF / SQ indexes onto this rank's own GPU when faiss sees some (HNSW stays
    on CPU): ``gpu`` (default :func:`rank_gpu`: the current CUDA device, else ``LOCAL_RANK``), so the shards of
    a multi-GPU job sit one per GPU instead of each being copied onto every GPU of the node.
    """

    kind = "faiss"

    def __init__(self, dim: int, index_type: str = "flat", metric: str = "ip", *, nlist: int | None = None,
                 nprobe: int = 32, pq_m: int | None = None, pq_bits: int = 8, hnsw_m: int = 32,
                 ef_construction: int = 80, ef_search: int = 128, use_gpu: bool | str = "auto",
                 calibrate_blas: bool = True, search_params: dict[str, Any] | None = None, gpu: int | None = None):
        super().__init__(dim, metric)
        t = str(index_type).lower()
        t = _ALIASES.get(t, t)
        self.factory: str | None = None
        self.search_params = dict(search_params or {})
        if t not in TYPES and t != ADOPTED:
            self.factory, t = str(index_type), FACTORY
        self.index_type = t
        self.nlist = nlist
        self.nprobe = int(nprobe)
        self.pq_m = pq_m if pq_m is not None else default_pq_m(self.dim)
        if self.dim % self.pq_m:
            raise ValueError(f"pq_m={self.pq_m} must divide dim={self.dim}")
        self.pq_bits = int(pq_bits)
        self.hnsw_m = int(hnsw_m)
        self.ef_construction = int(ef_construction)
        self.ef_search = int(ef_search)
        self.use_gpu = use_gpu
        self.gpu = gpu
        self.calibrate_blas = calibrate_blas
        self._index = None
        self._on_gpu = False
        if t in ("flat", "hnsw", "sq16", FACTORY):  # untrained kinds (and factory strings, to check them) now
            self._index = self._make(0)
            self._apply_search_params(self._index)

    # ------------------------------------------------------------------ construction
    @property
    def device(self) -> str:
        """Where the faiss index lives: ``cuda:N`` (faiss-gpu, this rank's GPU) or ``cpu``."""
        return f"cuda:{self.gpu}" if self._on_gpu else "cpu"

    @property
    def faiss_metric(self):
        faiss = _faiss()
        return faiss.METRIC_INNER_PRODUCT if self.metric == "ip" else faiss.METRIC_L2

    def params(self) -> dict[str, Any]:
        if self.index_type in (FACTORY, ADOPTED):
            return {"index_type": self.factory or ADOPTED, "search_params": dict(self.search_params)}
        p: dict[str, Any] = {"index_type": self.index_type}
        if self.search_params:
            p["search_params"] = dict(self.search_params)
        if self.index_type in ("ivf", "ivfpq"):
            p.update(nlist=self.nlist, nprobe=self.nprobe)
        if self.index_type == "ivfpq":
            p.update(pq_m=self.pq_m, pq_bits=self.pq_bits)
        if self.index_type == "hnsw":
            p.update(hnsw_m=self.hnsw_m, ef_construction=self.ef_construction, ef_search=self.ef_search)
        return p

    def _make(self, n_train: int):
        faiss = _faiss()
        d, m, t = self.dim, self.faiss_metric, self.index_type
        if t == FACTORY:
            try:
                idx = faiss.index_factory(d, self.factory, m)
            except RuntimeError as e:
                raise ValueError(f"unknown faiss index type {self.factory!r}: neither one of {TYPES} nor an "
                                 f"index_factory string faiss accepts for dim={d} ({_faiss_error(e)})") from None
            return self._maybe_to_gpu(idx) if "HNSW" not in self.factory else idx
        if t == ADOPTED:
            raise ValueError("an adopted faiss index (index_type='file') is made by FaissIndex.from_faiss or loaded "
                             "from a saved folder, not built")
        if t == "flat":
            idx = faiss.IndexFlatIP(d) if self.metric == "ip" else faiss.IndexFlatL2(d)
        elif t == "hnsw":
            idx = faiss.IndexHNSWFlat(d, self.hnsw_m, m)
            idx.hnsw.efConstruction = self.ef_construction
            idx.hnsw.efSearch = self.ef_search
        elif t in ("sq8", "sq16"):
            qt = faiss.ScalarQuantizer.QT_8bit if t == "sq8" else faiss.ScalarQuantizer.QT_fp16
            idx = faiss.IndexScalarQuantizer(d, qt, m)
        else:
            if self.nlist is None:
                self.nlist = default_nlist(n_train)
            elif self.nlist > n_train:
                raise ValueError(f"nlist={self.nlist} needs at least {self.nlist} training vectors "
                                 f"(39x that is advised), got {n_train}")
            quantizer = faiss.IndexFlatIP(d) if self.metric == "ip" else faiss.IndexFlatL2(d)
            if t == "ivf":
                idx = faiss.IndexIVFFlat(quantizer, d, self.nlist, m)
            else:
                bits = min(self.pq_bits, max(1, int(math.log2(max(n_train, 2)))))
                if bits != self.pq_bits:
                    logger.warning("IVF-PQ: %d training vectors are too few for %d-bit codes; using %d bits",
                                   n_train, self.pq_bits, bits)
                    self.pq_bits = bits
                idx = faiss.IndexIVFPQ(quantizer, d, self.nlist, self.pq_m, self.pq_bits, m)
            idx.own_fields = True
            quantizer.this.disown()  # the IVF index owns its quantizer now
            idx.nprobe = self.nprobe
        return self._maybe_to_gpu(idx)

    def _maybe_to_gpu(self, idx):
        want = self.use_gpu
        if want is False or self.index_type not in _GPU_TYPES + (FACTORY,):
            return idx
        n = num_gpus()
        if n == 0:
            if want is True:
                raise RuntimeError("use_gpu=True but faiss sees no GPU (faiss-cpu installed?)")
            return idx
        faiss = _faiss()
        gpu = rank_gpu(n) if self.gpu is None else int(self.gpu)
        try:
            gidx = faiss.index_cpu_to_gpu(_gpu_resources(gpu), gpu, idx)  # this rank's own GPU only
        except RuntimeError as e:  # e.g. an IVF-PQ code size the GPU kernels do not support
            if want is True:
                raise
            logger.warning("faiss GPU copy failed (%s); staying on CPU", e)
            return idx
        self._on_gpu = True
        self.gpu = gpu
        return gidx

    def train(self, x) -> None:
        """Train the quantiser (IVF centroids, PQ / SQ codebooks) on ``x (n, d)``; no-op for untrained kinds."""
        x = as_float32_matrix(x, self.dim)
        if self._index is None:
            self._index = self._make(x.shape[0])
        if not self._index.is_trained:
            t0 = time.perf_counter()
            try:
                self._index.train(x)
            except RuntimeError as e:
                raise ValueError(f"faiss index {self.factory or self.index_type!r}: training on {len(x)} vectors "
                                 f"failed: {_faiss_error(e)}") from None
            logger.info("trained faiss %s on %d vectors in %.2fs", self.index_type, len(x), time.perf_counter() - t0)
            self._apply_search_params(self._index)

    def _add_vectors(self, x: np.ndarray) -> None:
        if self._index is None or not self._index.is_trained:
            self.train(x)
        self._index.add(x)

    # ------------------------------------------------------------------ search
    def _search(self, x: np.ndarray, k: int):
        if self._index is None:
            raise RuntimeError("the faiss index holds no vectors yet")
        B = x.shape[0]
        if not self.calibrate_blas or self._on_gpu or self.index_type not in _BLAS_TYPES:
            return self._index.search(x, k)
        key = (self.index_type, self.dim, int(math.log2(max(len(self), 1))), B, k)
        with _BLAS_LOCK:  # the threshold is process-global: set it and search under one lock
            choice = _BLAS_CHOICE.get(key)
            if choice is None:
                choice, result = self._calibrate(x, k)
                _BLAS_CHOICE[key] = choice
                return result
            _set_blas(choice, B, self.dim)
            return self._index.search(x, k)

    def _calibrate(self, x: np.ndarray, k: int):
        """Time the BLAS path on the full batch and the SIMD loop on up to 8 queries (it is linear in B)."""
        B = x.shape[0]
        sub = x[: min(B, 8)]

        def timed(use_blas, q, reps=2):
            _set_blas(use_blas, q.shape[0], self.dim)
            best, out = float("inf"), None
            for _ in range(reps):
                t0 = time.perf_counter()
                out = self._index.search(q, k)
                best = min(best, time.perf_counter() - t0)
            return best, out

        t_loop, _ = timed(False, sub)
        t_loop *= B / sub.shape[0]
        t_blas, result = timed(True, x)
        use_blas = t_blas <= t_loop
        logger.debug("faiss %s B=%d d=%d n=%d: BLAS %.3gs vs loop %.3gs -> %s", self.index_type, B, self.dim,
                     len(self), t_blas, t_loop, "BLAS" if use_blas else "loop")
        if not use_blas:
            _set_blas(False, B, self.dim)
            result = self._index.search(x, k)
        return use_blas, result

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None, **faiss_params) -> None:
        """Change the speed / recall trade-off of a built index (``faiss_params``: any ParameterSpace name)."""
        faiss = _faiss()
        if self.index_type in (FACTORY, ADOPTED):
            named = {"nprobe": nprobe, "efSearch": ef_search}
            faiss_params.update({k: v for k, v in named.items() if v is not None})
        if faiss_params:
            self.search_params.update(faiss_params)
            if self._index is not None:
                self._apply_search_params(self._index, faiss_params)
            if self.index_type in (FACTORY, ADOPTED):
                return
        if nprobe is not None and self.index_type in ("ivf", "ivfpq"):
            self.nprobe = int(nprobe)
            if self._index is not None:
                if self._on_gpu:
                    faiss.GpuParameterSpace().set_index_parameter(self._index, "nprobe", self.nprobe)
                else:
                    faiss.extract_index_ivf(self._index).nprobe = self.nprobe
        if ef_search is not None and self.index_type == "hnsw":
            self.ef_search = int(ef_search)
            if self._index is not None:
                self._index.hnsw.efSearch = self.ef_search

    # ------------------------------------------------------------------ factory strings and adopted indexes
    def _apply_search_params(self, idx, params: dict[str, Any] | None = None) -> None:
        """Set ``params`` (default: ``self.search_params``) through faiss's ParameterSpace; a name faiss cannot set
        on this index raises ``ValueError`` naming it."""
        params = self.search_params if params is None else params
        if not params or idx is None:
            return
        faiss = _faiss()
        space = faiss.GpuParameterSpace() if self._on_gpu else faiss.ParameterSpace()
        for name, value in params.items():
            try:
                space.set_index_parameter(idx, str(name), float(value))
            except (RuntimeError, TypeError, ValueError) as e:
                raise ValueError(f"index.params: faiss cannot set {name!r}={value!r} on a "
                                 f"{self.factory or self.index_type!r} index ({_faiss_error(e)}); expected search "
                                 "parameters such as nprobe (IVF) or efSearch (HNSW)") from None
