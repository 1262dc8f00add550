"""Joint retriever+reader losses, one class per file, registered by name.

Every loss is an ``nn.Module`` called as ``loss(scores (B, K), loglik (B, K), *, mask=None, **extras)``
and returns a scalar tensor. Its ``needs`` (a :class:`ReaderNeeds`) says which reader outputs go into that
call; see :mod:`jmlr.losses.base` for the shared contract and ``docs/losses.md`` for the formulas.

>>> from jmlr.losses import get_loss
>>> loss_fn = get_loss("rag_sequence", temperature=0.5)
"""
from __future__ import annotations

import difflib
import inspect

from .base import JointLoss, ReaderNeeds
from .distillation import DistillationLoss
from .emdr2 import EMDR2Loss
from .jmlr_rank import JMLRRankLoss
from .loop import LeaveOneOutLoss
from .lsr import LSRLoss
from .pdist import PerplexityDistillationLoss
from .rag_sequence import RAGSequenceLoss
from .rag_token import RAGTokenLoss

__all__ = [
    "LOSSES",
    "get_loss",
    "JointLoss",
    "ReaderNeeds",
    "DistillationLoss",
    "RAGSequenceLoss",
    "RAGTokenLoss",
    "JMLRRankLoss",
    "PerplexityDistillationLoss",
    "EMDR2Loss",
    "LSRLoss",
    "LeaveOneOutLoss",
]

LOSSES: dict[str, type[JointLoss]] = {
    cls.name: cls
    for cls in (
        RAGSequenceLoss,
        RAGTokenLoss,
        JMLRRankLoss,
        PerplexityDistillationLoss,
        EMDR2Loss,
        LSRLoss,
        LeaveOneOutLoss,
    )
}


def get_loss(name: str, **kwargs) -> JointLoss:
    """Build the loss registered as ``name`` with its keyword arguments.

    Names are matched case-insensitively, with ``-`` and ``_`` treated alike (``"RAG-sequence"`` works).
    An unknown name raises ``ValueError`` listing the known ones and suggesting the closest; an unknown
    keyword raises ``ValueError`` listing the loss's parameters.
    """
    if not isinstance(name, str):
        raise ValueError(f"loss name must be a string, got {type(name).__name__}; known: {', '.join(LOSSES)}")
    key = name.strip().lower().replace("-", "_")
    if key not in LOSSES:
        close = difflib.get_close_matches(key, list(LOSSES), n=1, cutoff=0.4)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown loss {name!r}.{hint} Known losses: {', '.join(sorted(LOSSES))}")
    cls = LOSSES[key]
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        hints = []
        for k in unknown:
            c = difflib.get_close_matches(k, params, n=1)
            hints.append(f"{k!r}" + (f" (did you mean {c[0]!r}?)" if c else ""))
        raise ValueError(
            f"loss {key!r} got unknown argument(s) {', '.join(hints)}; it accepts: {', '.join(params) or 'none'}"
        )
    return cls(**kwargs)
