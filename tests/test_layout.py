"""The layout shows the architecture: the pure core imports no I/O library, and no module imports itself back.

Walks every ``import`` in the source (at module level and inside functions, since a lazy import still ties
two modules together), without importing anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("scoring", "notify", "tracking")
IO_LIBRARIES = {"mlflow", "apprise", "torch", "transformers", "peft", "accelerate", "requests", "urllib3",
                "httpx", "socket", "smtplib", "http", "sqlalchemy"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute (relative imports resolved against its package)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return found


def source_modules() -> dict[str, set[str]]:
    modules = {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    return {name: {i for i in imported_names(path) if i in modules and i != name} for name, path in modules.items()}


def test_the_walk_sees_the_packages_and_their_imports():
    modules = source_modules()
    assert {"scoring.models", "notify.events", "notify.delivery.worker", "tracking.train"} <= set(modules)
    assert "scoring.models" in modules["scoring.report"]  # a relative import, resolved
    assert "notify.delivery.channels" in modules["notify.delivery.worker"]


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle in ``graph``, or None. A package's ``__init__`` importing its own modules is not a
    circle unless one of those modules imports something that leads back to it."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt.startswith(node + "."):  # a package importing its own submodule
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_module_imports_itself_back():
    graph = source_modules()
    # a module that imports a package's __init__ depends on what the __init__ imports
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_no_package_imports_another_back():
    packages = {p: set() for p in PACKAGES}
    for name, imports in source_modules().items():
        packages[name.split(".")[0]] |= {i.split(".")[0] for i in imports} - {name.split(".")[0]}
    assert packages["scoring"] == set(), "scoring is the pure core: it imports no sibling package"
    assert packages["notify"] == set(), "notify imports no sibling package"
    assert packages["tracking"] <= {"scoring", "notify"}


def _top_level_imports(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_names(path)}


@pytest.mark.parametrize("path", sorted((REPO / "scoring").rglob("*.py")), ids=lambda p: p.name)
def test_scoring_imports_no_io_library(path):
    assert not _top_level_imports(path) & IO_LIBRARIES, f"{path.name} imports {_top_level_imports(path) & IO_LIBRARIES}"


PURE_NOTIFY = sorted(p for p in (REPO / "notify").glob("*.py"))


@pytest.mark.parametrize("path", PURE_NOTIFY, ids=lambda p: p.name)
def test_the_pure_part_of_notify_imports_no_io_library(path):
    assert not _top_level_imports(path) & IO_LIBRARIES, f"{path.name} imports {_top_level_imports(path) & IO_LIBRARIES}"
    assert not {n for n in imported_names(path) if n.startswith("notify.delivery")}, (
        f"{path.name} imports the delivery part; notify/__init__ may only load it on first use")


def test_delivery_is_where_apprise_lives():
    users = {module_name(p) for package in PACKAGES for p in (REPO / package).rglob("*.py")
             if "apprise" in _top_level_imports(p)}
    assert users and all(name.startswith("notify.delivery") for name in users), users


def test_a_circle_is_found_when_there_is_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"a.x"}, "a.x": set()}) is None
