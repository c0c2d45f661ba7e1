"""The import contract: hubsdd's modules form layers, each importing only layers below it, and no
import cycle exists anywhere (a function-level import counts: hiding a cycle in a function does not
remove it; imports under ``if __name__ == "__main__":`` do not, they never run on import).

Layers, lowest first: core < stages < pipeline < hub < cli < testing. Inside ``stages`` each stage is
its own unit and a unit never imports another one (a stage never imports another stage).

The rule is declarative: ``LAYERS`` maps a module-name prefix to its layer (and, for stages, its
unit); the longest matching prefix wins. Nothing lists allowed edges.

NOTE for the move into layer packages (issue 22, item 1): the modules are still flat, so ``LAYERS``
names them one by one. After the move it becomes one line per layer package
(``"hubsdd.core": ("core", None)``, ``"hubsdd.stages.prune": ("stages", "prune")``, ...).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ORDER = ("core", "stages", "pipeline", "hub", "cli", "testing")

# prefix -> (layer, unit). Units matter only in the stages layer (one per stage).
LAYERS: dict[str, tuple[str, str | None]] = {
    # core: the recipe, errors, files, data sources, model loading, device facts, the stage contract
    "hubsdd.version": ("core", None),
    "hubsdd.errors": ("core", None),
    "hubsdd.files": ("core", None),
    "hubsdd.recipe": ("core", None),
    "hubsdd.recipe_file": ("core", None),
    "hubsdd.recipe_sections": ("core", None),
    "hubsdd.recipe_reference": ("core", None),
    "hubsdd.data": ("core", None),
    "hubsdd.models": ("core", None),
    "hubsdd.devices": ("core", None),
    "hubsdd.device_profile": ("core", None),  # batch sizes from a GPU's memory
    "hubsdd.recipe_publish": ("core", None),
    "hubsdd.recipe_base": ("core", None),
    "hubsdd.recipe_distributed": ("core", None),
    "hubsdd.recipe_signing": ("core", None),
    "hubsdd.teacher_logits": ("core", None),  # the stored top-k format: written by distill, read by finetune
    "hubsdd.release_choice": ("core", None),  # the release rule: evaluate records it, the card states it
    "hubsdd.chat": ("core", None),
    "hubsdd.figures": ("core", None),
    "hubsdd.hub_errors": ("core", None),
    "hubsdd.progress": ("core", None),
    "hubsdd.worklog": ("core", None),
    "hubsdd.plugins": ("core", None),
    "hubsdd.records": ("core", None),
    "hubsdd.stage_io": ("core", None),  # StageContext, StageOutput, StageResult: what a stage sees
    "hubsdd.outputs": ("core", None),  # the typed records stages leave for each other
    "hubsdd.evaluate.outputs": ("core", None),  # evaluate's records (read by the card and the summary)
    "hubsdd.evaluate.stats": ("core", None),  # the paired bootstrap (read by the card and the summary)
    "hubsdd.evaluate.evidence": ("core", None),
    # stages: one unit each
    "hubsdd.base": ("stages", "base"),
    "hubsdd.prune": ("stages", "prune"),
    "hubsdd.surgery": ("stages", "prune"),
    "hubsdd.scorers": ("stages", "prune"),
    "hubsdd.distill": ("stages", "distill"),
    "hubsdd.finetune": ("stages", "finetune"),
    "hubsdd.training": ("stages", "finetune"),
    "hubsdd.trainer_checkpoints": ("stages", "finetune"),
    "hubsdd.merge": ("stages", "merge"),
    "hubsdd.evaluate": ("stages", "evaluate"),
    "hubsdd.card": ("stages", "card"),
    "hubsdd.templates": ("stages", "card"),  # the card's Jinja templates (a package only to ship them)
    # pipeline
    "hubsdd.runner": ("pipeline", None),
    "hubsdd.stage_records": ("pipeline", None),
    "hubsdd.preflight": ("pipeline", None),
    "hubsdd.launch": ("pipeline", None),  # the accelerate entry
    "hubsdd.launch_commands": ("pipeline", None),  # the accelerate launch command lines
    # hub
    "hubsdd.hub": ("hub", None),  # hub/, hub_errors is core (longer prefix)
    "hubsdd.publishing": ("hub", None),
    # cli: the command, its console and summary, and the package's facade (hubsdd/__init__.py)
    "hubsdd.cli": ("cli", None),
    "hubsdd.console": ("cli", None),
    "hubsdd.progress_lines": ("cli", None),
    "hubsdd.report": ("cli", None),
    "hubsdd.scaffold": ("cli", None),
    "hubsdd": ("cli", None),  # hubsdd/__init__.py only
    # test support: the test Hub, tiny models, the kill harness
    "hubsdd.testing": ("testing", None),
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
