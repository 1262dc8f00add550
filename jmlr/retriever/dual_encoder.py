"""DualEncoder: a query tower and a doc tower over any HF encoder, shared or separate.

Loads a sentence-transformers folder or instance (its Pooling mode, Dense / LayerNorm / Dropout modules,
Normalize, ``max_seq_length`` and query/document prompts are honoured), a plain HF encoder folder or name,
or a folder written by :meth:`DualEncoder.save_pretrained`. The pieces live beside it: the pooling modes in
:mod:`.pooling`, the embedding helpers (shared with the index) in :mod:`.embedding`, the sentence-transformers
layout in :mod:`.st_layout`, the fast no-grad corpus encoding in :mod:`.encoding`.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from jmlr.core.fs import atomic_dir
from jmlr.models import resolve

from .embedding import (PooledEncoder, PooledOutput, embed_tokens, embedding_state, encode_token_lists,  # noqa: F401
                        hidden_size, pad_batch, pool, tensor_digest, tower_dim)
from .encoding import encode_texts
from .pooling import POOLINGS, parse_pooling, pooling_name  # noqa: F401
from .st_layout import (DOC_PROMPT_NAMES, _load_tower, _read_json, _save_tower,  # noqa: F401
                        _sentence_transformers_layout, _st_modules, prompts_to_prefixes,
                        write_prompts, write_sentence_transformers_layout)

logger = logging.getLogger(__name__)

CONFIG_NAME = "jmlr_retriever.json"


class DualEncoder(nn.Module):
    """Query and doc towers over an HF encoder (e.g. BERT, MiniLM), with any sentence-transformers pooling.

    ``doc_model`` None (or the same object as ``query_model``) means shared weights. Embeddings with gradient
    come from :meth:`embed_queries` / :meth:`embed_docs`; fast no-grad batched encoding from
    :meth:`encode_queries` / :meth:`encode_docs`.

    >>> dual = DualEncoder.from_pretrained("minilm")            # doctest: +SKIP
    >>> q = dual.embed_queries(["first-line drug for ..."])      # (1, 384), with grad
    >>> D = dual.encode_docs(corpus.texts(), batch_size=128)     # (N, 384) float32, no grad
    """

    def __init__(self, query_model: nn.Module, tokenizer, doc_model: nn.Module | None = None, *,
                 pooling: str = "mean", normalize: bool = True, max_length: int = 256,
                 query_prefix: str = "", doc_prefix: str = "", name_or_path: str | None = None):
        super().__init__()
        pooling = pooling_name(pooling)
        if max_length is None or int(max_length) < 2:
            raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
        self.query_model = query_model
        self.doc_model = doc_model if doc_model is not None else query_model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = bool(normalize)
        self.max_length = int(max_length)
        self.query_prefix = query_prefix
        self.doc_prefix = doc_prefix
        self.name_or_path = name_or_path
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token before building a DualEncoder")

    # ------------------------------------------------------------------ construction / persistence
    @property
    def shared(self) -> bool:
        """True when both towers are the same module (shared weights)."""
        return self.doc_model is self.query_model

    @property
    def doc_frozen(self) -> bool:
        """True when the doc tower takes no gradient (query-side-only training)."""
        return not any(p.requires_grad for p in self.doc_model.parameters())

    @property
    def dim(self) -> int:
        """Embedding size."""
        return tower_dim(self.query_model, self.pooling)

    @property
    def device(self) -> torch.device:
        return next(self.query_model.parameters()).device

    def config_dict(self) -> dict:
        """The pooling and text settings saved next to the weights."""
        return {"format": "jmlr-dual-encoder", "format_version": 1, "shared": self.shared,
                "pooling": self.pooling, "normalize": self.normalize, "max_length": self.max_length,
                "query_prefix": self.query_prefix, "doc_prefix": self.doc_prefix,
                "doc_frozen": self.doc_frozen, "name_or_path": self.name_or_path}

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, shared: bool | None = None,
                        pooling: str | None = None, normalize: bool | None = None, max_length: int | None = None,
                        query_prefix: str | None = None, doc_prefix: str | None = None,
                        device: str | torch.device | None = None, trust_remote_code: bool = False) -> "DualEncoder":
        """Load from a jmlr folder, a sentence-transformers folder, an HF encoder folder, or an alias.

        Aliases (e.g. ``"minilm"``) go through :func:`jmlr.models.resolve`. Arguments left ``None`` take the
        folder's settings (sentence-transformers pooling / Dense / Normalize / max_seq_length, and the query and
        document ``prompts`` as prefixes, see :func:`prompts_to_prefixes`), else mean pooling, L2 normalisation,
        256 tokens and no prefixes. ``shared=False`` gives the doc tower its own copy of the weights.
        """
        from transformers import AutoModel, AutoTokenizer

        src = resolve(str(name_or_path))
        folder = Path(src)
        saved = {}
        models: dict[str, nn.Module] = {}
        kw = {"trust_remote_code": trust_remote_code}
        if (folder / CONFIG_NAME).is_file():
            saved = _read_json(folder / CONFIG_NAME)
            if saved.get("format") != "jmlr-dual-encoder":
                raise ValueError(f"{folder / CONFIG_NAME}: expected format 'jmlr-dual-encoder', "
                                 f"got {saved.get('format')!r}")
            tok = AutoTokenizer.from_pretrained(str(folder), **kw)
            saved_pooling = saved.get("pooling") or "mean"
            if saved.get("shared", True):
                models["query"] = _load_tower(folder, saved_pooling, **kw)
            else:
                models["query"] = _load_tower(folder / "query", saved_pooling, **kw)
                models["doc"] = _load_tower(folder / "doc", saved_pooling, **kw)
        else:
            st = _sentence_transformers_layout(folder) if folder.is_dir() else None
            model_src = str(st["transformer"]) if st else src
            if st:
                qp, dp = prompts_to_prefixes(st["prompts"], st["default_prompt_name"])
                saved = {"pooling": st["pooling"] or "mean", "normalize": st["normalize"],
                         "max_length": st["max_length"], "query_prefix": qp, "doc_prefix": dp}
            if folder.is_dir() and not (Path(model_src) / "config.json").is_file():
                raise FileNotFoundError(f"{Path(model_src) / 'config.json'} not found: expected an HF encoder "
                                        "folder, a sentence-transformers folder or a jmlr retriever folder")
            tok = AutoTokenizer.from_pretrained(model_src, **kw)
            if st and st["post"]:
                if pooling is not None and pooling_name(pooling) != saved["pooling"]:
                    raise ValueError(f"{folder}: pooling={pooling!r} differs from the folder's {saved['pooling']!r}, "
                                     "and its Dense modules were trained on that pooling; leave pooling unset")
                models["query"] = _load_tower(folder, saved["pooling"], **kw)
            else:
                models["query"] = AutoModel.from_pretrained(model_src, **kw)
        if max_length is None:
            max_length = saved.get("max_length") or min(256, getattr(tok, "model_max_length", 256) or 256)
            max_length = min(int(max_length), getattr(models["query"].config, "max_position_embeddings", 10**9) or 10**9)
        if isinstance(models["query"], PooledEncoder):
            pooling = models["query"].pooling
        dual = cls(models["query"], tok, models.get("doc"),
                   pooling=pooling or saved.get("pooling") or "mean",
                   normalize=saved.get("normalize", True) if normalize is None else normalize,
                   max_length=max_length,
                   query_prefix=saved.get("query_prefix", "") if query_prefix is None else query_prefix,
                   doc_prefix=saved.get("doc_prefix", "") if doc_prefix is None else doc_prefix,
                   name_or_path=str(name_or_path))
        if shared is False and dual.shared:
            dual.untie()
        elif shared is True and not dual.shared:
            raise ValueError(f"{folder}: the towers were saved as separate weights; load with shared=False "
                             "(or None) and tie them yourself if you really want one tower")
        if saved.get("doc_frozen"):
            dual.freeze_doc_tower()
        if device is not None:
            dual.to(device)
        return dual

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write weights (safetensors), tokenizer and settings atomically into ``save_directory``.

        A shared-weights encoder is also a valid sentence-transformers folder (modules.json, Pooling, Dense
        modules, Normalize, the prefixes as ``query`` / ``document`` prompts), so
        ``SentenceTransformer(save_directory)`` loads it.
        """
        cfg = self.config_dict()
        layout = {"pooling": self.pooling, "normalize": self.normalize, "max_length": self.max_length}
        with atomic_dir(save_directory) as tmp:
            if self.shared:
                _save_tower(self.query_model, tmp, **layout)
                self.tokenizer.save_pretrained(tmp)
                write_prompts(tmp, self.query_prefix, self.doc_prefix)
            else:
                _save_tower(self.query_model, tmp / "query", **layout)
                _save_tower(self.doc_model, tmp / "doc", **layout)
                self.tokenizer.save_pretrained(tmp)
            for p in tmp.rglob("*.bin"):
                raise RuntimeError(f"{p}: expected safetensors weights only")
            (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2))
        return Path(save_directory)

    @classmethod
    def from_sentence_transformer(cls, model, doc_model=None, *, query_prefix: str | None = None,
                                  doc_prefix: str | None = None, max_length: int | None = None,
                                  name_or_path: str | None = None) -> "DualEncoder":
        """Wrap ``SentenceTransformer`` instances: ``model`` for queries (and documents), ``doc_model`` for
        documents when given (two towers).

        The towers ARE the instances' modules (no copy: training the DualEncoder trains them). Every pooling
        mode sentence-transformers ships is honoured (cls, mean, max, mean_sqrt_len_tokens, weightedmean,
        lasttoken, and concatenations), so are Dense / LayerNorm / Dropout modules after the pooling, a final
        Normalize and ``max_seq_length``. The prefixes default to the instance's ``prompts`` (see
        :func:`prompts_to_prefixes`; the document prompt from ``doc_model`` when given); pass ``""`` to turn
        them off. Embeddings equal ``model.encode(texts, prompt=prefix)``.

        >>> from sentence_transformers import SentenceTransformer           # doctest: +SKIP
        >>> dual = DualEncoder.from_sentence_transformer(SentenceTransformer("intfloat/e5-small-v2"))  # doctest: +SKIP
        """
        q = _st_modules(model)
        d = _st_modules(doc_model) if doc_model is not None else None
        qp, dp = prompts_to_prefixes(q["prompts"], q["default_prompt_name"])
        if d is not None:
            for key in ("pooling", "normalize"):
                if d[key] != q[key]:
                    raise ValueError(f"doc_model has {key}={d[key]!r} but model has {q[key]!r}; the towers must "
                                     "score in one space (same pooling and normalisation)")
            qd, dd = tower_dim(q["tower"], q["pooling"]), tower_dim(d["tower"], d["pooling"])
            if qd != dd:
                raise ValueError(f"doc_model gives {dd}-d embeddings but model gives {qd}-d; expected equal sizes")
            if d["tokenizer"].get_vocab() != q["tokenizer"].get_vocab():
                raise ValueError("doc_model uses another tokenizer vocabulary than model; DualEncoder keeps one "
                                 "tokenizer for both towers")
            dp = prompts_to_prefixes(d["prompts"], d["default_prompt_name"])[1] or dp
        ml = max_length or q["max_length"] or min(256, getattr(q["tokenizer"], "model_max_length", 256) or 256)
        return cls(q["tower"], q["tokenizer"], None if d is None else d["tower"], pooling=q["pooling"],
                   normalize=q["normalize"], max_length=int(ml),
                   query_prefix=qp if query_prefix is None else query_prefix,
                   doc_prefix=dp if doc_prefix is None else doc_prefix,
                   name_or_path=name_or_path or getattr(getattr(q["tower"], "config", None), "_name_or_path", None))

    def untie(self) -> "DualEncoder":
        """Give the doc tower its own copy of the weights (no-op when already separate)."""
        if self.shared:
            self.doc_model = copy.deepcopy(self.query_model)
        return self

    def freeze_docs(self) -> "DualEncoder":
        """Alias of :meth:`freeze_doc_tower`."""
        return self.freeze_doc_tower()

    def freeze_doc_tower(self) -> "DualEncoder":
        """Query-side-only mode: the doc tower (untied first if shared) stops taking gradient.

        The corpus index then never goes stale, so a refresher needs no refresh.
        """
        self.untie()
        for p in self.doc_model.parameters():
            p.requires_grad_(False)
        return self

    def fingerprint(self, tower: str = "doc") -> str:
        """Content hash of one tower's weights plus the settings that change its embeddings."""
        model = self._tower(tower)
        extra = {"pooling": self.pooling, "normalize": self.normalize, "max_length": self.max_length,
                 "prefix": self.doc_prefix if tower == "doc" else self.query_prefix}
        return tensor_digest(embedding_state(model), extra)

    def doc_snapshot(self) -> "DualEncoder":
        """A frozen, eval-mode copy of the doc tower (both towers of the copy share it)."""
        model = copy.deepcopy(self.doc_model).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return DualEncoder(model, self.tokenizer, pooling=self.pooling, normalize=self.normalize,
                           max_length=self.max_length, query_prefix=self.doc_prefix, doc_prefix=self.doc_prefix,
                           name_or_path=self.name_or_path)

    # ------------------------------------------------------------------ tokenisation / embedding
    def _tower(self, tower: str) -> nn.Module:
        if tower == "query":
            return self.query_model
        if tower == "doc":
            return self.doc_model
        raise ValueError(f"tower must be 'query' or 'doc', got {tower!r}")

    def _check_texts(self, texts) -> list[str]:
        if isinstance(texts, str):
            raise ValueError("expected a list of strings, got one string; wrap it in a list")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"text {i} is {type(t).__name__}, expected str")
        return texts

    def tokenize(self, texts: Sequence[str], tower: str = "doc") -> list[list[int]]:
        """Token ids (truncated to ``max_length``, with the tower's prefix), unpadded."""
        texts = self._check_texts(texts)
        prefix = self.doc_prefix if tower == "doc" else self.query_prefix
        if not texts:
            return []
        enc = self.tokenizer([prefix + t for t in texts], truncation=True, max_length=self.max_length,
                             padding=False, return_attention_mask=False, return_token_type_ids=False)
        return [list(x) for x in enc["input_ids"]]

    def _embed(self, texts: Sequence[str], tower: str) -> torch.Tensor:
        ids, mask = pad_batch(self.tokenize(texts, tower), self.tokenizer.pad_token_id)
        self.tokens_seen = getattr(self, "tokens_seen", 0) + int(mask.sum())  # for cost accounting
        model = self._tower(tower)
        dev = next(model.parameters()).device
        return embed_tokens(model, ids.to(dev), mask.to(dev), self.pooling, self.normalize)

    def embed_queries(self, texts: Sequence[str]) -> torch.Tensor:
        """Query embeddings ``(B, d)`` with gradient to the query tower (one batch, no progress bar)."""
        return self._embed(texts, "query")

    def embed_docs(self, texts: Sequence[str]) -> torch.Tensor:
        """Doc embeddings ``(n, d)`` with gradient to the doc tower (one batch, no progress bar)."""
        return self._embed(texts, "doc")

    query_embed = embed_queries
    doc_embed = embed_docs

    def forward(self, queries: Sequence[str], docs: Sequence[str]) -> torch.Tensor:
        """Inner-product scores ``(B, n)`` between queries and docs, with gradient to both towers."""
        return self.embed_queries(queries) @ self.embed_docs(docs).T  # (B, n)

    def _encode(self, texts, tower: str, batch_size: int, progress: bool) -> torch.Tensor:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        texts = self._check_texts(texts)
        return encode_texts(self._tower(tower), self.tokenizer, texts, max_length=self.max_length,
                            pooling=self.pooling, normalize=self.normalize, batch_size=batch_size,
                            prefix=self.doc_prefix if tower == "doc" else self.query_prefix, progress=progress,
                            desc=f"encode {tower}s")

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64, progress: bool = True) -> torch.Tensor:
        """No-grad query embeddings ``(n, d)`` float32 on CPU, batched, longest first, with a progress bar."""
        return self._encode(texts, "query", batch_size, progress)

    def encode_docs(self, texts: Sequence[str], batch_size: int = 64, progress: bool = True) -> torch.Tensor:
        """No-grad doc embeddings ``(n, d)`` float32 on CPU, batched, longest first, with a progress bar."""
        return self._encode(texts, "doc", batch_size, progress)

    def extra_repr(self) -> str:
        return (f"name_or_path={self.name_or_path!r}, shared={self.shared}, pooling={self.pooling!r}, "
                f"normalize={self.normalize}, max_length={self.max_length}, dim={self.dim}")
