"""``curves.png`` of a joint run: loss, dev accuracy and Recall@k, and the index version, against the step.

:func:`plot_loss` (the raw loss plus a moving mean) is the panel ``jmlr demo`` draws too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

CURVES_NAME = "curves.png"


def plot_loss(ax, steps: Sequence[int], losses: Sequence[float], title: str = "loss") -> None:
    """Raw loss (faint) and its moving mean (window ``max(n // 10, 3)``, from 5 points on)."""
    import numpy as np

    ax.plot(steps, losses, alpha=0.35, label="loss")
    if len(losses) >= 5:
        w = max(len(losses) // 10, 3)
        sm = np.convolve(losses, np.ones(w) / w, mode="valid")
        ax.plot(list(steps)[w - 1:], sm, label=f"moving mean ({w})")
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.legend()


def plot_curves(history: Sequence[dict], evals: Sequence[dict], path: str | Path, *, loss_name: str = "",
                split: str = "dev") -> Path:
    """Three panels from a trainer's ``history`` (one row per step) and ``evals`` (one dict per evaluation):
    the loss (refreshes marked), ``split`` accuracy and Recall@k against the step, and the index version.
    Written with the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    plot_loss(axes[0], steps, [h["loss"] for h in history], f"joint loss ({loss_name})" if loss_name else "joint loss")
    versions = [h.get("index_version", 0) for h in history]
    for i in range(1, len(versions)):
        if versions[i] != versions[i - 1]:
            axes[0].axvline(steps[i], color="grey", lw=0.6, ls=":")
    ev = sorted((e for e in evals if e.get("split") == split and e.get("retrieval", True)), key=lambda e: e["step"])
    ax = axes[1]
    if ev:
        xs = [e["step"] for e in ev]
        ax.plot(xs, [e["accuracy"] for e in ev], "o-", label="accuracy")
        ks = sorted({int(k.split("@")[1]) for e in ev for k in e if k.startswith("recall@")})
        for k in ks:
            ax.plot(xs, [e.get(f"recall@{k}", float("nan")) for e in ev], "s--", label=f"Recall@{k}")
        ax.set_ylim(0, 1)
        ax.legend()
    else:
        ax.text(0.5, 0.5, f"no {split} evaluations", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_title(f"{split} accuracy and Recall@k")
    axes[2].step(steps, versions, where="post")
    from matplotlib.ticker import MaxNLocator

    axes[2].yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].set_xlabel("step")
    axes[2].set_title("index version")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
