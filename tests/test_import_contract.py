"""The import contract: hubsdd's modules form layers, each importing only layers below it, and no
import cycle exists anywhere (a function-level import counts: hiding a cycle in a function does not
remove it; imports under ``if __name__ == "__main__":`` do not, they never run on import).

Layers, lowest first: core < stages < pipeline < hub < cli < testing. Inside ``stages`` each stage is
its own unit and a unit never imports another one (a stage never imports another stage).

The rule is declarative: ``LAYERS`` maps a module-name prefix to its layer (and, for stages, its
unit); the longest matching prefix wins. Nothing lists allowed edges.

Each layer is a package (``hubsdd/core``, ``hubsdd/stages``, ...) and each stage a package of its
own (``hubsdd/stages/prune``, ...), so ``LAYERS`` has one line per layer package and one per stage.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ORDER = ("core", "stages", "pipeline", "hub", "cli", "testing")

# prefix -> (layer, unit). Units matter only in the stages layer (one per stage).
LAYERS: dict[str, tuple[str, str | None]] = {
    # the recipe, errors, files, data, models, devices, plug-ins, the stage contract and the records
    "hubsdd.core": ("core", None),
    # one unit per stage: a stage never imports another
    "hubsdd.stages": ("stages", None),  # hubsdd/stages/__init__.py only (a docstring)
    "hubsdd.stages.base": ("stages", "base"),
    "hubsdd.stages.prune": ("stages", "prune"),  # with surgery and the block scorers
    "hubsdd.stages.distill": ("stages", "distill"),
    "hubsdd.stages.finetune": ("stages", "finetune"),
    "hubsdd.stages.merge": ("stages", "merge"),
    "hubsdd.stages.evaluate": ("stages", "evaluate"),
    "hubsdd.stages.card": ("stages", "card"),  # with its Jinja templates
    "hubsdd.pipeline": ("pipeline", None),  # runner, stage records, preflight, the accelerate entry
    "hubsdd.hub": ("hub", None),  # release checks, auth, signing, publish, verify, pull; publishing
    "hubsdd.cli": ("cli", None),  # the command, its console and summary, scaffold
    "hubsdd": ("cli", None),  # hubsdd/__init__.py only: the package facade
    "hubsdd.testing": ("testing", None),  # the test Hub, tiny models, the kill harness
}


# --------------------------------------------------------------------------- the checker


def modules(root: Path) -> dict[str, Path]:
    """Every module of the package at ``root``, by dotted name (a package by its ``__init__``)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _is_main_guard(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
            and test.left.id == "__name__")


def _imports(tree: ast.AST):
    """Import nodes anywhere in the module (functions and TYPE_CHECKING blocks too), except under
    ``if __name__ == "__main__":``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if _is_main_guard(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """module -> {imported module of the same package: line}. ``from pkg import name`` is an edge
    to ``pkg.name`` when that is a module, else to ``pkg`` (whose ``__init__`` defines ``name``)."""
    mods = modules(root)
    graph: dict[str, dict[str, int]] = {}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in mods else module for a in node.names]
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def layer_of(module: str, layers: dict[str, tuple[str, str | None]]) -> tuple[str, str | None] | None:
    """The layer of the longest prefix naming ``module`` or a package above it; the top package's
    name (no dot: its ``__init__``, the facade) names only itself, so a new module needs a layer."""
    for prefix in sorted(layers, key=len, reverse=True):
        if module == prefix or ("." in prefix and module.startswith(prefix + ".")):
            return layers[prefix]
    return None


def layer_problems(graph: dict[str, dict[str, int]], layers: dict[str, tuple[str, str | None]],
                   order: tuple[str, ...] = ORDER) -> list[str]:
    """Every module without a layer, every import of a higher layer, every stage importing another."""
    problems = []
    for module in sorted(graph):
        if layer_of(module, layers) is None:
            problems.append(f"{module}: no layer (add its prefix to LAYERS)")
    for module, edges in sorted(graph.items()):
        here = layer_of(module, layers)
        for target, line in sorted(edges.items()):
            there = layer_of(target, layers)
            if here is None or there is None:
                continue
            if order.index(there[0]) > order.index(here[0]):
                problems.append(f"{module} (line {line}) imports {target}: {here[0]} -> {there[0]} is upward")
            elif here[0] == there[0] == "stages" and here[1] != there[1]:
                problems.append(f"{module} (line {line}) imports {target}: stage {here[1]} -> stage {there[1]}")
    return problems


def check(root: Path, layers: dict[str, tuple[str, str | None]] = LAYERS) -> list[str]:
    graph = import_graph(root)
    return [f"import cycle: {' <-> '.join(c)}" for c in find_cycles(graph)] + layer_problems(graph, layers)


# --------------------------------------------------------------------------- the tests

PACKAGE = Path(__file__).resolve().parents[1] / "hubsdd"


def test_hubsdd_has_no_cycles_and_no_upward_imports() -> None:
    problems = check(PACKAGE)
    assert not problems, "the import contract is broken:\n  " + "\n  ".join(problems)


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in {"__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


PLANTED_LAYERS = {"pkg.low": ("core", None), "pkg.mid": ("stages", "a"), "pkg.other": ("stages", "b"),
                  "pkg.top": ("pipeline", None), "pkg": ("cli", None)}


def test_a_planted_cycle_fails_even_when_hidden_in_a_function(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "low.py": "def f():\n    from .top import g\n",  # lazy, still a cycle
        "mid.py": "from . import low\n",
        "top.py": "from .mid import low\n\ndef g(): ...\n",
    })
    problems = check(root, PLANTED_LAYERS)
    assert "import cycle: pkg.low <-> pkg.mid <-> pkg.top" in problems
    assert any(p.startswith("pkg.low (line 2) imports pkg.top: core -> pipeline is upward") for p in problems)


def test_a_planted_upward_import_and_stage_to_stage_import_fail(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "low.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .mid import X\n",
        "mid.py": "from .other import y\nX = 1\n",
        "other.py": "y = 2\n",
        "top.py": "if __name__ == '__main__':\n    from . import cli\n",  # a script entry: not an import
        "cli.py": "from .top import z\n",
        "new.py": "",
    })
    problems = check(root, PLANTED_LAYERS)
    assert "pkg.low (line 3) imports pkg.mid: core -> stages is upward" in problems
    assert "pkg.mid (line 1) imports pkg.other: stage a -> stage b" in problems
    assert "pkg.new: no layer (add its prefix to LAYERS)" in problems
    assert not any("cycle" in p or p.startswith("pkg.top") for p in problems)


def test_a_clean_package_passes(tmp_path: Path) -> None:
    root = _package(tmp_path, {"low.py": "", "mid.py": "from . import low\n", "top.py": "from .mid import X\n"})
    assert check(root, PLANTED_LAYERS) == []


if __name__ == "__main__":  # python tests/test_import_contract.py: the problems, one a line
    print("\n".join(check(PACKAGE)) or "ok")
    print(sum(len(e) for e in import_graph(PACKAGE).values()), "import edges")
