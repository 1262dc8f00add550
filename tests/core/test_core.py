"""jmlr.core: atomic_file (the one file write), seeding, the config field helper and the cache folder."""
import dataclasses
import gzip
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from jmlr.core.fields import config_field
from jmlr.core.fs import atomic_file, write_text_atomic
from jmlr.core.paths import cache_dir
from jmlr.core.seed import seed_everything


def test_atomic_file_replaces_in_one_step_and_fsyncs(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "rows.txt.gz"
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))
    with atomic_file(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".rows.txt.gz.tmp-") and not target.exists()
        with gzip.open(tmp, "wt") as f:
            f.write("a\nb\n")
    assert gzip.open(target, "rt").read() == "a\nb\n"
    assert [p.name for p in target.parent.iterdir()] == ["rows.txt.gz"]  # no temporary left
    names = {Path(p).name for p in synced}
    assert target.parent.name in names and any(n.startswith(".rows.txt.gz.tmp-") for n in names), synced


def test_a_failed_atomic_write_leaves_the_old_file(tmp_path):
    target = write_text_atomic(tmp_path / "a.json", "old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_seed_everything_repeats_every_generator():
    def draw():
        return random.random(), float(np.random.rand()), torch.rand(3).tolist()

    seed_everything(123)
    first = draw()
    seed_everything(123)
    assert draw() == first
    seed_everything(124)
    assert draw() != first


def test_config_field_keeps_help_and_copies_mutable_defaults():
    @dataclasses.dataclass
    class C:
        n: int = config_field(3, "a number")
        tags: list = config_field(["x"], "some tags")

    a, b = C(), C()
    a.tags.append("y")
    assert b.tags == ["x"] and b.n == 3
    assert {f.name: f.metadata["help"] for f in dataclasses.fields(C)} == {"n": "a number", "tags": "some tags"}


def test_cache_dir_follows_jmlr_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("JMLR_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("JMLR_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "jmlr"
