"""mkdocs hook: expand `<!-- public-api driftax.x -->` into one mkdocstrings block per public name.

The public names of a package are its explicit re-exports in `__init__.py`
(`from ._x import Name as Name`), read with `ast` (nothing is imported), so a new public class or
function appears in the API reference without editing the page. Griffe does not count these
re-exports as public (the packages have no `__all__`), which is why the pages list them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!-- public-api (driftax(?:\.\w+)*) -->$", re.M)


def public_names(package: str) -> list[str]:
    """The names `package/__init__.py` re-exports as `name as name` (its documented surface)."""
    init = ROOT.joinpath(*package.split("."), "__init__.py")
    names = []
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.asname == alias.name and not alias.name.startswith("_"):
                    names.append(alias.name)
    return names


def _expand(match: re.Match) -> str:
    package = match.group(1)
    blocks = [f"::: {package}.{name}" for name in sorted(public_names(package), key=str.lower)]
    return "\n\n".join(blocks)


def on_page_markdown(markdown, page, config, files):  # noqa: ARG001 - mkdocs hook signature
    return MARKER.sub(_expand, markdown)
