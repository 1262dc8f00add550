"""What a joint run cost: step times, tokens through each model, evaluation time, and a FLOPs estimate."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["RunCosts"]


@dataclass
class RunCosts:
    """What a run cost: the numbers every summary reports."""
    step_times: list[float] = field(default_factory=list)
    reader_tokens: int = 0
    retriever_tokens: int = 0
    eval_s: float = 0.0

    def summary(self, reader_params: int, retriever_params: int, refresh_stats: dict,
                retriever_trains: bool = True) -> dict:
        """Training FLOPs estimated as 6·N·tokens (forward + backward), 2·N·tokens for a frozen retriever."""
        st = self.step_times
        flops = 6 * reader_params * self.reader_tokens + (6 if retriever_trains else 2) * retriever_params * \
            self.retriever_tokens
        return {
            "steps": len(st),
            "step_time_mean_s": float(np.mean(st)) if st else 0.0,
            "step_time_p50_s": float(np.median(st)) if st else 0.0,
            "train_s": float(np.sum(st)),
            "eval_s": self.eval_s,
            "reader_tokens": self.reader_tokens,
            "retriever_tokens": self.retriever_tokens,
            "train_flops_est": float(flops),
            "refresh": refresh_stats,
        }
