"""The modules of core/, training/, rs_diffusion_plugin/ and benchmarks/ import each other without a cycle.

A cycle means two modules can only be understood (and imported) together; the shared part belongs in
a module both import. Every import counts, also the ones inside functions: deferring an import hides
a cycle from Python, not from a reader.

Run as a script for the figures: `python -m tests.test_import_graph`.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "training", "rs_diffusion_plugin", "benchmarks")


def module_files() -> dict[str, Path]:
    """Dotted module name -> file; a package is named by its __init__.py."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_modules(module: str, path: Path, modules: set[str]) -> set[str]:
    """The repository modules `module` imports: for `from a import b` the module a.b when there is
    one, else a; relative imports are resolved against the module's package."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[:len(parts) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            names = [f"{source}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the repository modules it imports."""
    files = module_files()
    return {module: imported_modules(module, path, set(files)) for module, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> ... -> a) per strongly connected component of more than one module."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def visit(node: str) -> None:   # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while node not in component:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_through(graph, component) for component in components]


def _cycle_through(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start = min(component)
    previous = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & component):
                if target == start:
                    path = [node]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"{sorted(component)} is not strongly connected")


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in found)


def test_resolves_absolute_relative_and_from_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("import pkg.other\nfrom ..other import CONSTANT\nfrom . import sibling\n"
                      "from pkg import other\nimport numpy\n\ndef later():\n    from pkg.sub.deep import f\n")
    modules = {"pkg", "pkg.other", "pkg.sub", "pkg.sub.mod", "pkg.sub.sibling", "pkg.sub.deep"}
    assert imported_modules("pkg.sub.mod", source, modules) == {"pkg.other", "pkg.sub.sibling", "pkg.sub.deep"}


def test_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def main() -> int:
    graph = import_graph()
    found = cycles(graph)
    print(f"{len(graph)} modules, {sum(len(t) for t in graph.values())} import edges")
    for cycle in found:
        print("cycle: " + " -> ".join(cycle))
    print(f"{len(found)} cycle(s)" if found else "no cycle")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
