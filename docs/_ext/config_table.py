"""``.. resilience-config-table::``: the configuration table, generated from
``flask_resilience.config.SETTINGS`` so that it never drifts from the code."""

from __future__ import annotations

import typing
from collections.abc import Iterable
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

from flask_resilience.config import SETTINGS, Setting


def type_name(setting: Setting[Any]) -> str:
    """What the key holds once parsed, from its parser's return annotation."""
    annotation = typing.get_type_hints(setting.parse).get("return")
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("collections.abc.", "").replace("typing.", "")


def default_text(setting: Setting[Any]) -> str:
    return "unset" if setting.default is None else f"``{setting.default!r}``"


def table_lines(settings: Iterable[Setting[Any]] = SETTINGS) -> list[str]:
    """The reStructuredText of the table: key, default, environment alias, type, help."""
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 30 12 16 14 28",
        "",
        "   * - Key",
        "     - Default",
        "     - Seed environment variable",
        "     - Type",
        "     - What it does",
    ]
    for setting in settings:
        lines += [
            f"   * - ``{setting.key}``",
            f"     - {default_text(setting)}",
            f"     - ``{setting.env}``" if setting.env else "     -",
            f"     - ``{type_name(setting)}``",
            f"     - {setting.doc}",
        ]
    return lines


class ConfigTable(SphinxDirective):
    has_content = False

    def run(self) -> list[nodes.Node]:
        container = nodes.container()
        self.state.nested_parse(StringList(table_lines(), source="flask_resilience.config"), 0, container)
        return list(container.children)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("resilience-config-table", ConfigTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
