"""Feature: data-parallel joint training on several processes (DDP over both towers and the reader;
the index is sharded over the ranks).

    torchrun --nproc_per_node 2 examples/by_feature/distributed.py --quick
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from train_medqa import build_parser, run  # noqa: E402

if __name__ == "__main__":
    out = run(build_parser(__doc__).parse_args())
    t = out["trainer"]
    print(f"rank {t.rank}/{t.world}: final loss {out['summary']['final_loss']:.4f}")
