"""Shared output for benchmarks: a JSON file, a markdown table and a PNG plot per benchmark."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any, Sequence


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    from jmlr.core.precision import host_info

    return {
        **host_info(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def proc_status_bytes(*keys: str) -> dict[str, int]:
    """The ``kB`` fields ``keys`` of Linux /proc/self/status, in bytes (empty where /proc is missing)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key in keys:
                    out[key] = int(val.split()[0]) * 1024
    except OSError:
        pass
    return out


def peak_rss_bytes() -> int:
    """This process's own peak resident set (Linux ``VmHWM``, the high-water mark of its address space).

    Not ``getrusage().ru_maxrss``: a child started by ``subprocess`` (vfork + exec) inherits its parent's peak
    there, so a measuring child would report at least the parent's RSS at the time it was spawned. Falls back to
    ``ru_maxrss`` where /proc is missing (macOS: bytes, elsewhere KiB)."""
    hwm = proc_status_bytes("VmHWM").get("VmHWM")
    if hwm is not None:
        return hwm
    import resource
    import sys

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def rss_bytes() -> int:
    """This process's current resident set (Linux /proc; the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` atomically (temporary name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float))
    os.replace(tmp, path)
    return path


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows of dicts as a GitHub markdown table (columns default to the first row's keys)."""
    if not rows:
        return "(no rows)\n"
    columns = list(columns or rows[0].keys())
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(out) + "\n"


def write_markdown(path: str | os.PathLike, title: str, rows: Sequence[dict[str, Any]],
                   columns: Sequence[str] | None = None, notes: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"# {title}\n\n" + markdown_table(rows, columns) + ("\n" + notes.strip() + "\n" if notes else "")
    path.write_text(text)
    return path


def new_figure(*args, **kwargs):
    """A matplotlib figure on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


# ----------------------------------------------------------------------------------------------- intervals

def seed_summary(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """``{mean, ci95, n}`` of per-seed values (t interval; ``ci95`` is None for one seed): see benchmarks._stats."""
    from benchmarks._stats import mean_ci

    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "ci95": None, "n": 0}
    m, ci = mean_ci(vals, level)
    return {"mean": m, "ci95": list(ci) if ci is not None else None, "n": len(vals)}


def fmt_interval(mean: float | None, ci: Sequence[float] | None, digits: int = 3) -> str:
    """A table cell ``mean ± half-width`` (``mean`` alone without an interval, empty for None).

    >>> fmt_interval(0.5871, [0.5702, 0.6040])
    '0.587 ± 0.017'
    """
    if mean is None:
        return ""
    if ci is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {(ci[1] - ci[0]) / 2:.{digits}f}"


def fmt_p(p: float | None) -> str:
    """A p-value cell: 3 significant digits, ``<1e-4`` below that."""
    if p is None:
        return ""
    return "<1e-4" if p < 1e-4 else f"{p:.3g}"
