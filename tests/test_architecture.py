"""Imports point down the data flow: docs/ARCHITECTURE.md's layer table, checked against every import."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "jax_adalora"


def _layers() -> dict[str, int]:
    table = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    rows = re.findall(r"^\| (\d+) \| `([\w/]+)` \|", table, flags=re.M)
    return {name.rstrip("/"): int(layer) for layer, name in rows}


def _unit(module: str) -> str:
    """'jax_adalora.models.bert' -> 'models'; 'jax_adalora.step' -> 'step'."""
    return module.split(".")[1]


def _file_unit(path: Path) -> str:
    """jax_adalora/step.py -> 'step'; jax_adalora/models/llama/weights.py -> 'models' (a folder at any depth is
    part of its top-level package folder)."""
    return path.stem if path.parent == PACKAGE else path.relative_to(PACKAGE).parts[0]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jax_adalora."):
            found.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.module == "jax_adalora":
            found.update(f"jax_adalora.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("jax_adalora."))
    return found


def test_every_module_is_in_the_table():
    layers = _layers()
    units = {_file_unit(p) for p in PACKAGE.rglob("*.py")} - {"__init__", "__main__"}
    assert units <= set(layers), sorted(units - set(layers))


def test_imports_point_down_the_flow():
    layers = _layers()
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__init__.py" and path.parent == PACKAGE:
            continue
        unit = _file_unit(path)
        for module in _imports(path):
            target = _unit(module)
            if target != unit and layers[target] >= layers[unit]:
                wrong.append(f"{path.relative_to(ROOT)} imports {module} (layer {layers[target]} >= {layers[unit]})")
    assert not wrong, "\n".join(wrong)


def test_the_public_api_imports_no_command_line_module():
    top = _imports(PACKAGE / "__init__.py")
    assert all(_layers()[_unit(m)] <= 6 for m in top), top
