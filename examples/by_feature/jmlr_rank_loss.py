"""Feature: JMLR's LLM-rank loss (RankNet over m docs sampled from softmax(s), plus reader NLL on the
top docs concatenated) instead of the default RAG-sequence marginal likelihood.

    python examples/by_feature/jmlr_rank_loss.py --quick
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from train_medqa import build_parser, run  # noqa: E402

if __name__ == "__main__":
    run(build_parser(__doc__).parse_args(), ["loss.name=jmlr_rank"])
