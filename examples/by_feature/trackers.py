"""Feature: experiment trackers through accelerate (report_to), and the run's curves.png.

    python examples/by_feature/trackers.py --quick                     # jsonl + an in-process tracker
    python examples/by_feature/trackers.py report_to=[jsonl,tensorboard]   # needs `pip install tensorboard`
    python examples/by_feature/trackers.py report_to=[jsonl,wandb]         # needs `pip install wandb`

A tracker whose package is missing stops the run before any model loads, with the pip command to fix it.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from train_medqa import build_parser, run  # noqa: E402

from accelerate.tracking import GeneralTracker, register_tracker_class  # noqa: E402


class PrintTracker(GeneralTracker):
    """A custom accelerate tracker: prints what it receives (yours could post to any dashboard)."""

    name = "print"
    requires_logging_directory = False

    def __init__(self, run_name: str, **kwargs):
        super().__init__()
        self.run_name, self.count = run_name, 0

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values: dict):
        print(f"[{self.name}] run {self.run_name}: {len(values)} config values, e.g. loss.name={values['loss.name']}")

    def log(self, values: dict, step=None, **kwargs):
        self.count += 1
        shown = {k: round(v, 4) for k, v in values.items() if k.endswith(("loss", "accuracy", "recall@5"))}
        print(f"[{self.name}] step {step}: {shown}")


if __name__ == "__main__":
    register_tracker_class(PrintTracker)  # now "print" is a report_to name, like tensorboard or wandb
    args = build_parser(__doc__).parse_args()
    out = run(args, ["report_to=[jsonl,print]", "eval_every=2"])
    curves = Path(out["trainer"].cfg.output_dir) / "curves.png"
    print(f"report_to: {out['trainer'].cfg.report_to}; wrote {curves} ({curves.stat().st_size} bytes)")
