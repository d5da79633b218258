"""MkDocs hook: writes the commands' flag tables into the CLI reference page at build time.

The tables come from :func:`jax_adalora.cli.run_config.build_parser` (training) and
:func:`jax_adalora.cli.predict.build_parser` (predictions), so the page lists every flag the parsers have, with
their help texts, in the parsers' groups. ``tests/test_docs.py`` checks that it does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

PLACEHOLDER = "<!-- cli-flag-table -->"
PREDICT_PLACEHOLDER = "<!-- predict-flag-table -->"
CLI_PAGE = "reference/cli.md"
GROUP_TITLES = {"options": "General", "adalora settings": "AdaLoRA settings", "optim settings": "Optimizer settings"}


def _cell(text: str) -> str:
    """Escapes a table cell: pipes and line breaks would end the cell or the row."""
    return " ".join(text.split()).replace("|", "\\|")


def _flag_names(action: argparse.Action) -> str:
    names = list(action.option_strings)
    if isinstance(action, argparse.BooleanOptionalAction):
        return " / ".join(f"`{n}`" for n in names)
    if action.nargs == 0:  # store_true and the like: a switch without a value
        return ", ".join(f"`{n}`" for n in names)
    value = "{" + ",".join(action.choices) + "}" if action.choices else (action.metavar or action.dest.upper())
    return ", ".join(f"`{n} {value}`" for n in names)


def flag_table_markdown(parser: argparse.ArgumentParser) -> str:
    """Markdown for every option of ``parser``: one section and table per argument group.

    Args:
      parser: the command's argument parser.

    Returns:
      Markdown text: a heading per group with a two-column table (flag, what it does).
    """
    parts = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        title = GROUP_TITLES.get(group.title, group.title[:1].upper() + group.title[1:])
        parts.append(f"## {title}\n\n| flag | what it does |\n|---|---|")
        parts.extend(f"| {_flag_names(a)} | {_cell((a.help or '').replace('%%', '%'))} |" for a in actions)
        parts.append("")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """MkDocs event: fills the placeholder of the CLI reference page."""
    if page.file.src_uri != CLI_PAGE:
        return markdown
    if str(REPO_ROOT) not in sys.path[:1]:  # document this checkout, not another installed copy
        sys.path.insert(0, str(REPO_ROOT))
    from jax_adalora.cli import predict
    from jax_adalora.cli.run_config import build_parser

    markdown = markdown.replace(PLACEHOLDER, flag_table_markdown(build_parser()))
    return markdown.replace(PREDICT_PLACEHOLDER, flag_table_markdown(predict.build_parser()))
