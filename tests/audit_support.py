"""What the audit fault tests share: databases with the table, reading rows back, verify."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from flask import Flask, jsonify
from sqlalchemy import select, text

from flask_resilience.audit.migrate import upgrade
from flask_resilience.audit.table import audit_log
from tests.conftest import MakeApp

ROOT = Path(__file__).parent.parent


def migrated(url: str) -> str:
    engine = sqlalchemy.create_engine(url)
    upgrade(engine)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM resilience_audit_log"))
        connection.execute(text("DELETE FROM resilience_audit_checkpoint"))  # of earlier tests' chains
    engine.dispose()
    return url


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def any_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return migrated(f"sqlite:///{tmp_path / 'audit.db'}")
    return migrated(request.getfixturevalue("mysql_url" if request.param == "mariadb" else "postgres_url"))


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return migrated(f"sqlite:///{tmp_path / 'audit.db'}")
    return migrated(request.getfixturevalue("postgres_url"))


LIFECYCLE = ("CHAIN_OPENED", "CHAIN_CLOSED")


def stored(url: str, *, lifecycle: bool = False) -> list[dict[str, Any]]:
    """The stored rows by chain and seq; without the writers' own CHAIN_OPENED /
    CHAIN_CLOSED records unless ``lifecycle`` (verify checks those)."""
    engine = sqlalchemy.create_engine(url)
    query = select(audit_log).order_by(audit_log.c.chain_id, audit_log.c.seq)
    if not lifecycle:
        query = query.where(audit_log.c.event_type.not_in(LIFECYCLE))
    with engine.connect() as connection:
        rows = [dict(row._mapping) for row in connection.execute(query)]
    engine.dispose()
    return rows


def verify_ok(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["resilience", "audit", "verify"])
    assert result.exit_code == 0, result.output


def run_child(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args], cwd=ROOT, timeout=timeout, check=False
    )


def hostile_app(make_app: MakeApp, url: str, **config: Any) -> Flask:
    app, extension = make_app(RESILIENCE_AUDIT_DATABASE_URI=url, **config)
    extension.audit_blueprint("/api")

    @app.route("/api/<path:anything>", methods=["GET", "POST"])
    def anything(anything: str) -> Any:
        return jsonify(ok=True)

    return app
