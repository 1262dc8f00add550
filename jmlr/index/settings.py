"""From config keys to index constructor arguments: ``index.type``, ``index.params``, ``index.storage``.

``index.type`` is ``exact``, a named faiss kind (flat, ivf, ivfpq, hnsw, sq8, sq16) or any faiss
``index_factory`` string (``"IVF4096,PQ64x4fs"``, ``"HNSW32,Flat"``). ``index.params`` holds faiss settings:
for the named kinds the construction ones (``nlist``, ``pq_m``, ``pq_bits``, ``hnsw_m``, ``ef_construction``) and
the search ones (``nprobe``, ``ef_search`` / ``efSearch``); anything else, and everything for a factory string,
is a faiss ``ParameterSpace`` search parameter (``nprobe``, ``efSearch``, ``ht``, ``k_factor``, ...).
"""
from __future__ import annotations

from typing import Any

from .faiss_index import TYPES, _ALIASES, _FAISS_NAMES

_CONSTRUCTION = ("nlist", "nprobe", "pq_m", "pq_bits", "hnsw_m", "ef_construction", "ef_search")


def is_named_faiss_type(index_type: str) -> bool:
    """True for jmlr's own faiss kinds (and their aliases), False for an index_factory string."""
    t = str(index_type).lower()
    return _ALIASES.get(t, t) in TYPES


def index_kwargs(index_type: str, params: dict | None = None, storage: str | None = None) -> dict[str, Any]:
    """Keyword arguments of :func:`jmlr.index.make_index` for these settings; bad ones raise ``ValueError``
    naming the config key.

    >>> index_kwargs("ivf", {"nlist": 64, "nprobe": 8})
    {'nlist': 64, 'nprobe': 8}
    >>> index_kwargs("HNSW32,Flat", {"efSearch": 256})
    {'search_params': {'efSearch': 256}}
    """
    params = dict(params or {})
    t = str(index_type)
    if t.lower() == "exact":
        if params:
            raise ValueError(f"index.params {sorted(params)} set faiss parameters, but index.type=exact takes none "
                             "(its precision is index.storage); remove them or pick a faiss index.type")
        return {"dtype": storage} if storage else {}
    for k, v in params.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"index.params.{k} = {v!r}: expected a number")
    if not is_named_faiss_type(t):
        return {"search_params": params} if params else {}
    out: dict[str, Any] = {}
    search: dict[str, Any] = {}
    for k, v in params.items():
        ours = _FAISS_NAMES.get(k, k)
        if ours in _CONSTRUCTION:
            if v != int(v):
                raise ValueError(f"index.params.{k} = {v!r}: expected an integer")
            out[ours] = int(v)
        else:
            search[k] = v
    if search:
        out["search_params"] = search
    return out


def parse_params(items: list[str]) -> dict:
    """``["nprobe=32", "efSearch=256"]`` -> ``{"nprobe": 32, "efSearch": 256}``."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--param {item!r}: expected NAME=VALUE, e.g. nprobe=32")
        try:
            out[name.strip()] = float(value) if "." in value or "e" in value.lower() else int(value)
        except ValueError:
            raise ValueError(f"--param {item!r}: {value!r} is not a number") from None
    return out
