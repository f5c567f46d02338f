"""Layering of core/ (ARCHITECTURE.md): a method folder never imports another method folder, and
the layers below the methods (data, metrics, diffusion, machinery) never import a method.

This is the rule that lets a newcomer read one method folder alone; shared code moves down
a layer instead. tests/test_import_graph.py checks the whole repository for import cycles.
"""
from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "core"
METHODS = {"synthesis", "change", "oilspill", "refinement", "fusion", "segmentation"}
ADAPTERS = {"demo.py"}   # runs every method: the top of the stack, like the plugin and training/


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def crossings() -> set[tuple[str, str]]:
    found = set()
    for path in CORE.rglob("*.py"):
        relative = path.relative_to(CORE)
        if relative.as_posix() in ADAPTERS:
            continue
        own = relative.parts[0] if len(relative.parts) > 1 else None
        for module in imported_modules(path):
            parts = module.split(".")
            if parts[0] == "core" and len(parts) > 1 and parts[1] in METHODS and parts[1] != own:
                found.add((relative.as_posix(), module))
    return found


def test_no_method_imports_another_method_and_no_layer_below_imports_a_method():
    assert crossings() == set(), f"imports across layers: {sorted(crossings())}"
