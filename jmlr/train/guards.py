"""Non-finite guards of the joint trainer: a step whose loss or gradient is NaN/inf is never applied silently
(``optim.nonfinite``), and weights holding NaN/inf are never checkpointed."""
from __future__ import annotations

import logging
import math

import torch

logger = logging.getLogger("jmlr.train.trainer")

__all__ = ["NonFiniteError", "check_finite_weights", "NonFiniteGuardMixin"]


class NonFiniteError(RuntimeError):
    """A NaN/inf loss, gradient or weight that the ``optim.nonfinite`` policy does not let through."""


def check_finite_weights(modules: dict, folder) -> None:
    """Raise :class:`NonFiniteError` naming the first parameter that holds NaN/inf (no checkpoint from it)."""
    for prefix, module in modules.items():
        for name, p in module.named_parameters():
            t = p.detach()
            t = t.to_local() if hasattr(t, "to_local") else t  # FSDP: this rank's shard (the ranks agree after)
            if not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise NonFiniteError(f"refusing to write checkpoint {folder}: parameter {prefix}.{name} holds {bad} "
                                     "NaN/inf values; earlier checkpoints are kept (optim.nonfinite=skip stops "
                                     "such updates)")


class NonFiniteGuardMixin:
    """``_guard_nonfinite`` of the joint trainer (counters ``nonfinite_skipped`` and ``_nonfinite_run``)."""

    def _guard_nonfinite(self, loss: float, stats: dict) -> bool:
        """Apply ``optim.nonfinite`` to this step's loss and gradients; True when the update is dropped.

        ``skip`` sets every gradient to None (AdamW then leaves weights and moments untouched), counts the step
        and raises :class:`NonFiniteError` after more than ``optim.max_nonfinite_skips`` in a row; ``raise``
        raises at once; ``ignore`` applies the step. Every rank takes the same decision.
        """
        oc = self.cfg.optim
        if oc.nonfinite == "ignore":
            return False
        norm = stats.get("grad_norm")
        if norm is None and getattr(self, "sharded", False):
            norm = float(self._sharded_grad_norm())
        elif norm is None:
            grads = [p.grad for g in self.optim.param_groups for p in g["params"] if p.grad is not None]
            norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
        bad = torch.tensor(0.0 if math.isfinite(loss) and math.isfinite(norm) else 1.0, device=self.device)
        if self.world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if not bad.item():
            self._nonfinite_run = 0
            return False
        step = self.step + 1
        what = f"step {step}: loss {loss}, gradient norm {norm}"
        hint = ("lower retriever.lr / reader.lr, keep optim.max_grad_norm > 0, or check the data of this step; "
                "optim.nonfinite=skip|raise|ignore sets the policy")
        if oc.nonfinite == "raise":
            raise NonFiniteError(f"non-finite loss or gradient at {what} (optim.nonfinite=raise); {hint}")
        self._nonfinite_run += 1
        self.nonfinite_skipped += 1
        if self._nonfinite_run > oc.max_nonfinite_skips:
            raise NonFiniteError(f"{self._nonfinite_run} steps in a row had a non-finite loss or gradient (last: "
                                 f"{what}), more than optim.max_nonfinite_skips={oc.max_nonfinite_skips}; {hint}")
        logger.warning("non-finite loss or gradient at %s: update skipped (%d in a row, %d in all; optim.nonfinite"
                       "=skip)", what, self._nonfinite_run, self.nonfinite_skipped)
        self.optim.zero_grad(set_to_none=True)
        stats["skipped"] = 1
        stats["nonfinite_skipped"] = self.nonfinite_skipped
        return True
