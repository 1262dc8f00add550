"""The sentence-transformers folder layout: reading one (modules.json, Pooling, Dense / LayerNorm / Dropout,
Normalize, prompts), reading a ``SentenceTransformer`` instance, and writing the layout next to saved weights.
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from .embedding import PooledEncoder, hidden_size
from .pooling import POOLINGS, parse_pooling, pooling_name

__all__ = ["DOC_PROMPT_NAMES", "prompts_to_prefixes", "write_sentence_transformers_layout", "write_prompts"]

_LEGACY_POOLING_KEYS = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens",
                        "mean": "pooling_mode_mean_tokens", "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
                        "weightedmean": "pooling_mode_weightedmean_tokens", "lasttoken": "pooling_mode_lasttoken"}
_POST_MODULES = ("Dense", "LayerNorm", "Dropout", "Normalize")  # sentence-transformers modules after Pooling
DOC_PROMPT_NAMES = ("document", "passage", "corpus", "doc")


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
    write_sentence_transformers_layout(folder, dim=hidden_size(model.encoder if post else model), pooling=pooling,
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
