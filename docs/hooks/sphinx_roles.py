"""MkDocs hook: drops the Sphinx roles (``:func:``, ``:class:`` ...) that the docstrings put before names.

The docstrings cross-reference in Sphinx style, ``:func:`jax_adalora.merge```; Markdown renders the name as
code and would leave ``:func:`` in front of it as text. The roles carry no meaning for a reader of the site.
"""

from __future__ import annotations

import re

SPHINX_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|data|mod|attr|obj|exc):(?=<code>)")


def drop_sphinx_roles(html: str) -> str:
    """``html`` without Sphinx role prefixes in front of ``<code>`` elements.

    Args:
      html: a rendered page.

    Returns:
      The page with every ``:role:<code>`` turned into ``<code>``.
    """
    return SPHINX_ROLE.sub("", html)


def on_page_content(html: str, page, config, files) -> str:
    """MkDocs event: cleans every rendered page."""
    return drop_sphinx_roles(html)
