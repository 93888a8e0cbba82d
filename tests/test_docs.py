"""README.rst documents every config key with its default and seed alias."""

from __future__ import annotations

from pathlib import Path

import pytest

from flask_resilience.config import SETTINGS, Setting

README = (Path(__file__).parent.parent / "README.rst").read_text()
ROWS = {row.split("``", 1)[0]: row for row in README.split("   * - ``")[1:]}


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.key)
def test_readme_documents_the_key(setting: Setting[object]) -> None:
    row = ROWS.get(setting.key)
    assert row is not None, f"{setting.key} is missing from README.rst's configuration table"
    default = "unset" if setting.default is None else str(setting.default)
    assert default in row
    if setting.env:
        assert f"``{setting.env}``" in row


@pytest.mark.parametrize("name", ["README.rst", "CHANGES.rst"])
def test_restructuredtext_renders_without_warnings(name: str) -> None:
    import docutils.core

    text = (Path(__file__).parent.parent / name).read_text()
    docutils.core.publish_doctree(text, settings_overrides={"halt_level": 2, "report_level": 2})
