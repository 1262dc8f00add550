"""DualEncoder: a query tower and a doc tower over any HF encoder, shared or separate.

Loads a sentence-transformers folder or instance (its Pooling mode, Dense / LayerNorm / Dropout modules,
Normalize, ``max_seq_length`` and query/document prompts are honoured), a plain HF encoder folder or name,
or a folder written by :meth:`DualEncoder.save_pretrained`.
"""
from __future__ import annotations

import copy
import hashlib
import importlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

CONFIG_NAME = "jmlr_retriever.json"
POOLINGS = ("mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
"""Every pooling mode sentence-transformers ships; ``"cls+mean"`` concatenates several (in this order)."""
_LEGACY_POOLING_KEYS = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens",
                        "mean": "pooling_mode_mean_tokens", "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
                        "weightedmean": "pooling_mode_weightedmean_tokens", "lasttoken": "pooling_mode_lasttoken"}
_POST_MODULES = ("Dense", "LayerNorm", "Dropout", "Normalize")  # sentence-transformers modules after Pooling
DOC_PROMPT_NAMES = ("document", "passage", "corpus", "doc")


def parse_pooling(mode: str | Sequence[str]) -> tuple[str, ...]:
    """``"cls+mean"`` (or ``("cls", "mean")``) -> ``("cls", "mean")``; raises on an unknown mode."""
    modes = tuple(m.strip() for m in mode.split("+")) if isinstance(mode, str) else tuple(mode)
    bad = [m for m in modes if m not in POOLINGS]
    if not modes or bad:
        raise ValueError(f"unknown pooling {mode!r}: expected one of {POOLINGS}, or several joined by '+'")
    return modes


def pooling_name(mode: str | Sequence[str]) -> str:
    """The canonical string of a pooling mode (several modes joined by ``+``)."""
    return "+".join(parse_pooling(mode))


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool token states ``hidden (B, T, H)`` under a right-padded ``mask (B, T)`` into ``(B, H)``.

    Modes (as sentence-transformers' Pooling computes them): ``cls`` (first token), ``mean``, ``max``,
    ``mean_sqrt_len_tokens`` (sum / sqrt(n)), ``weightedmean`` (token ``t`` weighted by ``t + 1``), ``lasttoken``
    (the last non-padding token). ``"a+b"`` concatenates: ``(B, 2H)``.
    """
    modes = parse_pooling(mode)
    if len(modes) > 1:
        return torch.cat([pool(hidden, mask, m) for m in modes], dim=-1)
    m_ = modes[0]
    if m_ == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    if m_ == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
    if m_ == "mean_sqrt_len_tokens":
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9).sqrt()
    if m_ == "max":
        return hidden.masked_fill(m == 0, float("-inf")).max(1).values
    if m_ == "weightedmean":
        w = m * torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=hidden.dtype).view(1, -1, 1)
        return (hidden * w).sum(1) / w.sum(1).clamp_min(1e-9)
    last = (mask.sum(1).long() - 1).clamp_min(0)  # lasttoken: (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def prompts_to_prefixes(prompts: dict | None, default_prompt_name: str | None = None) -> tuple[str, str]:
    """``(query_prefix, doc_prefix)`` from sentence-transformers ``prompts`` and ``default_prompt_name``.

    The query prompt is ``prompts["query"]``; the document prompt the first non-empty one of ``document``,
    ``passage``, ``corpus``, ``doc`` (e5 saves ``passage``, ST's own name is ``document``). A tower without a
    prompt of its own takes the default prompt, unless that default is the other tower's prompt.
    """
    prompts = {k: v for k, v in (prompts or {}).items() if isinstance(v, str) and v}
    default = prompts.get(default_prompt_name, "") if default_prompt_name else ""
    q = prompts.get("query")
    d = next((prompts[n] for n in DOC_PROMPT_NAMES if n in prompts), None)
    if q is None:
        q = "" if default_prompt_name in DOC_PROMPT_NAMES else default
    if d is None:
        d = "" if default_prompt_name == "query" else default
    return q, d


@dataclass
class PooledOutput:
    """What a :class:`PooledEncoder` returns: the token states and the finished sentence embedding."""

    last_hidden_state: torch.Tensor
    sentence_embedding: torch.Tensor


class PooledEncoder(nn.Module):
    """An HF encoder, a pooling mode and the sentence-transformers modules that follow the pooling (Dense,
    LayerNorm, Dropout), as one tower: ``forward`` gives the sentence embedding before normalisation.

    DualEncoder uses it only when such modules exist; a bare encoder is used as is otherwise.
    """

    def __init__(self, encoder: nn.Module, pooling: str, post: Sequence[nn.Module] = ()):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling_name(pooling)
        self.post = nn.ModuleList(post)
        dim = _hidden_size(encoder) * len(parse_pooling(pooling))
        for m in self.post:
            dim = int(getattr(m, "out_features", dim))
        self.embedding_dim = dim

    @property
    def config(self):
        return self.encoder.config

    def forward(self, input_ids=None, attention_mask=None, **kwargs) -> PooledOutput:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (B, T, H)
        feats = {"sentence_embedding": pool(hidden, attention_mask, self.pooling),  # (B, H')
                 "token_embeddings": hidden, "attention_mask": attention_mask}
        for m in self.post:
            feats = m(feats)
        return PooledOutput(hidden, feats["sentence_embedding"])


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
    emb = getattr(out, "sentence_embedding", None)  # a PooledEncoder pools (and projects) itself
    if emb is None:
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
    if getattr(model, "embedding_dim", None):
        return int(model.embedding_dim)
    cfg = getattr(model, "config", None)
    return int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "d_model", 0) or 0)


def _tower_dim(model: nn.Module, pooling: str) -> int:
    """Embedding size of a tower: a PooledEncoder's own, else hidden size times the pooled modes."""
    if isinstance(model, PooledEncoder):
        return model.embedding_dim
    return _hidden_size(model) * len(parse_pooling(pooling))


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
    return {k: v for k, v in model.state_dict().items() if not (k.startswith("pooler.") or k.startswith("encoder.pooler."))}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e


def _pooling_from_config(pcfg: dict, where: Path) -> str:
    """The pooling mode of a sentence-transformers Pooling config (``pooling_mode``, or the older booleans)."""
    if pcfg.get("include_prompt") is False:
        raise ValueError(f"{where}: include_prompt=false (prompt tokens left out of the pooling) is not supported; "
                         "expected a Pooling module that pools every token")
    mode = pcfg.get("pooling_mode")
    if mode:
        try:
            return pooling_name(mode)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    modes = [m for m, key in _LEGACY_POOLING_KEYS.items() if pcfg.get(key)]
    return "+".join(modes) or "mean"  # sentence-transformers' own default


def _post_module_class(kind: str, where: str):
    """The sentence-transformers class named ``kind`` in a modules.json, if it is a post-pooling module we run."""
    name = kind.rsplit(".", 1)[-1]
    if not kind.startswith("sentence_transformers.") or name not in _POST_MODULES:
        return None
    module = importlib.import_module(kind.rsplit(".", 1)[0])
    cls = getattr(module, name, None)
    if cls is None:
        raise ValueError(f"{where}: cannot import {kind} with this sentence-transformers version")
    return cls


def _sentence_transformers_layout(folder: Path) -> dict | None:
    """Read a sentence-transformers folder: transformer sub-path, pooling, post-pooling modules (Dense,
    LayerNorm, Dropout; as ``(class, path)``), normalize, max length and prompts."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None
    modules = _read_json(modules_file)
    if not isinstance(modules, list):
        raise ValueError(f"{modules_file}: expected a JSON list of modules")
    info: dict = {"transformer": None, "pooling": None, "normalize": False, "max_length": None, "post": [],
                  "prompts": {}, "default_prompt_name": None}
    expected = "expected Transformer, Pooling, then Dense / LayerNorm / Dropout / Normalize"
    for i, m in enumerate(modules):
        kind = str(m.get("type", ""))
        sub = folder / m.get("path", "")
        if kind.endswith(".Transformer"):
            info["transformer"] = sub
            cfg = sub / "sentence_bert_config.json"
            if cfg.is_file():
                scfg = _read_json(cfg)
                info["max_length"] = scfg.get("max_seq_length")
                if scfg.get("do_lower_case"):
                    raise ValueError(f"{cfg}: do_lower_case=true is not supported; expected a tokenizer that "
                                     "lower-cases by itself (or none)")
        elif kind.endswith(".Pooling"):
            info["pooling"] = _pooling_from_config(_read_json(sub / "config.json"), sub / "config.json")
        elif kind.endswith(".Normalize") and i == len(modules) - 1:
            info["normalize"] = True
        elif info["pooling"] is not None and _post_module_class(kind, str(modules_file)) is not None:
            info["post"].append((_post_module_class(kind, str(modules_file)), sub))
        else:
            raise ValueError(f"{modules_file}: module {i} is {kind or '(no type)'}, which DualEncoder does not "
                             f"support; {expected}")
    if info["transformer"] is None:
        raise ValueError(f"{modules_file}: no sentence_transformers.models.Transformer module listed")
    st_cfg = folder / "config_sentence_transformers.json"
    if st_cfg.is_file():
        c = _read_json(st_cfg)
        info["prompts"] = c.get("prompts") or {}
        info["default_prompt_name"] = c.get("default_prompt_name")
    return info


def _load_tower(path: Path, pooling: str, **kw) -> nn.Module:
    """An HF encoder folder, wrapped in a :class:`PooledEncoder` when its modules.json lists Dense-like modules."""
    from transformers import AutoModel

    st = _sentence_transformers_layout(path)
    src = st["transformer"] if st else path
    model = AutoModel.from_pretrained(str(src), **kw)
    if st and st["post"]:
        return PooledEncoder(model, st["pooling"] or pooling, [cls.load(str(sub)) for cls, sub in st["post"]])
    return model


def _save_tower(model: nn.Module, folder: Path, *, pooling: str, normalize: bool, max_length: int) -> None:
    """Weights (safetensors) plus a sentence-transformers layout (Pooling, post modules, Normalize)."""
    post = list(model.post) if isinstance(model, PooledEncoder) else []
    (model.encoder if isinstance(model, PooledEncoder) else model).save_pretrained(folder)
    write_sentence_transformers_layout(folder, dim=_hidden_size(model.encoder if post else model), pooling=pooling,
                                       normalize=normalize, max_length=max_length, post=post)


def _st_modules(model) -> dict:
    """Read one SentenceTransformer instance: HF encoder, tokenizer, pooling, post modules, normalize."""
    mods = list(model)
    name = type(model).__name__
    first = mods[0] if mods else None
    if first is None or not hasattr(first, "auto_model") or getattr(first, "tokenizer", None) is None:
        raise ValueError(f"{name}: module 0 is {type(first).__name__}; expected a sentence_transformers "
                         "Transformer module (a text encoder with a tokenizer)")
    if getattr(first, "do_lower_case", False):
        raise ValueError(f"{name}: the Transformer module has do_lower_case=True, which DualEncoder does not "
                         "support; expected a tokenizer that lower-cases by itself")
    if len(mods) < 2 or type(mods[1]).__name__ != "Pooling":
        got = type(mods[1]).__name__ if len(mods) > 1 else "nothing"
        raise ValueError(f"{name}: module 1 is {got}; expected a Pooling module after the Transformer")
    p = mods[1]
    if getattr(p, "include_prompt", True) is False:
        raise ValueError(f"{name}: Pooling(include_prompt=False) is not supported; expected a Pooling module that "
                         "pools every token")
    mode = getattr(p, "pooling_mode", None)
    if not mode or (isinstance(mode, str) and mode not in POOLINGS and "+" not in mode):
        # sentence-transformers < 5: booleans on the module, and a "cls+mean"-style string helper
        mode = [m for m, key in _LEGACY_POOLING_KEYS.items() if getattr(p, key, False)] or "mean"
    pooling = pooling_name(mode)
    post, normalize = [], False
    for i, m in enumerate(mods[2:], start=2):
        kind = type(m).__name__
        if kind == "Normalize" and i == len(mods) - 1:
            normalize = True
        elif kind in _POST_MODULES and getattr(m, "module_input_name", "sentence_embedding") == "sentence_embedding":
            post.append(m)
        else:
            raise ValueError(f"{name}: module {i} is {kind}, which DualEncoder does not support; expected "
                             "Dense, LayerNorm, Dropout or Normalize modules after the Pooling")
    enc = first.auto_model
    tower = PooledEncoder(enc, pooling, post) if post else enc
    return {"tower": tower, "tokenizer": first.tokenizer, "pooling": pooling, "normalize": normalize,
            "max_length": first.max_seq_length, "prompts": dict(getattr(model, "prompts", None) or {}),
            "default_prompt_name": getattr(model, "default_prompt_name", None)}


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
        return _tower_dim(self.query_model, self.pooling)

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
        from jmlr.core.fs import atomic_dir

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
            qd, dd = _tower_dim(q["tower"], q["pooling"]), _tower_dim(d["tower"], d["pooling"])
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
                                       max_length: int, post: Sequence[nn.Module] = ()) -> None:
    """Write the sentence-transformers module files: Transformer at the root, Pooling (the older boolean keys,
    which every sentence-transformers version reads), the post-pooling modules (each saved by its own
    ``save``), and Normalize when ``normalize``."""
    folder = Path(folder)
    modes = parse_pooling(pooling)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    for m in post:
        i = len(modules)
        name = type(m).__name__
        (folder / f"{i}_{name}").mkdir(exist_ok=True)
        m.save(str(folder / f"{i}_{name}"))
        modules.append({"idx": i, "name": str(i), "path": f"{i}_{name}", "type": f"{type(m).__module__}.{name}"})
    if normalize:
        i = len(modules)
        modules.append({"idx": i, "name": str(i), "path": f"{i}_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
        (folder / f"{i}_Normalize").mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_length, "do_lower_case": False}, indent=2))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    pcfg: dict[str, Any] = {"word_embedding_dimension": dim}
    pcfg.update({key: mode in modes for mode, key in _LEGACY_POOLING_KEYS.items()})
    pcfg["include_prompt"] = True
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pcfg, indent=2))


def write_prompts(folder: str | os.PathLike, query_prefix: str, doc_prefix: str) -> None:
    """Record the prefixes as sentence-transformers ``query`` / ``document`` prompts (when there are any)."""
    if not (query_prefix or doc_prefix):
        return
    cfg = {"prompts": {"query": query_prefix, "document": doc_prefix}, "default_prompt_name": None}
    (Path(folder) / "config_sentence_transformers.json").write_text(json.dumps(cfg, indent=2))
