"""The plugin is ready for Qt6 / QGIS 4: none of what QGIS's PyQt5 -> PyQt6 migration script rewrites.

PyQt6 drops unscoped enum members (`Qt.AlignLeft` must be `Qt.AlignmentFlag.AlignLeft`), `exec_()`,
QVariant type values and PyQt5 itself; `qgis.PyQt` imports work with both. Enum members are found by
asking the real classes (through the 3.22 bindings, which accept the scoped forms), not from a list.
"""
import ast
import enum
import importlib
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent.parent / "rs_diffusion_plugin"


def imported_classes(tree: ast.Module) -> dict[str, type]:
    """Local name -> class of every `from qgis... import Name` in a module."""
    classes = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qgis"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                value = getattr(module, alias.name, None)
                if isinstance(value, type):
                    classes[alias.asname or alias.name] = value
    return classes


def is_enum_member(value) -> bool:
    """A member of a sip enum (PyQt5: an int whose type's type is sip.enumtype) or of a Python enum (PyQt6)."""
    return isinstance(value, enum.Enum) or (isinstance(value, int) and type(type(value)).__name__ == "enumtype")


def qt5_only_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    classes = imported_classes(tree)
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(PLUGIN_DIR.parent)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "PyQt5" for a in node.names):
            found.append(f"{where} imports PyQt5 (use qgis.PyQt)")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "PyQt5":
            found.append(f"{where} imports from {node.module} (use qgis.PyQt)")
        elif isinstance(node, ast.Attribute) and node.attr == "exec_":
            found.append(f"{where} calls exec_() (use exec())")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            name = node.value.id
            if name == "QVariant":
                found.append(f"{where} uses QVariant.{node.attr} (QVariant types are gone in Qt6)")
            elif name in classes and is_enum_member(getattr(classes[name], node.attr, None)):
                enum = type(getattr(classes[name], node.attr)).__name__
                found.append(f"{where} {name}.{node.attr}: write it scoped, {name}.{enum}.{node.attr}")
    return found


def test_enum_member_detection_knows_scoped_from_unscoped():
    from qgis.PyQt.QtCore import Qt
    assert is_enum_member(Qt.AlignLeft) and is_enum_member(Qt.AlignmentFlag.AlignLeft)
    assert not is_enum_member(Qt.AlignmentFlag)   # the enum itself: `Qt.AlignmentFlag.X` is fine
    tree = ast.parse("from qgis.PyQt.QtCore import Qt\nQt.AlignLeft\nQt.AlignmentFlag.AlignLeft\n")
    classes = imported_classes(tree)
    found = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Attribute)
             and isinstance(node.value, ast.Name) and is_enum_member(getattr(classes[node.value.id], node.attr, None))]
    assert found == [2]


def test_plugin_uses_nothing_pyqt6_drops():
    found = [use for path in sorted(PLUGIN_DIR.rglob("*.py")) for use in qt5_only_uses(path)]
    assert found == [], "\n".join(found)
