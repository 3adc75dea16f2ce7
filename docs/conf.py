"""Sphinx configuration: Markdown pages (MyST) with the Furo theme.

``python -m sphinx -W --keep-going -n -b html docs build/docs`` is the build tests/run.py runs:
every warning (a broken link between pages, a missing anchor, a page outside the table of
contents) fails it. The settings reference is written from ``ws4redis.settings.SETTINGS`` at
build time (see ``settings_reference``), so it cannot drift from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ws4redis  # noqa: E402

project = "ws4redis"
author = "ws4redis developers"
release = version = ws4redis.__version__
copyright = "ws4redis developers"

extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]
html_theme = "furo"
html_title = f"ws4redis {release}"
suppress_warnings: list[str] = []

SETTINGS_MARKER = "<!-- settings-reference -->"


def settings_reference() -> str:
    """A Markdown section per setting of ``ws4redis.settings.SETTINGS``: default, value, readers, meaning."""
    from ws4redis.settings import SETTINGS

    sections = []
    for setting in SETTINGS:
        sections.append(
            f"### `{setting.name}`\n\n"
            f"**Default** `{setting.default!r}` · **Value** {setting.kind} · "
            f"**Read by** {setting.read_by}\n\n"
            f"{setting.doc}\n"
        )
    return "\n".join(sections)


def _insert_settings(app: Any, docname: str, source: list[str]) -> None:
    if SETTINGS_MARKER in source[0]:
        source[0] = source[0].replace(SETTINGS_MARKER, settings_reference())


def setup(app: Any) -> dict[str, Any]:
    app.connect("source-read", _insert_settings)
    return {"parallel_read_safe": True}
