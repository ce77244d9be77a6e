"""The architecture of docs/architecture.md, checked on the source: the rooms, the allowed imports,
no circles, and every function the page names where it says.

Read from the files themselves (``ast``), so these tests need neither PostgreSQL nor Iggy.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "architecture.md"
SOURCE_FOLDERS = ("pgsource", "workers", "pgsource_testkit")


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for folder in SOURCE_FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))}


def _room(module: str) -> str | None:
    """The row of the table a module belongs to: a package of pgsource, ``workers`` or the testkit."""
    parts = module.split(".")
    if parts[0] in ("workers", "pgsource_testkit"):
        return parts[0]
    if parts[0] != "pgsource" or len(parts) == 1:
        return None
    return parts[1]


def _imports(modules: dict[str, Path]) -> dict[str, set[tuple[str, int]]]:
    """module -> the project modules it imports (anywhere in the file: TYPE_CHECKING and functions too).

    ``from package import submodule`` counts as an import of the submodule alone."""
    found: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in modules]
                if len(targets) < len(node.names) and node.module in modules:
                    targets.append(node.module)
                found[module] |= {(target, node.lineno) for target in targets}
            elif isinstance(node, ast.Import):
                found[module] |= {(alias.name, node.lineno) for alias in node.names if alias.name in modules}
    return found


def _allowed() -> dict[str, set[str]]:
    text = PAGE.read_text(encoding="utf-8")
    section = text.split("## Allowed imports", 1)[1].split("\n## ", 1)[0]
    table: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`"):
            continue
        table[cells[0].strip("`")] = set(re.findall(r"`([a-z_]+)`", cells[1]))
    return table


def test_every_import_goes_a_way_the_page_allows():
    modules = _modules()
    allowed = _allowed()
    rooms = {room for room in map(_room, modules) if room}
    assert rooms <= set(allowed), f"rooms missing from the table: {sorted(rooms - set(allowed))}"
    offenders = []
    for module, targets in _imports(modules).items():
        source = _room(module)
        for target, line in targets:
            room = _room(target)
            if room is None or room == source:
                continue
            if source == "workers" and room != "pgsource_testkit":
                continue  # workers may import all of pgsource
            if room not in allowed[source] and not (source == "workers" and room == "pgsource_testkit"):
                offenders.append(f"{modules[module].relative_to(ROOT)}:{line} {source} -> {room} ({target})")
    assert offenders == [], "\n".join(offenders)


def test_the_product_never_loads_the_testkit():
    modules = _modules()
    offenders = [f"{module} -> {target}" for module, targets in _imports(modules).items()
                 if module.startswith("pgsource.") or module == "pgsource"
                 for target, _ in targets if target.startswith("pgsource_testkit")]
    assert offenders == []
    demo_only = {module for module, targets in _imports(modules).items() if module.startswith("workers")
                 and any(target.startswith("pgsource_testkit") for target, _ in targets)}
    assert demo_only <= {"workers.demo"}, demo_only


def test_no_module_imports_another_in_a_circle():
    modules = _modules()
    graph = {module: {target for target, _ in targets} for module, targets in _imports(modules).items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in modules:
        if module not in index:
            visit(module)
    assert circles == []


def _defined(path: Path) -> set[str]:
    """Top-level names and ``Class.method`` names a module defines."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names |= {f"{node.name}.{item.name}" for item in node.body
                          if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {target.id for target in targets if isinstance(target, ast.Name)}
    return names


def test_the_page_names_files_and_functions_that_exist():
    text = PAGE.read_text(encoding="utf-8")
    named = re.findall(r"`((?:pgsource|workers|pgsource_testkit)/[A-Za-z0-9_./]*)`(?: \(([^)]*)\))?", text)
    assert len(named) > 30
    missing = []
    for path, functions in named:
        if not (ROOT / path).exists():
            missing.append(path)
            continue
        names = re.findall(r"`([A-Za-z_][A-Za-z0-9_.]*)`", functions)
        if names and path.endswith(".py"):
            defined = _defined(ROOT / path)
            missing += [f"{path}: {name}" for name in names if name not in defined]
    assert missing == [], missing
