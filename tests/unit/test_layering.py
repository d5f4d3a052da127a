"""The layering of DESIGN.md §7, checked on the source: no import cycle between modules, and every
import of `proxy/`, `policies/` and `admin_api/` points down the layers.

Every import counts — at module level, inside functions, and under `if TYPE_CHECKING:` — because
each is a dependency a reader must hold in their head (docs/architecture.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("proxy", "policies", "admin_api")

# Lowest first; a module may import its own layer or any lower one. Longest prefix wins.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("policies",),
    ("proxy.errors", "proxy.config", "proxy.tlsfiles"),
    ("proxy.observe",),
    # codecs and relay state, sans-IO
    (
        "proxy.wire.pg.protocol",
        "proxy.wire.pg.extended",
        "proxy.wire.pg.replies",
        "proxy.wire.mysql.protocol",
    ),
    ("proxy.auth",),  # password verifiers, SCRAM, login limits
    ("proxy.store", "proxy.audit"),  # state: the catalog records its changes in the audit chain
    ("proxy.upstream",),
    ("proxy.changes",),
    ("proxy.wire",),  # sessions: the asyncio glue of each protocol
    ("admin_api",),
    ("proxy.server", "proxy.cli"),
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts:
                found[_module_name(path)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The project modules `name` imports, resolved to modules (not packages' attributes)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            # `from package import module` imports that module; `from module import name` the module
            targets = [
                f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                for alias in node.names
            ]
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                out.add(target)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(name: str) -> int:
    if name in PACKAGES:  # a top-level package's __init__ (a docstring)
        return 0
    best, rank = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    assert rank >= 0, f"{name} is in no layer of tests/unit/test_layering.py"
    return rank


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        _layer(name)


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components: every one must be a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(GRAPH[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    assert cycles == [], f"import cycles: {cycles}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name: str) -> None:
    mine = _layer(name)
    upward = sorted(t for t in GRAPH[name] if _layer(t) > mine)
    assert upward == [], f"{name} (layer {mine}) imports from higher layers: {upward}"


def test_policies_import_nothing_of_the_runtime() -> None:
    for name, targets in GRAPH.items():
        if name.startswith("policies"):
            assert not [t for t in targets if not t.startswith("policies")], name


def test_the_graph_holds_real_imports() -> None:
    """The graph is built from real imports: the upstream logins do import the upstream base."""
    assert "proxy.upstream.base" in GRAPH["proxy.upstream.pg"]
    assert "proxy.wire.relay" in GRAPH["proxy.wire.pg.session"]
