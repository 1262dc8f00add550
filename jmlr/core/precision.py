"""Precision per device: the ONE place that decides which autocast dtype a forward runs under.

``optim.precision`` takes ``auto | fp32 | bf16 | fp16``. ``auto`` picks bf16 only where the hardware runs it
natively, and fp32 everywhere else:

* CUDA: bf16 when the GPU supports it natively (``torch.cuda.is_bf16_supported(including_emulation=False)``,
  Ampere and newer), else fp32.
* CPU: bf16 when ``/proc/cpuinfo`` lists ``avx512_bf16`` or ``amx_bf16``; else fp32. On a CPU without them
  torch emulates bf16 matmuls, which measured 4x SLOWER than fp32 for SmolLM2-135M forward+backward.
* anything else (mps, xpu, ...): fp32.

Every autocast in jmlr goes through :func:`autocast` (or :meth:`Precision.autocast`); the device type comes from
the device or tensor passed in, never from a literal. Weights stay fp32; only the forwards' matmuls change.

>>> x = torch.ones(2, 2)
>>> p = resolve_precision("fp32", x)
>>> p.name, p.dtype, p.reason
('fp32', None, 'requested fp32')
>>> with p.autocast(x):
...     y = x @ x
"""
from __future__ import annotations

import functools
import platform
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["PRECISIONS", "Precision", "resolve_precision", "native_bf16", "cpu_flags", "cpu_model", "host_info",
           "autocast", "device_type_of", "dtype_name"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""Accepted values of ``optim.precision``."""

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""The /proc/cpuinfo flags that mean a CPU runs bf16 matmuls natively."""

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_ALIASES = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16",
            "none": "fp32"}


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset]:
    model, flags = platform.processor() or platform.machine(), frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = frozenset(value.split())
    except OSError:  # not Linux: no flags to read, so auto stays fp32 on the CPU
        pass
    return model, flags


def cpu_flags() -> frozenset:
    """The CPU feature flags of this host (``/proc/cpuinfo``; empty where it cannot be read)."""
    return _cpuinfo()[1]


def cpu_model() -> str:
    """The CPU model name (``/proc/cpuinfo`` ``model name``, else ``platform.processor()``)."""
    return _cpuinfo()[0]


def device_type_of(where: Any) -> str:
    """``"cpu"``, ``"cuda"``, ... from a device, a device string, a tensor or a module (its first parameter)."""
    if isinstance(where, torch.Tensor):
        return where.device.type
    if isinstance(where, torch.nn.Module):
        p = next(where.parameters(), None)
        return p.device.type if p is not None else "cpu"
    if where is None:
        return "cpu"
    return torch.device(where).type


def native_bf16(device: Any = "cpu") -> tuple[bool, str]:
    """Whether ``device`` runs bf16 natively, and why (the capability probe behind ``auto``)."""
    kind = device_type_of(device)
    if kind == "cuda":
        ok = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))
        name = torch.cuda.get_device_name(torch.device(device) if not isinstance(device, torch.Tensor) else
                                          device.device) if torch.cuda.is_available() else "no CUDA device"
        return ok, f"{name} {'supports' if ok else 'lacks'} native bf16"
    if kind == "cpu":
        have = sorted(set(BF16_CPU_FLAGS) & cpu_flags())
        if have:
            return True, f"CPU has {'+'.join(have)}"
        return False, f"CPU lacks {'/'.join(BF16_CPU_FLAGS)} (bf16 would be emulated, several times slower than fp32)"
    return False, f"device type {kind!r}: bf16 not assumed native"


def _canonical(requested: Any, key: str) -> str:
    if isinstance(requested, torch.dtype):
        requested = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(requested, requested)
    name = str(requested).lower().strip() if requested is not None else "fp32"
    name = _ALIASES.get(name, name)
    if name not in PRECISIONS:
        raise ValueError(f"{key}={requested!r} is not a precision; expected one of {', '.join(PRECISIONS)}")
    return name


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` (fp32 | bf16 | fp16), what was ``requested``, the device type and why."""

    name: str
    requested: str
    device_type: str
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype (``None`` for fp32: no autocast)."""
        return _DTYPES[self.name]

    def autocast(self, where: Any = None):
        """A ``torch.autocast`` context for ``where`` (device/tensor/module; default: the resolved device type)."""
        return autocast(self.dtype, self.device_type if where is None else where)

    def as_dict(self) -> dict:
        return {"precision": self.name, "requested": self.requested, "device": self.device_type,
                "reason": self.reason}

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def resolve_precision(requested: Any, device: Any = "cpu", key: str = "optim.precision") -> Precision:
    """Turn ``auto | fp32 | bf16 | fp16`` (or a torch dtype) into a :class:`Precision` for ``device``.

    An explicit bf16 on a device without native support is honoured (the user asked for it) and the reason
    says it is emulated.
    """
    name = _canonical(requested, key)
    kind = device_type_of(device)
    if name == "auto":
        ok, why = native_bf16(device)
        return Precision("bf16" if ok else "fp32", "auto", kind, f"auto: {why}")
    reason = f"requested {name}"
    if name == "bf16":
        ok, why = native_bf16(device)
        if not ok:
            reason += f"; {why}"
    return Precision(name, name, kind, reason)


def autocast(dtype: Any, where: Any = None):
    """``torch.autocast`` on the device type of ``where`` with ``dtype`` (None / "fp32" / "bf16" / torch dtype);
    a no-op context for fp32. The one call site of ``torch.autocast`` in jmlr."""
    if isinstance(dtype, Precision):
        dtype = dtype.dtype
    elif dtype is not None and not isinstance(dtype, torch.dtype):
        dtype = _DTYPES[_canonical(dtype, "autocast dtype")] if str(dtype).lower() != "auto" else None
    if dtype is None or dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type_of(where), dtype=dtype)


def dtype_name(dtype: torch.dtype | None) -> str:
    """``"fp32" | "bf16" | "fp16"`` for an autocast dtype (``None`` = fp32)."""
    return {None: "fp32", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def host_info() -> dict:
    """CPU model, its bf16 flags, core count and torch version: what every benchmark report names."""
    import os

    info = {"cpu_model": cpu_model(), "bf16_flags": sorted(set(BF16_CPU_FLAGS) & cpu_flags()),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
