"""DualEncoder: a query tower and a doc tower over any HF encoder, shared or separate.

Loads a sentence-transformers folder (its Pooling / Normalize modules and ``max_seq_length`` are honoured),
a plain HF encoder folder or name, or a folder written by :meth:`DualEncoder.save_pretrained`.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

CONFIG_NAME = "jmlr_retriever.json"
POOLINGS = ("mean", "cls")


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool token states ``hidden (B, T, H)`` under ``mask (B, T)`` into ``(B, H)`` ("mean" or "cls")."""
    if mode == "cls":
        return hidden[:, 0]
    if mode == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
    raise ValueError(f"unknown pooling {mode!r}: expected one of {POOLINGS}")


def pad_batch(token_lists: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into ``input_ids (B, T)`` and ``attention_mask (B, T)``."""
    T = max(1, max(len(t) for t in token_lists))
    ids = torch.full((len(token_lists), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), T), dtype=torch.long)
    for i, t in enumerate(token_lists):
        ids[i, : len(t)] = torch.as_tensor(t, dtype=torch.long)
        mask[i, : len(t)] = 1
    return ids, mask


def embed_tokens(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 pooling: str, normalize: bool) -> torch.Tensor:
    """Run an HF encoder on a padded batch and pool: ``(B, T)`` ids -> ``(B, d)`` embeddings."""
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (B, T, H)
    emb = pool(hidden, attention_mask, pooling)  # (B, H)
    if normalize:
        emb = torch.nn.functional.normalize(emb.float(), dim=-1)
    return emb


@torch.no_grad()
def encode_token_lists(model: nn.Module, token_lists: Sequence[Sequence[int]], *, pad_id: int, pooling: str,
                       normalize: bool, batch_size: int = 64, progress: bool = False, desc: str = "encode",
                       out: torch.Tensor | None = None) -> torch.Tensor:
    """Encode pre-tokenized texts without gradient, longest first (little padding), in input order.

    Returns ``(n, d)`` float32 on CPU (written into ``out`` when given). The model is put in eval mode for
    the call and restored afterwards.
    """
    from tqdm.auto import tqdm

    n = len(token_lists)
    order = sorted(range(n), key=lambda i: -len(token_lists[i]))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        bar = tqdm(total=n, desc=desc, unit="text", disable=not progress, leave=False)
        for s in range(0, n, batch_size):
            idx = order[s:s + batch_size]
            ids, mask = pad_batch([token_lists[i] for i in idx], pad_id)
            emb = embed_tokens(model, ids.to(device), mask.to(device), pooling, normalize).float().cpu()  # (b, d)
            if out is None:
                out = torch.empty((n, emb.shape[1]), dtype=torch.float32)
            out[torch.as_tensor(idx)] = emb
            bar.update(len(idx))
        bar.close()
    finally:
        model.train(was_training)
    if out is None:  # n == 0
        out = torch.empty((0, _hidden_size(model)), dtype=torch.float32)
    return out


def _hidden_size(model: nn.Module) -> int:
    cfg = getattr(model, "config", None)
    return int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "d_model", 0) or 0)


def tensor_digest(state: dict[str, torch.Tensor], extra: dict | None = None) -> str:
    """A content hash (blake2b-128, hex) of named tensors plus a JSON-able ``extra``."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(extra or {}, sort_keys=True).encode())
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def embedding_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors that shape the embeddings: the state dict without a pooler head (unused by mean/CLS pooling,
    and randomly initialised when a checkpoint lacks it, which would make fingerprints differ per load)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("pooler.")}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e


def _sentence_transformers_layout(folder: Path) -> dict | None:
    """Read a sentence-transformers folder: transformer sub-path, pooling, normalize, max length."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None
    modules = _read_json(modules_file)
    if not isinstance(modules, list):
        raise ValueError(f"{modules_file}: expected a JSON list of modules")
    info: dict = {"transformer": None, "pooling": None, "normalize": False, "max_length": None}
    for i, m in enumerate(modules):
        kind = str(m.get("type", ""))
        sub = folder / m.get("path", "")
        if kind.endswith(".Transformer"):
            info["transformer"] = sub
            cfg = sub / "sentence_bert_config.json"
            if cfg.is_file():
                info["max_length"] = _read_json(cfg).get("max_seq_length")
        elif kind.endswith(".Pooling"):
            pcfg = _read_json(sub / "config.json")
            if pcfg.get("pooling_mode_cls_token"):
                info["pooling"] = "cls"
            elif pcfg.get("pooling_mode_mean_tokens"):
                info["pooling"] = "mean"
            else:
                modes = [k for k, v in pcfg.items() if k.startswith("pooling_mode") and v]
                raise ValueError(f"{sub / 'config.json'}: pooling {modes} is not supported; expected mean or cls")
        elif kind.endswith(".Normalize"):
            info["normalize"] = True
        elif kind.endswith(".Dense"):
            raise ValueError(f"{modules_file}: module {i} is a Dense projection, which DualEncoder does not "
                             "support; expected Transformer, Pooling and optional Normalize")
    if info["transformer"] is None:
        raise ValueError(f"{modules_file}: no sentence_transformers.models.Transformer module listed")
    return info


class DualEncoder(nn.Module):
    """Query and doc towers over an HF encoder (e.g. BERT, MiniLM), with mean or CLS pooling.

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
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}: expected one of {POOLINGS}")
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
        return _hidden_size(self.query_model)

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
        folder's settings (sentence-transformers pooling / Normalize / max_seq_length), else mean pooling,
        L2 normalisation and 256 tokens. ``shared=False`` gives the doc tower its own copy of the weights.
        """
        from transformers import AutoModel, AutoTokenizer

        from jmlr.models import resolve

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
            if saved.get("shared", True):
                models["query"] = AutoModel.from_pretrained(str(folder), **kw)
            else:
                models["query"] = AutoModel.from_pretrained(str(folder / "query"), **kw)
                models["doc"] = AutoModel.from_pretrained(str(folder / "doc"), **kw)
        else:
            st = _sentence_transformers_layout(folder) if folder.is_dir() else None
            model_src = str(st["transformer"]) if st else src
            if st:
                saved = {"pooling": st["pooling"] or "mean", "normalize": st["normalize"],
                         "max_length": st["max_length"]}
            if folder.is_dir() and not (Path(model_src) / "config.json").is_file():
                raise FileNotFoundError(f"{Path(model_src) / 'config.json'} not found: expected an HF encoder "
                                        "folder, a sentence-transformers folder or a jmlr retriever folder")
            tok = AutoTokenizer.from_pretrained(model_src, **kw)
            models["query"] = AutoModel.from_pretrained(model_src, **kw)
        if max_length is None:
            max_length = saved.get("max_length") or min(256, getattr(tok, "model_max_length", 256) or 256)
            max_length = min(int(max_length), getattr(models["query"].config, "max_position_embeddings", 10**9))
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

        A shared-weights encoder is also a valid sentence-transformers folder (modules.json, Pooling,
        Normalize), so ``SentenceTransformer(save_directory)`` loads it.
        """
        from jmlr.index._atomic import atomic_dir

        cfg = self.config_dict()
        with atomic_dir(save_directory) as tmp:
            if self.shared:
                self.query_model.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
                write_sentence_transformers_layout(tmp, dim=self.dim, pooling=self.pooling,
                                                   normalize=self.normalize, max_length=self.max_length)
            else:
                self.query_model.save_pretrained(tmp / "query")
                self.doc_model.save_pretrained(tmp / "doc")
                self.tokenizer.save_pretrained(tmp)
            for p in tmp.rglob("*.bin"):
                raise RuntimeError(f"{p}: expected safetensors weights only")
            (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2))
        return Path(save_directory)

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
        from .encoding import encode_texts  # length-sorted, inference_mode, tokenisation overlapped

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


def write_sentence_transformers_layout(folder: str | os.PathLike, *, dim: int, pooling: str, normalize: bool,
                                       max_length: int) -> None:
    """Write the sentence-transformers module files (Transformer at the root, Pooling, optional Normalize)."""
    folder = Path(folder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_length, "do_lower_case": False}, indent=2))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": dim,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }, indent=2))
