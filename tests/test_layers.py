"""The packages import one way: the core knows no process, and nothing imports in a circle.

- the core (``paxyo`` without ``paxyo.cli``) imports only the standard library, third-party
  libraries and other core modules;
- ``providers`` and ``monitoring`` import only the core; ``dispatcher``, ``wsgateway`` and
  ``webhooks`` the core and ``monitoring``; ``workers`` also ``providers``; ``dispatcher``
  and ``workers`` never each other;
- ``paxyo.cli``, the entry package, may import anything, and nothing imports it;
- no two modules import each other, directly or through others.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("paxyo", "providers", "dispatcher", "workers", "wsgateway", "monitoring",
            "webhooks")
ENTRY = "paxyo.cli"
ALLOWED = {
    "paxyo": set(),
    "providers": {"paxyo"},
    "monitoring": {"paxyo"},
    "dispatcher": {"paxyo", "monitoring"},
    "wsgateway": {"paxyo", "monitoring"},
    "workers": {"paxyo", "monitoring", "providers"},
    "webhooks": {"paxyo", "monitoring"},
    ENTRY: {"paxyo", "providers", "monitoring", "dispatcher", "wsgateway", "workers",
            "webhooks"},
}


def layer(module: str) -> str:
    return ENTRY if module == ENTRY or module.startswith(ENTRY + ".") else module.split(".")[0]


def modules(root: Path) -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if "migrations" in path.parts:  # run by Alembic, not imported
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(root: Path) -> dict[str, set[str]]:
    """Module -> the project's modules it imports (at any depth: lazy imports count)."""
    known = modules(root)
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets: Iterable[str] = (alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known
                           else node.module for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name and not _is_parent(target, name):
                    edges[name].add(target)
    return edges


def _is_parent(package: str, module: str) -> bool:
    """``from paxyo.cli import x`` inside paxyo.cli.y loads the package it lives in."""
    return module.startswith(package + ".") and layer(package) == layer(module)


def forbidden(edges: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets
                  if layer(a) != layer(b) and layer(b) not in ALLOWED[layer(a)])


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in edges.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_packages_import_only_what_their_layer_allows():
    assert forbidden(imports(ROOT)) == []


def test_no_modules_import_each_other_in_a_circle():
    assert cycles(imports(ROOT)) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for package in PACKAGES:
        (tmp_path / package).mkdir(parents=True, exist_ok=True)
        (tmp_path / package / "__init__.py").write_text("")
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_the_checks_catch_a_forbidden_import_and_a_cycle(tmp_path):
    root = _tree(tmp_path, {
        "paxyo/ledger.py": "from workers.jobs import run_shard\n",
        "workers/jobs.py": "def run_shard(): ...\n",
        "dispatcher/loop.py": "def f():\n    from workers import jobs\n",
        "paxyo/cli/__init__.py": "from dispatcher import loop\n",
        "wsgateway/a.py": "from wsgateway import b\n",
        "wsgateway/b.py": "import wsgateway.a\n",
    })
    assert forbidden(imports(root)) == ["dispatcher.loop -> workers.jobs",
                                        "paxyo.ledger -> workers.jobs"]
    assert cycles(imports(root)) == [["wsgateway.a", "wsgateway.b"]]
