"""When the :class:`~jmlr.index.refresh.AsyncRefresher` refreshes: the refresh policies.

A policy answers, between steps, ``due(step, refresher) -> reason or None``. Built directly from a training
config with :func:`policy_from_config` (``refresh.every``, ``refresh.schedule``, ``refresh.staleness_threshold``,
``refresh.check_every``), or from a spec string with :func:`parse_policy` (the ``policy=`` argument of the
refresher): ``"every:500"`` (or ``500``), a schedule ``"0-1000:500,1000-:1000"`` (interval per step range), a
staleness trigger ``"recall<0.9@50"`` / ``"cosine<0.98@50"`` (measured on the probe set every 50 steps),
combinations with ``|``, or ``"never"``. ``str(policy)`` writes a policy back as such a spec.

>>> parse_policy("0-1000:500,1000-:1000")
Schedule(ranges=[(0, 1000, 500), (1000, None, 1000)])
>>> str(parse_policy("every:200|recall<0.9@20"))
'every:200|recall<0.9@20'
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field


class RefreshPolicy:
    """Decides, between steps, whether a refresh is due. ``due`` returns a reason string or None; ``refresher``
    is the :class:`~jmlr.index.refresh.AsyncRefresher` asking (its ``last_trigger_step`` and ``staleness()``)."""

    def due(self, step: int, refresher) -> str | None:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class Never(RefreshPolicy):
    """Never refresh (e.g. query-side-only training)."""

    def due(self, step, refresher):
        return None

    def __str__(self) -> str:
        return "never"


def _grid_due(step: int, start: int, interval: int, last_trigger: int) -> bool:
    """Due when the latest grid point ``start + j * interval <= step`` (not step 0) is after the last trigger;
    a refresh still in flight at a grid point starts at the first call after it."""
    g = start + (step - start) // interval * interval
    return g > 0 and g > last_trigger


@dataclass
class EveryN(RefreshPolicy):
    """Refresh at steps n, 2n, 3n, ..."""

    n: int

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"refresh interval must be >= 1 step, got {self.n}")

    def due(self, step, refresher):
        return f"every {self.n}" if _grid_due(step, 0, self.n, refresher.last_trigger_step) else None

    def __str__(self) -> str:
        return f"every:{self.n}"


@dataclass
class Schedule(RefreshPolicy):
    """Interval per step range ``[(start, end or None, interval), ...]``: refreshes at ``start + j * interval``
    inside each range (``"0-1000:500,1000-:1000"`` gives 500, 1000, 2000, ...); no refresh outside the ranges."""

    ranges: list[tuple[int, int | None, int]]

    def range_of(self, step: int) -> tuple[int, int | None, int] | None:
        for a, b, r in self.ranges:
            if step >= a and (b is None or step < b):
                return a, b, r
        return None

    def due(self, step, refresher):
        rng = self.range_of(step)
        if rng is None:
            return None
        a, _, r = rng
        return f"schedule {r}" if _grid_due(step, a, r, refresher.last_trigger_step) else None

    def __str__(self) -> str:
        return ",".join(f"{a}-{'' if b is None else b}:{r}" for a, b, r in self.ranges)


@dataclass
class StalenessTrigger(RefreshPolicy):
    """Measure staleness every ``check_every`` steps; refresh when recall or cosine falls below a floor."""

    min_recall: float | None = None
    min_cosine: float | None = None
    check_every: int = 50
    _last_check: int = field(default=-(10 ** 12), repr=False)

    def due(self, step, refresher):
        if step - self._last_check < self.check_every:
            return None
        self._last_check = step
        st = refresher.staleness()
        if self.min_recall is not None and st["recall"] < self.min_recall:
            return f"recall@{st['k']} {st['recall']:.3f} < {self.min_recall}"
        if self.min_cosine is not None and st["cosine"] < self.min_cosine:
            return f"cosine {st['cosine']:.4f} < {self.min_cosine}"
        return None

    def __str__(self) -> str:
        floors = [f"{name}<{v}@{self.check_every}" for name, v in (("recall", self.min_recall),
                                                                   ("cosine", self.min_cosine)) if v is not None]
        return "|".join(floors) or "never"


@dataclass
class AnyOf(RefreshPolicy):
    """Due when any of the policies is due."""

    policies: list[RefreshPolicy]

    def due(self, step, refresher):
        for p in self.policies:
            r = p.due(step, refresher)
            if r:
                return r
        return None

    def __str__(self) -> str:
        return "|".join(str(p) for p in self.policies)


_GRAMMAR = ("expected 'never', an interval ('500' or 'every:500'), a schedule ('0-1000:500,1000-:1000'), "
            "a staleness trigger ('recall<0.9@50', 'cosine<0.98@20'), or several joined by '|'")


def parse_policy(spec) -> RefreshPolicy:
    """Build a :class:`RefreshPolicy` from a spec string, an int (every N), None (never), or a policy (any
    object with ``due(step, refresher) -> reason or None``)."""
    if isinstance(spec, RefreshPolicy) or callable(getattr(spec, "due", None)):
        return spec
    if spec is None or spec is False:
        return Never()
    if isinstance(spec, int):
        return EveryN(spec) if spec > 0 else Never()
    if not isinstance(spec, str):
        raise ValueError(f"refresh policy {spec!r}: {_GRAMMAR}")
    s = spec.replace(" ", "").lower()
    if "|" in s:
        return AnyOf([parse_policy(p) for p in s.split("|")])
    if s in ("never", "none", "off", "0", ""):
        return Never()
    m = re.fullmatch(r"(?:every:)?(\d+)", s)
    if m:
        return EveryN(int(m.group(1)))
    m = re.fullmatch(r"(recall|cosine)<([0-9.]+)(?:@(\d+))?", s)
    if m:
        floor, every = float(m.group(2)), int(m.group(3) or 50)
        return (StalenessTrigger(min_recall=floor, check_every=every) if m.group(1) == "recall"
                else StalenessTrigger(min_cosine=floor, check_every=every))
    if ":" in s and "-" in s:
        ranges = []
        for part in s.split(","):
            m = re.fullmatch(r"(\d+)-(\d*):(\d+)", part)
            if not m:
                raise ValueError(f"refresh schedule {spec!r}: part {part!r} is not START-END:INTERVAL "
                                 "(END may be empty for 'until the end')")
            a, b, r = int(m.group(1)), int(m.group(2)) if m.group(2) else None, int(m.group(3))
            if r < 1 or (b is not None and b <= a):
                raise ValueError(f"refresh schedule {spec!r}: part {part!r} needs END > START and INTERVAL >= 1")
            ranges.append((a, b, r))
        return Schedule(ranges)
    raise ValueError(f"refresh policy {spec!r}: {_GRAMMAR}")


def staleness_check_every(cfg) -> int:
    """The steps between staleness checks of a :class:`~jmlr.config.RefreshConfig`: ``refresh.check_every``,
    or when it is empty half of ``refresh.every`` (25 when ``every`` is 0), at least 1."""
    if getattr(cfg, "check_every", None) is not None:
        return int(cfg.check_every)
    return max(int(cfg.every or 50) // 2, 1)


def policy_from_config(cfg) -> RefreshPolicy:
    """The refresh policy of a :class:`~jmlr.config.RefreshConfig`, built from its fields.

    ``refresh.schedule`` (a spec, parsed once) wins over ``refresh.every``; ``refresh.staleness_threshold`` adds
    a Recall@k floor checked every :func:`staleness_check_every` steps; nothing set is :class:`Never`.

    >>> from jmlr.config import RefreshConfig
    >>> policy_from_config(RefreshConfig(every=100, staleness_threshold=0.9))
    AnyOf(policies=[EveryN(n=100), StalenessTrigger(min_recall=0.9, min_cosine=None, check_every=50)])
    """
    parts: list[RefreshPolicy] = []
    if cfg.schedule:
        parts.append(parse_policy(cfg.schedule))
    elif cfg.every:
        parts.append(EveryN(int(cfg.every)))
    if cfg.staleness_threshold is not None:
        parts.append(StalenessTrigger(min_recall=float(cfg.staleness_threshold),
                                      check_every=staleness_check_every(cfg)))
    if not parts:
        return Never()
    return parts[0] if len(parts) == 1 else AnyOf(parts)
