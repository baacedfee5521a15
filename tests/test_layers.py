"""The shape of the package: data flows one way (FUSE handlers -> core -> backends ->
host tools), and every module can be imported on its own (no import cycle that only
works in one order).

Imports under ``if TYPE_CHECKING:`` are for type hints only and are not counted.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "storagefs"

#: what each layer must never import (its callers, never its callees)
FORBIDDEN = {
    "xml": ("core", "fuse", "backends", "devices", "mount", "cli"),
    "backends": ("core", "fuse", "mount", "cli"),
    "devices": ("core", "fuse", "backends", "mount", "cli"),
    "core": ("fuse", "mount", "cli"),
    "fuse": ("backends", "mount", "cli"),
}


def modules() -> list[str]:
    out = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__main__":
            continue  # importing it runs the command line
        if parts[-1] == "__init__":
            parts.pop()
        out.append(".".join(parts))
    return out


def runtime_imports(path: Path, module: str) -> set[str]:
    """Absolute names of the storagefs modules ``path`` imports at run time."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for stmt in child.orelse:
                    visit(stmt)
                continue
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[:len(base) - child.level + 1]
                    name = ".".join(base + ([child.module] if child.module else []))
                else:
                    name = child.module or ""
                if name.startswith("storagefs"):
                    found.add(name)
            elif isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("storagefs"))
            visit(child)

    visit(tree)
    return found


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_data_flows_one_way():
    wrong = []
    for module in modules():
        layer = layer_of(module)
        if layer not in FORBIDDEN:
            continue
        path = PKG.parent / (module.replace(".", "/") + ".py")
        if not path.exists():
            path = PKG.parent / module.replace(".", "/") / "__init__.py"
        for imported in runtime_imports(path, module):
            if layer_of(imported) in FORBIDDEN[layer]:
                wrong.append(f"{module} imports {imported}")
    assert not wrong, "imports against the flow of data:\n" + "\n".join(wrong)


@pytest.mark.parametrize("module", modules())
def test_each_module_imports_alone(module):
    res = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
