"""``optim.max_time_s``: stop the training loop before a step would end past a wall-clock budget.

The rule is Lightning's ``max_time`` made predictive: before each step, the loop asks whether the time spent so
far plus the expected cost of one more step (the median of the last steps, which already include refresh stalls
and periodic evaluations only when those happened inside a step) stays within the budget. The first step always
runs, since nothing has been measured yet. Under torchrun every rank must stop at the same step (the steps are
collectives), so the ranks agree: one rank out of time stops them all.

The schedule is still planned for ``optim.steps``: a run stopped early ends with the learning rate where it was.
Use a constant schedule (``optim.schedule=constant``) when the budget, not the step count, decides the length.

>>> clock = iter([0.0, 5.0, 9.0]).__next__
>>> b = TimeBudget(10.0, clock=clock)
>>> b.begin()
>>> b.allows_next([])              # the first step always runs
True
>>> b.allows_next([4.0])           # 5 s spent + 4 s expected <= 10 s
True
>>> b.allows_next([4.0, 4.0])      # 9 s spent + 4 s expected > 10 s: stop
False
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import torch

from jmlr.index.sharded import collective_device


class TimeBudget:
    """The stop rule of ``optim.max_time_s`` (``max_time_s`` 0 or None: no limit)."""

    def __init__(self, max_time_s: float | None, clock: Callable[[], float] = time.perf_counter, window: int = 5):
        self.limit = float(max_time_s or 0.0)
        if self.limit < 0:
            raise ValueError(f"optim.max_time_s must be >= 0 (0 = no limit), got {max_time_s}")
        self.clock = clock
        self.window = int(window)
        self.start: float | None = None
        self.stopped_at: int | None = None

    def begin(self) -> None:
        self.start = self.clock()

    def elapsed(self) -> float:
        return 0.0 if self.start is None else self.clock() - self.start

    def allows_next(self, step_times: Sequence[float]) -> bool:
        """True when one more step is expected to end within the budget (always True without a limit)."""
        if not self.limit:
            return True
        if self.start is None:
            raise RuntimeError("TimeBudget.begin() was not called")
        if not step_times:
            return True
        expected = float(np.median(np.asarray(step_times[-self.window:], dtype=np.float64)))
        return self.elapsed() + expected <= self.limit

    def as_dict(self, planned_steps: int) -> dict:
        return {"max_time_s": self.limit, "planned_steps": int(planned_steps), "stopped_at_step": self.stopped_at,
                "elapsed_s": self.elapsed()}


def all_ranks_agree(ok: bool, device: torch.device | str | None = None) -> bool:
    """``ok`` on every rank (a MIN all-reduce on the process group's device), or ``ok`` itself in one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return bool(ok)
    t = torch.tensor([1 if ok else 0], dtype=torch.int32, device=collective_device(prefer=device))
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())
