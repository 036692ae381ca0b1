"""The shape of the code: the import picture has no circle, and the core package
`loramem` never imports the layers built on it."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("loramem", "server", "router", "trainer", "evaluation", "cli")
UPPER = ("server", "router", "trainer", "evaluation", "cli")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (a submodule, where one is named)."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    targets.add(submodule if submodule in files else node.module)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle, as graphlib reports it ([] when there is none)."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        return list(error.args[1])
    return []


def test_the_import_picture_has_no_circle() -> None:
    graph = import_graph()
    assert {"loramem.registry.facts", "cli.main"} <= set(graph)  # the whole tree was read
    assert "trainer.publisher" in graph["trainer.worker"]
    assert find_cycle(graph) == []


def test_the_core_imports_nothing_built_on_it() -> None:
    upward = {
        (module, target)
        for module, targets in import_graph().items()
        if module.split(".")[0] == "loramem"
        for target in targets
        if target.split(".")[0] in UPPER
    }
    assert upward == set()


def test_a_circle_would_be_found() -> None:
    circle = find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert set(circle) == {"a", "b", "c"} and circle[0] == circle[-1]
