"""The compiled kernels' build folder is keyed by the source bytes, not the checkout path."""
from __future__ import annotations

from jmlr.kernels.topk._common import staged_sources


def _checkout(root, text):
    src = root / "kernels" / "topk_cpu.cpp"
    src.parent.mkdir(parents=True)
    src.write_text(text)
    return src


def test_two_checkouts_of_the_same_source_share_one_build_folder(tmp_path):
    a = _checkout(tmp_path / "checkout-a", "int f() { return 1; }\n")
    b = _checkout(tmp_path / "checkout-b", "int f() { return 1; }\n")
    dir_a, [staged_a] = staged_sources(tmp_path / "cache", "ext", [a], ["-O3"])
    dir_b, [staged_b] = staged_sources(tmp_path / "cache", "ext", [b], ["-O3"])
    assert dir_a == dir_b and staged_a == staged_b  # the same path given to the compiler: no rebuild
    assert staged_a.startswith(str(dir_a)) and open(staged_a).read() == "int f() { return 1; }\n"


def test_a_changed_source_or_flag_builds_elsewhere(tmp_path):
    a = _checkout(tmp_path / "a", "int f() { return 1; }\n")
    b = _checkout(tmp_path / "b", "int f() { return 2; }\n")
    base, _ = staged_sources(tmp_path / "cache", "ext", [a], ["-O3"])
    other_src, _ = staged_sources(tmp_path / "cache", "ext", [b], ["-O3"])
    other_flags, _ = staged_sources(tmp_path / "cache", "ext", [a], ["-O2"])
    assert len({base, other_src, other_flags}) == 3
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted({base.name, other_src.name,
                                                                             other_flags.name})
