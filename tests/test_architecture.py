"""Imports point down the data flow: docs/ARCHITECTURE.md's layer table and part rules, checked against every import."""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "jax_adalora"
# Parts whose modules import nothing of jax_adalora outside their own folder.
SELF_CONTAINED = ("models/", "tasks/")


def _layers() -> dict[str, int]:
    table = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    rows = re.findall(r"^\| (\d+) \| `([\w/]+)` \|", table, flags=re.M)
    return {name: int(layer) for layer, name in rows}


def _unit_of_parts(parts: list[str]) -> str:
    """['models', 'bert', 'modeling'] -> 'models/'; ['cli', 'train'] -> 'cli/train'; ['step'] -> 'step';
    a module of a library package (['adapters', 'einsum']) -> 'adapters'."""
    if parts[0] in ("models", "tasks"):
        return parts[0] + "/"
    if parts[0] == "cli":
        return "cli/" + parts[1] if len(parts) > 1 else "cli/"
    return parts[0]


def _unit_of_module(module: str) -> str:
    return _unit_of_parts(module.split(".")[1:])


def _unit_of_path(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return _unit_of_parts(parts)


def _part(unit: str) -> str:
    if unit in SELF_CONTAINED:
        return unit
    if unit.startswith("cli/"):
        return "command"
    if unit in ("train", "predict"):
        return "entry"
    return "library"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jax_adalora."):
            if node.module in ("jax_adalora.cli", "jax_adalora.models", "jax_adalora.tasks"):
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.module == "jax_adalora":
            found.update(f"jax_adalora.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("jax_adalora."))
    return found


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "__init__.py" or path == PACKAGE / "cli" / "__init__.py":
            continue
        yield path, _unit_of_path(path)


def test_every_module_is_in_the_table():
    layers = _layers()
    units = {unit for _, unit in _modules()}
    assert units <= set(layers), sorted(units - set(layers))


def test_imports_point_down_the_flow():
    layers = _layers()
    wrong = []
    for path, unit in _modules():
        for module in _imports(path):
            target = _unit_of_module(module)
            if target != unit and layers[target] >= layers[unit]:
                wrong.append(f"{path.relative_to(ROOT)} imports {module} (layer {layers[target]} >= {layers[unit]})")
    assert not wrong, "\n".join(wrong)


def test_each_part_imports_only_what_it_may():
    """The library never imports the command, the models or the tasks; models and tasks import only themselves;
    the entry points import only the command."""
    allowed = {
        "library": {"library"},
        "models/": {"models/"},
        "tasks/": {"tasks/"},
        "command": {"library", "models/", "tasks/", "command"},
        "entry": {"command"},
    }
    wrong = []
    for path, unit in _modules():
        part = _part(unit)
        for module in _imports(path):
            target_part = _part(_unit_of_module(module))
            if target_part not in allowed[part]:
                wrong.append(f"{path.relative_to(ROOT)} ({part}) imports {module} ({target_part})")
    assert not wrong, "\n".join(wrong)


def test_the_public_api_imports_only_the_library():
    top = _imports(PACKAGE / "__init__.py")
    assert top and all(_part(_unit_of_module(m)) == "library" for m in top), top


def test_import_jax_adalora_loads_neither_transformers_nor_datasets():
    code = (
        "import sys, jax_adalora; "
        "print(sorted(m for m in ('transformers', 'datasets', 'torch', 'jax_adalora.cli', 'jax_adalora.models', "
        "'jax_adalora.tasks') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
