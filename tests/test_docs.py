"""The documentation: it builds with ``-W``, its configuration table covers every
key, and every Python code block of README.rst and ``docs/*.rst`` runs as
written (fragments, marked as CONTRIBUTING.rst says, at least compile)."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from flask_resilience.config import SETTINGS, Setting

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
FRAGMENT_MARK = ".. fragment"
_CODE_BLOCK = re.compile(r"^(?P<indent>\s*)\.\. code-block:: python\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based, of the directive
    code: str
    fragment: bool

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def python_blocks(path: Path) -> list[Block]:
    """Every ``.. code-block:: python`` of ``path``; a block whose directive
    follows a comment starting with ``.. fragment`` is a fragment."""
    lines = path.read_text().split("\n")
    blocks = []
    for number, line in enumerate(lines):
        match = _CODE_BLOCK.match(line)
        if match is None:
            continue
        indent = len(match.group("indent"))
        body: list[str] = []
        for following in lines[number + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            body.append(following)
        before = [text.strip() for text in lines[:number] if text.strip()]
        fragment = bool(before) and before[-1].startswith(FRAGMENT_MARK)
        blocks.append(Block(path, number + 1, textwrap.dedent("\n".join(body)).strip() + "\n", fragment))
    return blocks


def documentation_files() -> list[Path]:
    return [ROOT / "README.rst", *sorted(DOCS.glob("*.rst"))]


BLOCKS = [block for path in documentation_files() for block in python_blocks(path)]
RUNNABLE = [block for block in BLOCKS if not block.fragment]
FRAGMENTS = [block for block in BLOCKS if block.fragment]


def test_the_runner_finds_the_blocks() -> None:
    assert len(RUNNABLE) >= 10, [block.name for block in BLOCKS]
    assert any(block.path.name == "README.rst" for block in RUNNABLE)


def test_fragments_are_few() -> None:
    assert len(FRAGMENTS) <= 5, [block.name for block in FRAGMENTS]


def test_fragments_are_still_python() -> None:
    for block in FRAGMENTS:
        ast.parse(block.code, filename=block.name)


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda block: block.name)
def test_code_block_runs_as_written(block: Block, tmp_path: Path, redis_url: str, key_prefix: str) -> None:
    """Each block runs alone in a fresh interpreter, in an empty folder (SQLite
    lands there), against the test Redis under this test's key prefix."""
    script = tmp_path / "snippet.py"
    script.write_text(block.code)
    env = {
        **os.environ,
        "RESILIENCE_REDIS_URL": redis_url,
        "RESILIENCE_KEY_PREFIX": key_prefix,
        "PYTHONWARNINGS": "error::DeprecationWarning",
    }
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{block.name} failed:\n{result.stderr[-3000:]}"


# -- the configuration table ---------------------------------------------------------------


def _config_table() -> ModuleType:
    spec = importlib.util.spec_from_file_location("config_table", DOCS / "_ext" / "config_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.key)
def test_the_generated_table_documents_the_key(setting: Setting[object]) -> None:
    table = _config_table()
    text = "\n".join(table.table_lines())
    rows = {row.split("``", 1)[0]: row for row in text.split("   * - ``")[1:]}
    row = rows.get(setting.key)
    assert row is not None
    assert table.default_text(setting) in row
    assert ("unset" if setting.default is None else repr(setting.default)) in row
    if setting.env:
        assert f"``{setting.env}``" in row
    assert f"``{table.type_name(setting)}``" in row
    assert setting.doc in row


def test_every_key_the_docs_name_exists() -> None:
    """A renamed or removed key must not live on in the docs (the test
    suite's own RESILIENCE_TEST_* variables are not configuration keys)."""
    keys = {setting.key for setting in SETTINGS}
    named = {
        (path.name, name)
        for path in documentation_files()
        for name in re.findall(r"\bRESILIENCE_[A-Z0-9_]*[A-Z0-9]\b", path.read_text())
        if not name.startswith("RESILIENCE_TEST_")
    }
    assert {(page, name) for page, name in named if name not in keys} == set()


def test_configuration_page_uses_the_generated_table() -> None:
    page = (DOCS / "configuration.rst").read_text()
    assert ".. resilience-config-table::" in page
    assert "RESILIENCE_CACHE_DEFAULT_TTL" not in page.split(".. resilience-config-table::")[1]


# -- the build ---------------------------------------------------------------------------------


def test_docs_build_without_warnings(tmp_path: Path) -> None:
    out = tmp_path / "html"
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(DOCS), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    configuration = (out / "configuration.html").read_text()
    assert all(setting.key in configuration for setting in SETTINGS)
    api = (out / "api.html").read_text()
    import flask_resilience

    documented = set(re.findall(r'id="flask_resilience\.(\w+)"', api))
    assert set(flask_resilience.__all__) - {"__version__"} <= documented


def test_optional_pages_join_the_toctree_when_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importlib.util.spec_from_file_location("docs_conf", DOCS / "conf.py")
    assert spec is not None and spec.loader is not None
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    index = (DOCS / "index.rst").read_text()
    monkeypatch.setattr(conf, "DOCS", tmp_path)
    source = [index]
    conf._optional_pages(None, "index", source)
    assert "front-tier" not in source[0]
    (tmp_path / "front-tier.rst").write_text("Front tier\n==========\n")
    conf._optional_pages(None, "index", source)
    assert "\n   cache\n   front-tier\n" in source[0]


@pytest.mark.parametrize("name", ["README.rst", "CHANGES.rst"])
def test_restructuredtext_renders_without_warnings(name: str) -> None:
    import docutils.core

    text = (ROOT / name).read_text()
    docutils.core.publish_doctree(text, settings_overrides={"halt_level": 2, "report_level": 2})
