"""The package's structure, read from its source with `ast` (nothing is imported): no import
cycles, no private names used across modules, and the seams the package docstring promises
(`rtprune` needs torch only, engines are reached only through the runtime factory)."""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ocrprune"


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    # (imported module, names imported from it, line, at module level?)
    imports: list[tuple[str, tuple[str, ...], int, bool]] = field(default_factory=list)


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _read_package(root: Path = PACKAGE) -> dict[str, Module]:
    modules = {}
    for path in sorted(root.rglob("*.py")):
        name = _module_name(path, root)
        modules[name] = Module(name, path, ast.parse(path.read_text(encoding="utf-8"), str(path)))
    for module in modules.values():
        is_package = module.path.name == "__init__.py"
        top_level = {id(node) for node in module.tree.body}
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    module.imports.append((alias.name, (), node.lineno, id(node) in top_level))
            elif isinstance(node, ast.ImportFrom):
                target = node.module or ""
                if node.level:
                    base = module.name.split(".")
                    if not is_package:
                        base.pop()
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                names = tuple(alias.name for alias in node.names)
                module.imports.append((target, names, node.lineno, id(node) in top_level))
    return modules


def _edges(modules: dict[str, Module]) -> dict[str, set[str]]:
    """Module -> the package modules it imports (`from pkg import sub` counts as importing `sub`)."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for module in modules.values():
        for target, names, _line, _top in module.imports:
            if target not in modules:
                continue
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
            plain = [n for n in names if f"{target}.{n}" not in modules]
            graph[module.name].update(submodules)
            if plain or not names:
                graph[module.name].add(target)
    for name in graph:
        graph[name].discard(name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_uses(modules: dict[str, Module]) -> list[str]:
    """`from ocrprune.x import _name`, and `alias._name` where `alias` is an imported ocrprune module."""
    problems = []
    for module in modules.values():
        aliases: dict[str, str] = {}
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules and alias.asname:
                        aliases[alias.asname] = alias.name
            elif isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    if full in modules:
                        aliases[alias.asname or alias.name] = full
        for target, names, line, _top in module.imports:
            if target in modules and target != module.name:
                for name in names:
                    if _private(name):
                        problems.append(f"{module.name}:{line} imports {target}.{name}")
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                owner = aliases.get(node.value.id)
                if owner is not None and owner != module.name and _private(node.attr):
                    problems.append(f"{module.name}:{node.lineno} uses {owner}.{node.attr}")
    return problems


@pytest.fixture(scope="module")
def package() -> dict[str, Module]:
    return _read_package()


def test_the_house_reader_sees_a_planted_cycle_and_a_private_import(tmp_path: Path) -> None:
    """The checks below can fail: a two-module package with a cycle and a private import."""
    root = tmp_path / "ocrprune"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "a.py").write_text("from ocrprune.b import _secret\n")
    (root / "b.py").write_text("import ocrprune.a as a\n_secret = 1\nx = a._hidden\n")
    modules = _read_package(root)
    assert _cycles(_edges(modules)) == [["ocrprune.a", "ocrprune.b"]]
    assert _private_uses(modules) == ["ocrprune.a:1 imports ocrprune.b._secret", "ocrprune.b:3 uses ocrprune.a._hidden"]


def test_the_package_has_no_import_cycle(package: dict[str, Module]) -> None:
    assert _cycles(_edges(package)) == []


def test_no_module_uses_a_private_name_of_another(package: dict[str, Module]) -> None:
    assert _private_uses(package) == []


def test_rtprune_imports_torch_and_the_standard_library_only(package: dict[str, Module]) -> None:
    third_party = {
        target.split(".")[0]
        for target, _names, _line, _top in package["ocrprune.rtprune"].imports
        if target.split(".")[0] not in sys.stdlib_module_names
    }
    assert third_party == {"torch"}


def test_model_specs_import_only_the_standard_library_at_module_level(package: dict[str, Module]) -> None:
    specs = [m for name, m in package.items() if name.startswith("ocrprune.models")]
    outside = [
        f"{m.name}:{line} {target}"
        for m in specs
        for target, _names, line, top in m.imports
        if top and target.split(".")[0] not in sys.stdlib_module_names and not target.startswith("ocrprune.models")
    ]
    assert outside == []


def test_engines_are_reached_only_through_the_runtime_factory(package: dict[str, Module]) -> None:
    """Outside `ocrprune.runtime`, nothing imports an engine's modules (`runtime.hf`, `runtime.vllm`):
    the run and sweep speak to `ocrprune.runtime` (the factory) and `ocrprune.runtime.api` (the contract)."""
    graph = _edges(package)
    engines = ("ocrprune.runtime.hf", "ocrprune.runtime.vllm")
    reached = sorted(
        f"{name} -> {target}"
        for name, targets in graph.items()
        if not name.startswith("ocrprune.runtime")
        for target in targets
        if target.startswith(engines)
    )
    assert reached == []


def test_engines_import_the_contract_not_the_factory(package: dict[str, Module]) -> None:
    graph = _edges(package)
    engine_modules = [n for n in graph if n.startswith(("ocrprune.runtime.hf", "ocrprune.runtime.vllm"))]
    assert engine_modules, "no engine modules found: the layout changed"
    assert sorted(n for n in engine_modules if "ocrprune.runtime" in graph[n]) == []


def test_the_contract_and_the_factory_import_no_engine_at_module_level(package: dict[str, Module]) -> None:
    for name in ("ocrprune.runtime", "ocrprune.runtime.api"):
        eager = [t for t, _n, _l, top in package[name].imports if top and t.startswith("ocrprune.runtime.")]
        assert [t for t in eager if t != "ocrprune.runtime.api"] == [], name
