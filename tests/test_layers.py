"""The product's dependencies point one way: gateway -> approvals -> accounts ->
tools_registry -> audit -> core, with the demo's sandbox and the config package on top.
No module imports one that imports it back, directly or around a circle (nor does a
package), and no function hides an import to break one: only an ``AppConfig.ready()``
imports inside a function, as Django asks.

The imports are read from the source (``ast``), every one of them: module level, inside
functions, under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import ROOT

# Lowest first: an app may import its own modules and those of the apps before it.
LAYERS = (
    "core",
    "audit",
    "tools_registry",
    "accounts",
    "approvals",
    "gateway",
    "sandbox",
    "config",
)


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported product module
    line: int
    in_function: str  # the enclosing function's name, "" at module level


def product_modules(root: Path, packages: tuple[str, ...] = LAYERS) -> dict[str, Path]:
    modules = {}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imports_of(root: Path, packages: tuple[str, ...] = LAYERS) -> list[Import]:
    modules = product_modules(root, packages)

    def resolve(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    found = []
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        for function, node in _walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                names = [f"{base}.{alias.name}" for alias in node.names] or [base]
            else:
                continue
            for name in names:
                target = resolve(name)
                if target and target != module:
                    found.append(Import(module, target, node.lineno, function))
    return found


def _walk(tree: ast.AST, function: str = "") -> list[tuple[str, ast.AST]]:
    nodes: list[tuple[str, ast.AST]] = []
    for child in ast.iter_child_nodes(tree):
        inner = (
            child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
        )
        nodes.append((function, child))
        nodes.extend(_walk(child, inner))
    return nodes


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one node (Tarjan, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return found


def package_of(module: str) -> str:
    """A module's unit one level below its app: ``approvals.execution.claim`` belongs to
    ``approvals.execution``; ``approvals.events`` is its own."""
    return ".".join(module.split(".")[:2])


def graph(found: list[Import], unit: object = None) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for imp in found:
        source, target = imp.source, imp.target
        if unit is package_of:
            source, target = package_of(source), package_of(target)
        if source != target:
            edges[source].add(target)
    return edges


def upward(found: list[Import]) -> list[Import]:
    rank = {app: number for number, app in enumerate(LAYERS)}
    return [imp for imp in found if rank[imp.target.split(".")[0]] > rank[imp.source.split(".")[0]]]


def hidden(found: list[Import]) -> list[Import]:
    """Product imports inside a function other than an ``AppConfig.ready()``."""
    return [imp for imp in found if imp.in_function not in ("", "ready")]


@pytest.fixture(scope="module")
def product_imports() -> list[Import]:
    return imports_of(ROOT)


def test_the_walk_sees_the_imports_it_must_judge(product_imports: list[Import]) -> None:
    pairs = {(imp.source, imp.target) for imp in product_imports}
    assert ("gateway.intake", "approvals.services.calls") in pairs
    assert ("approvals.transitions", "approvals.models") in pairs
    assert ("gateway.apps", "approvals.hooks") in pairs, "imports inside ready() count too"


def test_no_module_imports_itself_around_a_circle(product_imports: list[Import]) -> None:
    assert circles(graph(product_imports)) == []


def test_no_package_imports_itself_around_a_circle(product_imports: list[Import]) -> None:
    assert circles(graph(product_imports, unit=package_of)) == []


def test_no_app_imports_one_above_it(product_imports: list[Import]) -> None:
    assert [f"{i.source}:{i.line} -> {i.target}" for i in upward(product_imports)] == []


def test_no_function_hides_an_import(product_imports: list[Import]) -> None:
    assert [f"{i.source}:{i.line} in {i.in_function}()" for i in hidden(product_imports)] == []


def test_the_checks_catch_a_circle_an_upward_arrow_and_a_hidden_import(tmp_path: Path) -> None:
    """The same checks, on a small tree that breaks each rule once."""
    files = {
        "core/__init__.py": "",
        "core/a.py": "from core import b\n",
        "core/b.py": "from core.a import thing\n",
        "audit/__init__.py": "",
        "audit/log.py": "from gateway import api\n",
        "gateway/__init__.py": "",
        "gateway/api.py": "def view():\n    from audit import log\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = imports_of(tmp_path, ("core", "audit", "gateway"))
    assert sorted(circles(graph(found))) == [["audit.log", "gateway.api"], ["core.a", "core.b"]]
    assert [(i.source, i.target) for i in upward(found)] == [("audit.log", "gateway.api")]
    assert [(i.source, i.in_function) for i in hidden(found)] == [("gateway.api", "view")]
