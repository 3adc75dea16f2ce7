"""The documentation says what the code does: every setting and environment variable the package
reads is in the settings reference, and the README's links land on pages and headings that exist.

The site itself is built by tests/run.py (``sphinx -W -n``: a broken link between pages fails it);
these tests hold the parts that a build cannot see.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ws4redis import settings as ws4redis_settings

pytestmark = pytest.mark.once  # the same in both suite runs: tests/run.py runs it once

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# How settings are named where the package reads them.
SETTING_NAME = re.compile(r"\b(WS4REDIS_[A-Z0-9_]*[A-Z0-9]|WEBSOCKET_URL|WEBSOCKET_HOST)\b")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def load_conf():
    namespace: dict[str, object] = {"__file__": str(DOCS / "conf.py")}
    exec(compile((DOCS / "conf.py").read_text(), str(DOCS / "conf.py"), "exec"), namespace)
    return namespace


def names_read_by_the_package() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "ws4redis").rglob("*.py"):
        names.update(SETTING_NAME.findall(path.read_text()))
    names.update(SETTING_NAME.findall((ROOT / "setup.py").read_text()))
    return names


def test_the_settings_reference_is_generated_with_every_setting_its_default_and_its_readers():
    reference = load_conf()["settings_reference"]()
    sections = reference.split("### ")[1:]

    assert len(sections) == len(ws4redis_settings.SETTINGS) == len(ws4redis_settings.DEFAULTS)
    for setting, section in zip(ws4redis_settings.SETTINGS, sections, strict=True):
        heading, facts, meaning = [part.strip() for part in section.split("\n\n")[:3]]
        assert heading == f"`{setting.name}`"
        assert facts.startswith(f"**Default** `{ws4redis_settings.DEFAULTS[setting.name]!r}` · **Value** ")
        assert setting.kind and setting.read_by and meaning == setting.doc, f"{setting.name} is incomplete"


def test_every_name_the_package_reads_is_documented_in_the_settings_page():
    page = (DOCS / "settings.md").read_text()
    documented = {setting.name for setting in ws4redis_settings.SETTINGS} | set(SETTING_NAME.findall(page))
    read = names_read_by_the_package() - {"WS4REDIS_EXPECT_COMPILED"}  # the test suite's own switch

    assert sorted(read - documented) == []


def test_every_setting_the_validation_checks_is_in_the_reference():
    source = Path(ws4redis_settings.__file__).read_text()
    validation = source[source.index("def validate_settings"):]
    checked = set(SETTING_NAME.findall(validation))
    for helper in ("compression", "history", "subscriber_class", "_check_connection", "_check_websocket_url",
                   "_check_prefix", "_check_allowed_origins", "_check_monitoring"):
        body = source[source.index(f"def {helper}("):]
        checked.update(SETTING_NAME.findall(body[: body.index("\ndef ")]))

    assert checked and sorted(checked - set(ws4redis_settings.DEFAULTS)) == []


def heading_anchors(markdown: str) -> set[str]:
    """The anchors MyST and GitHub give a page's headings: lower case, punctuation dropped, '-' for spaces."""
    anchors = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (match := re.match(r"#{1,6} (.+)", line)):
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


@pytest.mark.parametrize("page", ["README.md"])
def test_the_readme_links_to_pages_and_headings_that_exist(page):
    links = [link for link in MARKDOWN_LINK.findall((ROOT / page).read_text()) if "://" not in link]
    assert len(links) >= 10, "the README should point into docs/"

    broken = []
    for link in links:
        path, _, anchor = link.partition("#")
        target = ROOT / path
        if not target.is_file():
            broken.append(link)
        elif anchor and anchor not in heading_anchors(target.read_text()):
            broken.append(link)
    assert broken == []

