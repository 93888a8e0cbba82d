"""Sphinx configuration: ``sphinx-build -W -b html docs docs/_build/html``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx

from flask_resilience import __version__

DOCS = Path(__file__).parent
sys.path.insert(0, str(DOCS / "_ext"))

project = "Flask-Resilience"
author = "Flask-Resilience contributors"
copyright = "Flask-Resilience contributors"
release = __version__
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc", "config_table"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": False}
exclude_patterns = ["_build"]
templates_path: list[str] = []
html_theme = "alabaster"
html_static_path = ["_static"]
html_title = f"Flask-Resilience {release}"
html_theme_options = {"description": "Resilience primitives for production Flask APIs"}
suppress_warnings = ["config.cache"]  # setup() below is not picklable; nothing to cache anyway

# Pages another change may add; listed in the toctree when they exist.
OPTIONAL_PAGES = {"front-tier": "cache"}


def _optional_pages(app: Sphinx, docname: str, source: list[str]) -> None:
    """Put each optional page that exists in the index's toctree, after its parent page."""
    if docname != "index":
        return
    for page, after in OPTIONAL_PAGES.items():
        if (DOCS / f"{page}.rst").exists():
            source[0] = source[0].replace(f"\n   {after}\n", f"\n   {after}\n   {page}\n", 1)


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("source-read", _optional_pages)
    return {"parallel_read_safe": True}
