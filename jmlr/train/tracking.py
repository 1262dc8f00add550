"""Where training metrics go: ``report_to: [jsonl, tensorboard, wandb, ...]`` through accelerate's trackers.

``jsonl`` is jmlr's own ``metrics.jsonl`` in the run folder (one JSON row per logged step or evaluation).
Every other name is an accelerate tracker (``tensorboard``, ``wandb``, ``trackio``, ``comet_ml``, ``aim``,
``mlflow``, ``clearml``, ``dvclive``, ``swanlab``, or one registered with
``accelerate.tracking.register_tracker_class``); ``GeneralTracker`` instances work too from Python. A tracker
whose package is not installed is an error that names the package, raised before any model loads: never a
silent drop (accelerate's own ``filter_trackers`` only logs a debug line and carries on).

Values reach the trackers as ``train/<name>`` per optimizer step and ``<split>/<metric>`` per evaluation
(``dev/accuracy``, ``dev/recall@5``), at the training step. TensorBoard writes to ``<output_dir>/tb``.
"""
from __future__ import annotations

import atexit
import json
import logging
import math
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

JSONL = "jsonl"
METRICS_NAME = "metrics.jsonl"
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "comet_ml": "comet_ml",
            "aim": "aim", "mlflow": "mlflow", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab"}
"""The package each built-in accelerate tracker needs (``pip install <package>``)."""


class TrackerUnavailableError(ValueError):
    """A tracker named in ``report_to`` cannot run here (its package is not installed)."""


def available_trackers() -> set[str]:
    """Names of the accelerate trackers whose packages are installed."""
    from accelerate.tracking import get_available_trackers

    return {str(t.value if hasattr(t, "value") else t) for t in get_available_trackers()}


def _known() -> dict:
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return dict(LOGGER_TYPE_TO_CLASS)


def parse_report_to(value: Any) -> list:
    """``"jsonl,wandb"`` / ``["jsonl", "wandb"]`` -> ``["jsonl", "wandb"]``; ``"none"`` / ``[]`` -> ``[]``.

    Names are lower-cased and de-duplicated; ``GeneralTracker`` instances pass through."""
    from accelerate.tracking import GeneralTracker

    items = value.split(",") if isinstance(value, str) else list(value or [])
    out: list = []
    for item in items:
        if isinstance(item, GeneralTracker):
            out.append(item)
            continue
        name = str(item).strip().lower()
        if name in ("", "none"):
            continue
        if name == "all":
            raise ValueError("report_to: 'all' would pick whatever happens to be installed; name the trackers "
                             "(e.g. [jsonl, tensorboard])")
        if name != JSONL and name not in _known():
            known = ", ".join([JSONL] + sorted(_known()))
            raise ValueError(f"report_to: unknown tracker {name!r}; expected some of: {known}")
        if name not in out:
            out.append(name)
    return out


def check_report_to(value: Any) -> list:
    """:func:`parse_report_to`, and :class:`TrackerUnavailableError` for a tracker whose package is missing."""
    names = parse_report_to(value)
    have = available_trackers()
    for name in names:
        if isinstance(name, str) and name != JSONL and name in PACKAGES and name not in have:
            pkg = PACKAGES[name]
            raise TrackerUnavailableError(
                f"report_to includes {name!r}, but the {pkg!r} package is not installed; pip install {pkg}, or "
                f"remove {name!r} from report_to (e.g. report_to=[jsonl])")
    return names


def flat_config(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"optim.lr": 2e-5, ...}`` with scalar values (lists and None become strings)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_config(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = json.dumps(v, default=str)
    return out


def scalars(row: dict) -> tuple[dict[str, float], int | None]:
    """The tracker values of one jmlr log row and its step: ``train/*`` for a step row, ``<split>/*`` for an
    evaluation row (``{"eval": {...}}``). Booleans, strings and non-finite numbers are left out."""
    if "eval" in row:
        res = row["eval"]
        prefix, step = f"{res.get('split', 'eval')}/", res.get("step")
    else:
        res, prefix, step = row, "train/", row.get("step")
    vals = {}
    for k, v in res.items():
        if k in ("step", "split") or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            vals[prefix + k] = float(v)
    return vals, None if step is None else int(step)


class RunTrackers:
    """The trackers of one run (main process only): ``log(row)`` writes ``metrics.jsonl`` and/or sends the
    values to accelerate's trackers; ``finish()`` closes them (also at interpreter exit)."""

    def __init__(self, report_to: Any, output_dir: str | Path, config: dict | None = None, *,
                 project: str = "jmlr", accelerator=None, init_kwargs: dict | None = None):
        names = check_report_to(report_to)
        self.out = Path(output_dir)
        self.jsonl = JSONL in names
        self.trackers: list = []
        self._accelerator = accelerator if accelerator is not None and getattr(accelerator, "trackers", None) else None
        self._finished = False
        init_kwargs = init_kwargs or {}
        known = _known()
        for name in names:
            if name == JSONL:
                continue
            if not isinstance(name, str):  # a GeneralTracker instance, already initialised
                self.trackers.append(name)
                continue
            cls = known[name]
            kw = init_kwargs.get(name, {})
            if getattr(cls, "requires_logging_directory", False):
                tracker = cls("tb" if name == "tensorboard" else project, str(self.out), **kw)
            else:
                tracker = cls(project, **kw)
            self.trackers.append(tracker)
        for t in self.trackers:
            if hasattr(t, "start") and not getattr(t, "_jmlr_started", False):
                t.start()
                t._jmlr_started = True
        if config is not None:
            flat = flat_config(config)
            for t in self.trackers:
                t.store_init_configuration(flat)
        if self.trackers:
            atexit.register(self.finish)

    @property
    def names(self) -> list[str]:
        return ([JSONL] if self.jsonl else []) + [getattr(t, "name", type(t).__name__) for t in self.trackers]

    def log(self, row: dict) -> None:
        if self.jsonl:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / METRICS_NAME, "a") as f:
                f.write(json.dumps(row, default=float) + "\n")
        if self._finished or not (self.trackers or self._accelerator):
            return
        vals, step = scalars(row)
        if not vals:
            return
        for t in self.trackers:
            t.log(vals, step=step)
        if self._accelerator is not None:  # trackers the caller set up on their own Accelerator
            self._accelerator.log(vals, step=step)

    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        for t in self.trackers:
            try:
                t.finish()
            except Exception as e:  # pragma: no cover - a tracker failing to close must not hide the run's result
                logger.warning("tracker %s did not close cleanly: %s", getattr(t, "name", t), e)


def start_trackers(report_to: Any, output_dir: str | Path, config: dict | None = None, **kw) -> RunTrackers:
    """:class:`RunTrackers` for a run folder (see the module docstring)."""
    return RunTrackers(report_to, output_dir, config, **kw)


__all__ = ["RunTrackers", "start_trackers", "check_report_to", "parse_report_to", "TrackerUnavailableError",
           "available_trackers", "scalars", "flat_config", "PACKAGES"]
