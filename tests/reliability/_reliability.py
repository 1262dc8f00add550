"""Helpers of the reliability tests: tiny data written to files, config overrides, CLI runners.

One file per defect of issue 14 (run-folder and index locks, corpus fingerprints, non-finite steps, config
ranges, run-folder ownership, CLI errors, late failures, housekeeping).
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FRUITS = ["apple", "pear", "plum", "fig", "lime", "kiwi", "date", "lemon"]


def tiny_data(n_questions=12, n_passages=24):
    """A corpus of short passages and MCQs whose answer is stated in one passage each."""
    from jmlr.data import Corpus, Passage, QAExample

    passages = [Passage(id=f"p{i}", title=f"Drug {i}", text=f"Drug {i} is taken with {FRUITS[i % 8]} juice.")
                for i in range(n_passages)]
    qa = []
    for i in range(n_questions):
        right = FRUITS[i % 8]
        opts = [right] + [f for f in FRUITS if f != right][:3]
        options = {L: opts[(i + j) % 4] for j, L in enumerate("ABCD")}
        answer = next(L for L, t in options.items() if t == right)
        qa.append(QAExample(id=f"q{i}", question=f"Which juice goes with drug {i}?", options=options, answer=answer,
                            gold_passage_ids=[f"p{i}"]))
    return Corpus(passages), qa


def write_corpus(path, corpus):
    with open(path, "w") as f:
        for p in corpus:
            f.write(json.dumps({"id": p.id, "title": p.title, "text": p.text}) + "\n")
    return path


def write_qa(path, qa):
    with open(path, "w") as f:
        for ex in qa:
            f.write(json.dumps({"id": ex.id, "question": ex.question, "options": ex.options, "answer": ex.answer,
                                "gold_passage_ids": list(ex.gold_passage_ids)}) + "\n")
    return path


BASE = ["optim.steps=3", "optim.batch_size=2", "index.top_k=3", "eval_every=0", "refresh.every=0",
        "reader.lr=3e-3", "retriever.lr=1e-3", "optim.warmup_steps=0", "optim.precision=fp32", "refresh.probe_size=8"]


def jmlr_cmd(*args):
    return [sys.executable, "-m", "jmlr.cli", *map(str, args)]


def run_jmlr(*args, timeout=300, env=None):
    return subprocess.run(jmlr_cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})})


def hold_lock_in_subprocess(lock_expr: str, timeout: float = 60.0):
    """Start a Python process that takes ``lock_expr`` (a jmlr.core.fs lock) and sleeps; return it once it holds it."""
    code = ("import sys, time\nfrom jmlr.core import fs\n"
            f"lock = {lock_expr}\nlock.acquire()\nprint('locked', flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    t0 = time.monotonic()
    line = proc.stdout.readline()
    if line.strip() != "locked":
        proc.kill()
        raise RuntimeError(f"the lock holder did not start: {line!r} {proc.stderr.read()[-2000:]}")
    assert time.monotonic() - t0 < timeout
    return proc
