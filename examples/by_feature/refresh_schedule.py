"""Feature: a piecewise index-refresh schedule. The doc tower trains, so the index goes stale; it is
re-encoded in the background and swapped in between steps (every 2 steps for the first 4, then every 4).

    python examples/by_feature/refresh_schedule.py --quick
    python examples/by_feature/refresh_schedule.py refresh.schedule=0-1000:200,1000-:500
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from train_medqa import build_parser, run  # noqa: E402

if __name__ == "__main__":
    out = run(build_parser(__doc__).parse_args(), ["refresh.schedule=0-4:2,4-:4", "refresh.asynchronous=true"])
    stats = out["summary"]["costs"]["refresh"]
    print(f"refreshes: {stats.get('count')}, index version {out['test']['index_version']}")
