import argparse
import json
import subprocess
import sys

import pytest

from jmlr import cli


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "jmlr.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("sub", ["demo", "train", "eval", "index", "bench", "data"])
def test_every_subcommand_has_help_with_examples(sub):
    r = run_cli(sub, "--help")
    assert r.returncode == 0, r.stderr
    assert "example" in r.stdout.lower()


def test_top_level_help_lists_subcommands():
    r = run_cli("--help")
    assert r.returncode == 0
    for sub in ("demo", "train", "eval", "index", "bench", "data"):
        assert sub in r.stdout


def _write_medqa(path, lines):
    path.write_text("\n".join(lines) + "\n")


def test_data_inspect_counts_and_histogram(tmp_path):
    f = tmp_path / "q.jsonl"
    rows = [{"question": f"q{i}", "options": {"A": "x", "B": "y", "C": "z", "D": "w", **({"E": "v"} if i % 2 else {})},
             "answer_idx": "B"} for i in range(5)]
    _write_medqa(f, [json.dumps(r) for r in rows])
    r = run_cli("data", "inspect", str(f), "--format", "medqa")
    assert r.returncode == 0, r.stderr
    assert "5" in r.stdout.splitlines()[0]
    assert "4: 3" in r.stdout and "5: 2" in r.stdout


def test_data_inspect_malformed_line_names_it(tmp_path):
    f = tmp_path / "bad.jsonl"
    good = json.dumps({"question": "q", "options": {"A": "x", "B": "y"}, "answer_idx": "A"})
    _write_medqa(f, [good, good, "{not json"])
    r = run_cli("data", "inspect", str(f), "--format", "medqa")
    assert r.returncode != 0
    assert "line 3" in r.stderr and str(f) in r.stderr


def test_unknown_format_is_an_error(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text("{}\n")
    r = run_cli("data", "inspect", str(f), "--format", "nope")
    assert r.returncode != 0 and "nope" in r.stderr


def test_unbuilt_capability_exits_nonzero_and_says_so(capsys):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    assert cli._try_add("jmlr._not_a_module_", sub, "future", "a capability to come") is False
    args = parser.parse_args(["future"])
    assert args.func(args) != 0
    assert "not built yet" in capsys.readouterr().err


def test_public_imports():
    from jmlr import Corpus, DualEncoder, JointTrainer, Reader, TrainConfig, load_qa  # noqa: F401
    import jmlr

    for name in jmlr.__all__:
        assert getattr(jmlr, name) is not None
