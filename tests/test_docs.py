"""The documentation cannot drift from the code: its Python blocks run, its references list everything.

Every ```python block of README.md and of the getting-started page runs as a script. A block may be skipped
only when an HTML comment right above it says ``docs-test: skip`` and why, and the reason must be that it needs
the network or a long run.
"""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

import jax_adalora as jal
from jax_adalora.cli.run_config import build_parser

ROOT = Path(__file__).resolve().parent.parent
EXECUTED_PAGES = ("README.md", "docs/getting-started.md")
BLOCK = re.compile(r"(?:<!--\s*docs-test:\s*skip\s*(?P<reason>[^>]*?)\s*-->\s*\n)?```python\n(?P<code>.*?)```", re.S)
ALLOWED_SKIP_REASONS = ("network", "long run")


def _python_blocks(page: str) -> list[tuple[str, str, str | None]]:
    """``(id, code, skip reason or None)`` for every Python block of a page, in order."""
    text = (ROOT / page).read_text()
    return [(f"{page}#{i}", m["code"], m["reason"]) for i, m in enumerate(BLOCK.finditer(text))]


BLOCKS = [block for page in EXECUTED_PAGES for block in _python_blocks(page)]


def _hook_module(name="cli_reference"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_executed_page_has_python_blocks():
    for page in EXECUTED_PAGES:
        assert _python_blocks(page), f"{page} has no ```python block"


@pytest.mark.parametrize("block_id, code, skip_reason", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_python_block_runs(block_id, code, skip_reason, monkeypatch, capsys):
    """Runs the block as a script (``__name__ == "__main__"``, no command-line arguments)."""
    if skip_reason is not None:
        assert any(word in skip_reason for word in ALLOWED_SKIP_REASONS), (
            f"{block_id}: a block may be skipped only if it needs the network or a long run, not {skip_reason!r}"
        )
        pytest.skip(f"{block_id}: {skip_reason}")
    monkeypatch.setattr(sys, "argv", [block_id])
    exec(compile(code, block_id, "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out.strip(), f"{block_id} printed nothing; every block shows its result"


def test_cli_reference_lists_every_flag_of_the_parser():
    hook = _hook_module()
    parser = build_parser()
    table = hook.flag_table_markdown(parser)
    flags = [flag for action in parser._actions for flag in action.option_strings if flag not in ("-h", "--help")]
    assert len(flags) > 40
    missing = [flag for flag in flags if f"`{flag}" not in table]
    assert not missing, f"flags missing from the CLI reference: {missing}"
    page = (ROOT / "docs" / hook.CLI_PAGE).read_text()
    assert hook.PLACEHOLDER in page
    assert "docs/hooks/cli_reference.py" in (ROOT / "mkdocs.yml").read_text()


def test_cli_reference_hook_fills_only_its_page():
    hook = _hook_module()

    class Page:
        def __init__(self, src_uri):
            self.file = type("File", (), {"src_uri": src_uri})()

    filled = hook.on_page_markdown(f"# x\n{hook.PLACEHOLDER}\n", Page(hook.CLI_PAGE), None, None)
    assert hook.PLACEHOLDER not in filled and "`--score SCORE`" in filled and "`--stats {" in filled
    other = hook.on_page_markdown(f"# x\n{hook.PLACEHOLDER}\n", Page("index.md"), None, None)
    assert hook.PLACEHOLDER in other


def test_api_reference_names_every_public_name():
    page = (ROOT / "docs" / "reference" / "api.md").read_text()
    documented = set(re.findall(r"^::: jax_adalora\.(\w+)$", page, re.M))
    assert documented == set(jal.__all__), (
        f"missing: {sorted(set(jal.__all__) - documented)}, not public: {sorted(documented - set(jal.__all__))}"
    )


def test_sphinx_roles_are_dropped_before_code_only():
    hook = _hook_module("sphinx_roles")
    html = "see :func:<code>jal.merge</code> and :class:<code>Moments</code>; ratio 1:2 and :func: alone"
    assert (
        hook.drop_sphinx_roles(html)
        == "see <code>jal.merge</code> and <code>Moments</code>; ratio 1:2 and :func: alone"
    )
