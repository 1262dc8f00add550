"""The package's layering, checked on the source (an AST walk, no import of jmlr):

    cli         jmlr/cli.py, every */cli.py, jmlr/demo.py (the ``jmlr demo`` command)
    recipes     jmlr.train (the joint trainer and the stage recipes), jmlr.config (their configuration)
    components  jmlr.data | retriever | index | reader | losses | eval | models
    kernels     jmlr.kernels (the top-level kernels/ folder): imports nothing else of jmlr
    core        jmlr.core (and the package root): imports nothing but core

Rules: an import never points to a higher layer (kernels and core import only themselves); the component
packages import each other without cycles; a private name (``_x``, or a module ``_x``) is not imported from
another package; a function-level import of jmlr (a lazy import, which hides the dependency) is only allowed
in a package ``__init__`` and in cli modules, where it keeps ``import jmlr`` and ``jmlr --help`` cheap.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {"jmlr": ROOT / "jmlr", "jmlr.kernels": ROOT / "kernels"}
LAYERS = {"core": 0, "kernels": 1, "components": 2, "recipes": 3, "cli": 4}
COMPONENTS = ("data", "retriever", "index", "reader", "losses", "eval", "models")

# Known violations, each as (rule, importing module, imported module) -> why it is still here. Empty: every rule
# holds over the whole package, and a stale entry fails the test too, so this can only be refilled on purpose.
ALLOWED: dict[tuple[str, str, str], str] = {}


def module_name(base: str, path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([base, *parts])


def modules() -> dict[str, Path]:
    out = {}
    for base, root in SOURCES.items():
        for path in sorted(root.rglob("*.py")):
            out[module_name(base, path, root)] = path
    return out


def layer(mod: str) -> str:
    parts = mod.split(".")
    if parts[-1] == "cli" or mod == "jmlr.demo":
        return "cli"
    if len(parts) == 1 or parts[1] in ("core", "configs"):  # the root's lazy table; the shipped YAML files
        return "core"
    if parts[1] == "kernels":
        return "kernels"
    if parts[1] in COMPONENTS:
        return "components"
    if parts[1] in ("train", "config", "config_checks"):
        return "recipes"
    raise AssertionError(f"{mod}: no layer assigned; add it to tests/core/test_layering.py")


def package(mod: str) -> str:
    """The top-level package a module belongs to: ``jmlr.index`` for ``jmlr.index.faiss_index``."""
    return ".".join(mod.split(".")[:2])


def imports(mod: str, path: Path) -> list[tuple[str, list[str], bool, int]]:
    """``(imported module, names, at module level, line)`` for every import of jmlr in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(n) for n in tree.body}
    pkg_parts = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "jmlr":
                    out.append((a.name, [], id(node) in top, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[:len(pkg_parts) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "jmlr":
                continue
            names = [a.name for a in node.names]
            mods = modules_cache()
            for n in names:  # `from pkg import submodule` imports that submodule
                if f"{target}.{n}" in mods:
                    out.append((f"{target}.{n}", [], id(node) in top, node.lineno))
            out.append((target, [n for n in names if f"{target}.{n}" not in mods], id(node) in top, node.lineno))
    return out


_MODS: dict[str, Path] = {}


def modules_cache() -> dict[str, Path]:
    if not _MODS:
        _MODS.update(modules())
    return _MODS


def violations(mods: dict[str, Path] | None = None) -> list[tuple[str, str, str, str]]:
    """Every broken rule as ``(rule, importing module, imported module, detail)``."""
    mods = mods or modules_cache()
    found = []
    edges: dict[str, set[str]] = {}
    for mod, path in mods.items():
        src_layer = layer(mod)
        lazy_ok = path.name == "__init__.py" or src_layer == "cli"
        for target, names, top, line in imports(mod, path):
            where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}"
            tgt_layer = layer(target)
            if LAYERS[tgt_layer] > LAYERS[src_layer] or (
                    src_layer in ("core", "kernels") and tgt_layer != src_layer):
                found.append(("up", mod, target, f"{where}: {src_layer} imports {tgt_layer}"))
            if package(mod) != package(target):
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                private += [p for p in target.split(".")[1:] if p.startswith("_")]
                if private:
                    found.append(("private", mod, target, f"{where}: imports {', '.join(private)}"))
            if not top and not lazy_ok:
                found.append(("lazy", mod, target, f"{where}: function-level import"))
            if src_layer == tgt_layer == "components" and package(mod) != package(target):
                if ("shim", mod, target) in ALLOWED:
                    found.append(("shim", mod, target, f"{where}: a re-export shim, left out of the cycle check"))
                else:
                    edges.setdefault(package(mod), set()).add(package(target))
    for a, b in sorted(cycles(edges)):
        found.append(("cycle", a, b, f"{a} and {b} import each other (directly or through others)"))
    return found


def cycles(edges: dict[str, set[str]]) -> set[tuple[str, str]]:
    """Pairs ``(a, b)`` of packages on a common cycle (each reaches the other), a < b."""
    def reach(a):
        seen, todo = set(), [a]
        while todo:
            for b in edges.get(todo.pop(), ()):
                if b not in seen:
                    seen.add(b)
                    todo.append(b)
        return seen

    r = {a: reach(a) for a in edges}
    return {(a, b) for a in r for b in r[a] if a < b and a in r.get(b, ())}


def allowed(v: tuple[str, str, str, str]) -> bool:
    rule, mod, target, _ = v
    return (rule, mod, target) in ALLOWED or (rule, mod, "*") in ALLOWED


def test_imports_point_down_without_cycles_or_private_names():
    bad = [v for v in violations() if not allowed(v)]
    assert not bad, "layering violations:\n" + "\n".join(f"  [{r}] {m} -> {t}: {d}" for r, m, t, d in bad)


def test_the_allowlist_holds_only_live_entries():
    """An entry whose violation is gone must leave the allowlist (so it only ever shrinks)."""
    live = {(r, m, t) for r, m, t, _ in violations()} | {(r, m, "*") for r, m, _, _ in violations()}
    stale = sorted(k for k in ALLOWED if k not in live)
    assert not stale, f"remove these ALLOWED entries, they no longer occur: {stale}"


def test_every_module_has_a_layer():
    for mod in modules_cache():
        assert layer(mod) in LAYERS


@pytest.mark.parametrize("source, rule", [
    ("from jmlr.train.trainer import JointTrainer\n", "up"),  # a component importing a recipe
    ("def f():\n    from jmlr.index.base import BaseIndex\n", "lazy"),  # a lazy import outside __init__ / cli
    ("from jmlr.index._worker import process_main\n", "private"),  # a private module of another package
    ("from jmlr.index.base import _REGISTRY\n", "private"),  # a private name of another package
])
def test_a_forbidden_import_is_caught(tmp_path, source, rule):
    """The checker itself: a planted module in jmlr.data that breaks one rule is reported under that rule."""
    planted = tmp_path / "planted.py"
    planted.write_text(source)
    mods = dict(modules_cache())
    mods["jmlr.data.planted"] = planted
    hits = [v for v in violations(mods) if v[1] == "jmlr.data.planted"]
    assert [v[0] for v in hits] == [rule], hits


def test_a_cycle_between_components_is_caught(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("from jmlr.index.base import BaseIndex\n")  # data -> index; index -> data already
    mods = dict(modules_cache())
    mods["jmlr.data.planted"] = planted
    assert ("jmlr.data", "jmlr.index") in {(m, t) for r, m, t, _ in violations(mods) if r == "cycle"}
