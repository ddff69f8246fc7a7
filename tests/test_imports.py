"""nwa's import graph: acyclic, every module imports in a fresh interpreter, layers respected."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nwa"


def modules() -> dict[str, tuple[Path, bool]]:
    """Every module of nwa: dotted name -> (file, is a package)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def imports_of(name: str, path: Path, is_package: bool, known: set[str]) -> set[str]:
    """The nwa modules ``name`` imports anywhere in its body (also inside functions: an import
    deferred to call time still ties the two modules together), except under ``TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            # ``from nwa.x import y``: y may be a submodule or a name in nwa.x
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, *found[name], set(found)) for name in found}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: strongly connected components with more than one module."""
    cycles = []
    while True:
        try:
            graphlib.TopologicalSorter(graph).prepare()
            return cycles
        except graphlib.CycleError as e:
            cycle = e.args[1]
            cycles.append(cycle)
            # drop one edge of this cycle and look for the next
            graph = {k: set(v) for k, v in graph.items()}
            graph[cycle[1]].discard(cycle[0])


def test_imports_are_acyclic():
    cycles = strongly_connected(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


# what each layer may not import: pure weight code knows nothing of zoos, data or training
FORBIDDEN = {
    "nwa.weights": ("nwa.zoo", "nwa.data", "nwa.lit", "nwa.tasks", "nwa.eval", "nwa.cli"),
    "nwa.metanets": ("nwa.zoo", "nwa.data", "nwa.lit", "nwa.tasks", "nwa.eval", "nwa.cli"),
    "nwa.zoo": ("nwa.data", "nwa.lit", "nwa.eval", "nwa.cli"),
}


def test_layers_import_only_what_is_below_them():
    for name, deps in import_graph().items():
        for layer, forbidden in FORBIDDEN.items():
            if name == layer or name.startswith(layer + "."):
                bad = sorted(d for d in deps if d.startswith(forbidden))
                assert not bad, f"{name} imports {bad}"


def test_weights_and_metanets_import_neither_lightning_nor_wandb():
    for path in [*(PACKAGE / "weights").rglob("*.py"), *(PACKAGE / "metanets").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            for n in names:
                assert n.split(".")[0] not in ("lightning", "pytorch_lightning", "wandb"), path


def imported_names() -> list[str]:
    """``module:name`` of every ``from nwa... import name`` in nwa, deferred ones included."""
    found = set()
    for name, (path, is_package) in modules().items():
        package = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                if base == "nwa" or base.startswith("nwa."):
                    found.update(f"{base}:{alias.name}" for alias in node.names)
    return sorted(found)


CHECK = """
import importlib, sys
modules, names = sys.argv[1].split(), sys.argv[2].split()
for m in modules:
    importlib.import_module(m)
for entry in names:
    module, name = entry.split(":")
    if not hasattr(importlib.import_module(module), name):
        importlib.import_module(f"{module}.{name}")  # a submodule, else ModuleNotFoundError
"""


@pytest.mark.slow
def test_every_module_and_imported_name_exists_in_a_fresh_interpreter():
    """Every module imports, in one fresh interpreter, and every name imported from an nwa
    module exists: an import deferred into a function fails only when that function runs."""
    names = sorted(n for n in modules() if not n.endswith("__main__"))
    done = subprocess.run(
        [sys.executable, "-c", CHECK, " ".join(names), " ".join(imported_names())],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]


# declared for a library that imports them by name, not for an import in nwa
INDIRECT = {"tabulate": "pandas' DataFrame.to_markdown", "pyarrow": "pandas' parquet engine"}


def test_every_declared_dependency_is_used():
    import configparser
    import importlib.metadata
    import re

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    declared = [
        re.split(r"[<>=!\[; ]", line.strip())[0].lower().replace("_", "-")
        for line in cfg["options"]["install_requires"].splitlines()
        if line.strip()
    ]
    modules_of: dict[str, set[str]] = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            modules_of.setdefault(dist.lower().replace("_", "-"), set()).add(module)
    imported = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    unused = [
        dist
        for dist in declared
        if dist not in INDIRECT and not (modules_of.get(dist, {dist}) & imported)
    ]
    assert not unused, f"declared in setup.cfg but imported nowhere in nwa: {unused}"
