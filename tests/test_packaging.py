"""Every subpackage is listed in setup.cfg, so the wheel ships all of it."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_setup_cfg_lists_every_package() -> None:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    listed = set(parser["options"]["packages"].split())
    found = {
        ".".join(path.relative_to(ROOT).parent.parts)
        for path in (ROOT / "flask_resilience").rglob("__init__.py")
    }
    found |= {"flask_resilience.migrations", "flask_resilience.migrations.versions"}
    assert listed == found


def _setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def _requirements(text: str) -> set[str]:
    return {
        line.split(">", 1)[0].split("[", 1)[0].strip().lower() for line in text.split("\n") if line.strip()
    }


def test_core_install_does_not_need_flask_caching() -> None:
    """Flask-Caching is only needed by apps that hand over a Cache: an extra."""
    parser = _setup_cfg()
    assert "flask-caching" not in _requirements(parser["options"]["install_requires"])
    extras = parser["options.extras_require"]
    assert "flask-caching" in _requirements(extras["flask-caching"])
    assert "flask-caching" in _requirements(extras["test"])


def test_the_package_never_imports_flask_caching() -> None:
    for path in (ROOT / "flask_resilience").rglob("*.py"):
        text = path.read_text()
        assert "import flask_caching" not in text and "from flask_caching" not in text, path


def test_async_and_docs_extras() -> None:
    extras = _setup_cfg()["options.extras_require"]
    assert extras["async"].split() == ["flask[async]>=3.0"]
    assert "sphinx" in _requirements(extras["docs"])


def test_metadata_names_urls_and_python_versions() -> None:
    metadata = _setup_cfg()["metadata"]
    urls = {
        name.strip(): url.strip()
        for name, _, url in (line.partition("=") for line in metadata["project_urls"].split("\n") if line)
    }
    assert {"Documentation", "Changes", "Source", "Issue Tracker"} <= urls.keys()
    assert all(url.startswith("https://") for url in urls.values())
    classifiers = metadata["classifiers"].split("\n")
    for version in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in classifiers
