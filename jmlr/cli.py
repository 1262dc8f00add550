"""The ``jmlr`` command. Each subcommand imports what it needs lazily, so ``jmlr --help`` is instant."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

EPILOG = """examples:
  jmlr demo --quick                          joint training on the bundled demo data, offline
  jmlr train --config jmlr/configs/demo_full.yaml optim.steps=50 loss.name=jmlr_rank
  jmlr eval --run runs/demo/joint --data test.jsonl --format medqa [--no-retrieval]
  jmlr index build --corpus corpus.jsonl --encoder minilm --out idx/ --type hnsw
  jmlr index search --index idx/ --query "first-line drug for ..." -k 5
  jmlr eval retrieval --index idx/ --data medmcqa.json --format medmcqa
  jmlr data inspect us_4options_test.jsonl --format medqa
  jmlr bench topk --quick --out bench/
  jmlr --debug train ...                     any command: show the traceback of an error
"""


class NotBuiltYet(RuntimeError):
    """A capability of the CLI that is not implemented yet."""


def _not_built(what: str):
    def run(args) -> int:
        print(f"jmlr: '{what}' is not built yet in this version of jmlr.", file=sys.stderr)
        return 3
    return run


def _try_add(module: str, subparsers, fallback_name: str | None = None, help: str = "") -> bool:
    """Let a part register its own subcommands through ``add_cli(subparsers)``."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (e.name == module or module.startswith(e.name + ".")):
            if fallback_name:
                p = subparsers.add_parser(fallback_name, help=help + " (not built yet)")
                p.set_defaults(func=_not_built(fallback_name), _accepts_unknown=True)
            return False
        raise
    mod.add_cli(subparsers)
    return True


# ------------------------------------------------------------------------------------------- data

def _cmd_data_inspect(args) -> int:
    from jmlr.data import format_summary, inspect_summary, load_qa

    from jmlr.data.hf import parse_mapping

    kw = {"mapping": parse_mapping(args.hf_mapping)} if args.hf_mapping else {}
    examples = load_qa(args.format, args.file, **kw)
    print(format_summary(inspect_summary(examples)))
    return 0


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="inspect QA files and corpora",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  jmlr data inspect us_4options_test.jsonl --format medqa\n"
                              "  jmlr data inspect mmlu_medical/ --format mmlu\n"
                              "  jmlr data inspect medmcqa_hf/ --format hf --hf-mapping question=question "
                              "--hf-mapping options=opa,opb,opc,opd --hf-mapping answer=label\n")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    q = dsub.add_parser("inspect", help="count examples, option-count histogram, one example")
    q.add_argument("file", help="QA file (or folder of CSVs for mmlu)")
    q.add_argument("--format", required=True,
                   help="jmlr, medqa, amboss, medmcqa, mmlu, pubmedqa, huatuo, jsonl, hf (a save_to_disk folder)")
    q.add_argument("--hf-mapping", action="append", default=[], metavar="FIELD=COLUMN",
                   help="QA field from a column for jsonl/hf: question=q, options=opa,opb,opc,opd, answer=label")
    q.set_defaults(func=_cmd_data_inspect)


# ------------------------------------------------------------------------------------------- bench

BENCHMARKS = {"topk": "topk.py", "refresh": "refresh.py", "joint": "joint_vs_separate.py",
              "demo-baselines": "demo_baselines.py", "retrieval-real": "retrieval_real.py",
              "corpus-memory": "corpus_memory.py", "index-scale": "index_scale.py",
              "encode-throughput": "encode_throughput.py", "refresh-budget": "refresh_budget.py"}


def _cmd_bench(args) -> int:
    import runpy

    root = Path(__file__).resolve().parent.parent / "benchmarks"
    script = root / BENCHMARKS[args.name]
    if not script.is_file():
        print(f"jmlr: benchmark '{args.name}' needs the source checkout ({script} not found); "
              "clone the repository to run benchmarks", file=sys.stderr)
        return 3
    sys.argv = [str(script)] + args.rest
    sys.path.insert(0, str(root.parent))
    runpy.run_path(str(script), run_name="__main__")
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark (writes JSON, a markdown table and a PNG)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  jmlr bench topk --quick --out bench/\n"
                              "  jmlr bench refresh --quick --out bench/\n  jmlr bench joint --quick --out bench/\n")
    p.add_argument("name", choices=sorted(BENCHMARKS))
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments passed to the benchmark script")
    p.set_defaults(func=_cmd_bench)


# ------------------------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jmlr", description="Joint training of a dense retriever and an LLM reader for medical QA.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.add_argument("--version", action="version", version=f"jmlr {importlib.import_module('jmlr').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _try_add("jmlr.demo", sub, "demo", "joint training on the bundled demo data, offline")
    _try_add("jmlr.train.cli", sub, "train", "joint training from a YAML config")
    _try_add("jmlr.eval.cli", sub, "eval", "evaluate a run: MCQ accuracy, retrieval metrics")
    _try_add("jmlr.index.cli", sub, "index", "build and search an index over a corpus")
    _add_bench(sub)
    _add_data(sub)
    _try_add("jmlr.train.stages.cli", sub)
    return parser


_HUB_ERRORS = ("OfflineModeIsEnabled", "LocalEntryNotFoundError", "RepositoryNotFoundError", "GatedRepoError",
               "RevisionNotFoundError", "EntryNotFoundError", "HFValidationError")
_CORRUPT_ERRORS = ("SafetensorError", "UnpicklingError", "BadZipFile", "JSONDecodeError", "HeaderTooLarge")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def describe_error(e: BaseException) -> tuple[str, int] | None:
    """``(one line, exit code)`` for an error a user can fix, or None for a bug (shown with its type).

    Exit codes: 2 bad input, config or run folder (also a busy folder); 1 the environment (disk, hub,
    permissions, corrupt files).
    """
    from jmlr.core.fs import describe_os_error

    names = {c.__name__ for c in type(e).__mro__}
    if names & set(_HUB_ERRORS):
        return (f"{_first_line(e)}; the model is neither a local folder nor available offline: check the name or "
                "path, or download it first (HF_HUB_OFFLINE=1 forbids downloads)", 1)
    if names & set(_CORRUPT_ERRORS):
        return f"a file could not be read, it is truncated or corrupt ({type(e).__name__}: {_first_line(e)})", 1
    if isinstance(e, (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)) and e.errno is None:
        return _first_line(e), 2
    if isinstance(e, OSError):
        msg = describe_os_error(e)
        if "is not a local folder and is not a valid model identifier" in msg or "couldn't connect" in msg:
            return f"{msg}; check the name or path (offline: only local folders and bundled aliases load)", 1
        return msg, 2 if isinstance(e, FileNotFoundError) else 1
    if isinstance(e, (ValueError, KeyError)) or type(e).__module__.startswith("jmlr"):
        return _first_line(e) if not isinstance(e, KeyError) else str(e), 2
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the ``jmlr`` command. Every error is one line on stderr; ``--debug`` (or ``JMLR_DEBUG=1``) re-raises
    it with its traceback."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("JMLR_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "_accepts_unknown", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        described = describe_error(e)
        if described is None:
            print(f"jmlr {args.command}: error: {type(e).__name__}: {_first_line(e)} (an unexpected error; rerun "
                  "with --debug for the traceback and report it)", file=sys.stderr)
            return 1
        msg, code = described
        print(f"jmlr {args.command}: error: {msg}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
