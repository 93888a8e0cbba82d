"""The package's shape: no import cycle, arrows pointing down only, small modules.

Every module of ``flask_resilience/`` is parsed with ``ast``; every import
counts, including those under ``if TYPE_CHECKING:`` and inside functions
(a cycle that only type checkers follow is still a cycle for a reader).
Importing ``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b``; those
implicit edges are left out (the package's ``__init__`` re-exports the
public API, so every module would otherwise sit in one circle with it).

The layers, bottom to top (a module imports its own layer or lower ones):

0. plumbing: ``stores/``, ``config``, ``validators``, ``times``,
   ``responses``, ``lifecycle``, ``signals``, ``stats``, ``histograms``,
   ``version``
1. ``state``: per-app state, the features registry and the app's hooks
2. request plumbing every feature shares: ``context`` (request id,
   principal), ``problems`` (problem+json), ``logs``
3. the features ``breaker``, ``cache``, ``idempotency``, ``audit``: none
   imports another (they talk through ``signals`` and the extension's wiring)
4. wiring and endpoints: ``extension``, ``health``, ``metrics``, ``cli``
   and the package's ``__init__``
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = "flask_resilience"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
MAX_LINES = 400

PLUMBING = frozenset(
    {
        "stores",
        "config",
        "validators",
        "times",
        "responses",
        "lifecycle",
        "signals",
        "stats",
        "histograms",
        "version",
    }
)
STATE = frozenset({"state"})
REQUEST = frozenset({"context", "problems", "logs"})
FEATURES = frozenset({"breaker", "cache", "idempotency", "audit"})
WIRING = frozenset({"", "extension", "middleware", "health", "metrics", "cli"})
LAYERS = (PLUMBING, STATE, REQUEST, FEATURES, WIRING)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[str]:
    """The package's modules that ``name`` imports, wherever the import stands."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            # ``from pkg import mod`` imports the module ``pkg.mod``, ``from mod import name`` the module
            named = [f"{module}.{alias.name}" for alias in node.names]
            targets = [target if target in MODULES else module for target in named]
        else:
            continue
        for target in targets:
            found = target
            while found not in MODULES and "." in found:
                found = found.rsplit(".", 1)[0]
            if found in MODULES and found != name:
                yield found


GRAPH = {name: sorted(set(_imports(name, path))) for name, path in MODULES.items()}


def _top(name: str) -> str:
    """``flask_resilience.cache.views`` -> ``cache``; the package itself -> ``""``."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(name: str) -> int:
    for rank, members in enumerate(LAYERS):
        if _top(name) in members:
            return rank
    raise AssertionError(f"{name} is in no layer: add it to one in tests/test_layers.py")


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path = [start]
        on_path = {start}
        stack = [iter(graph[start])]
        while stack:
            following = next(stack[-1], None)
            if following is None:
                stack.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                continue
            if following in on_path:
                return [*path[path.index(following) :], following]
            if following not in done:
                path.append(following)
                on_path.add(following)
                stack.append(iter(graph.get(following, ())))
    return None


def test_the_package_is_found() -> None:
    assert f"{PACKAGE}.extension" in MODULES
    assert f"{PACKAGE}.cache.service" in GRAPH[f"{PACKAGE}.extension"]


def test_there_is_no_import_cycle() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def test_the_cycle_finder_finds_a_cycle_through_many_modules() -> None:
    graph = {"a": ["b"], "b": ["c", "d"], "c": [], "d": ["e"], "e": ["b"]}
    assert find_cycle(graph) == ["b", "d", "e", "b"]
    assert find_cycle({"a": ["b"], "b": ["c"], "c": []}) is None
    assert find_cycle({"a": ["a"]}) == ["a", "a"]


def test_every_module_is_in_a_layer() -> None:
    for name in MODULES:
        _layer(name)


def _arrows_up() -> list[str]:
    wrong = []
    for name, targets in GRAPH.items():
        for target in targets:
            if _layer(target) > _layer(name):
                wrong.append(f"{name} -> {target}")
            elif _top(name) in FEATURES and _top(target) in FEATURES and _top(target) != _top(name):
                wrong.append(f"{name} -> {target} (one feature imports another)")
    return wrong


def test_imports_point_down_the_layers_only() -> None:
    assert _arrows_up() == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_is_small(name: str) -> None:
    lines = len(MODULES[name].read_text("utf-8").splitlines())
    assert lines < MAX_LINES, f"{MODULES[name].relative_to(ROOT.parent)} has {lines} lines"
