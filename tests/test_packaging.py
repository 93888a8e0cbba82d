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
