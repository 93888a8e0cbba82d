"""Our migrations inside an app that has its own (Flask-Migrate), and the
``flask resilience db`` commands."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import flask_migrate
import pytest
import sqlalchemy
from flask import Flask
from flask_resilience.migrations import include_name, include_object
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text

from flask_resilience import AuditEventType, Resilience, log_auth_event
from flask_resilience.audit.migrate import script_location, stamp, upgrade
from flask_resilience.audit.service import AppAudit
from flask_resilience.audit.table import missing_tables
from tests.conftest import MakeApp


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The env.py Flask-Migrate generates runs logging.config.fileConfig, which
    disables every logger already created: undo that for the tests that follow."""
    loggers = [
        logger for logger in logging.root.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    disabled = {logger: logger.disabled for logger in loggers}
    level, handlers = logging.root.level, list(logging.root.handlers)
    yield
    for logger, was_disabled in disabled.items():
        logger.disabled = was_disabled
    logging.root.setLevel(level)
    logging.root.handlers[:] = handlers


@contextmanager
def scratch_schema(postgres_url: str, prefix: str) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL schema, dropped afterwards."""
    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(postgres_url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = sqlalchemy.engine.make_url(postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with nothing in it (PostgreSQL: a schema of its own)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'app.db'}"
        return
    with scratch_schema(request.getfixturevalue("postgres_url"), "rt_mig") as url:
        yield url


def _flask_migrate_app(url: str, directory: Path, **migrate_options: Any) -> tuple[Flask, SQLAlchemy]:
    app = Flask("app_with_migrations", instance_path=str(directory.parent / "instance"))
    app.config.update(SQLALCHEMY_DATABASE_URI=url, TESTING=True, SECRET_KEY="s")
    db = SQLAlchemy(app)

    class Booking(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "bookings"
        id = db.Column(db.Integer, primary_key=True)
        seat = db.Column(db.String(8))

    flask_migrate.Migrate(app, db, directory=str(directory), **migrate_options)
    Resilience(app)
    return app, db


def _autogenerate(app: Flask, directory: Path, message: str) -> str:
    """The script ``flask db migrate`` writes ("" when it finds nothing to do)."""
    with app.app_context():
        flask_migrate.migrate(directory=str(directory), message=message)
    scripts = [path.read_text() for path in (directory / "versions").glob("*.py") if message in path.name]
    return "".join(scripts)


# Flask-Migrate's generated env.py still tries Flask-SQLAlchemy's deprecated get_engine() first.
GET_ENGINE = pytest.mark.filterwarnings("ignore:'get_engine' is deprecated:DeprecationWarning")


@GET_ENGINE
@pytest.mark.parametrize("hook", ["include_name", "include_object"])
def test_autogenerate_in_the_apps_own_migrations_leaves_our_tables_alone(
    empty_url: str, tmp_path: Path, hook: str
) -> None:
    directory = tmp_path / "migrations"
    filters: dict[str, Any] = {hook: include_name if hook == "include_name" else include_object}
    app, db = _flask_migrate_app(empty_url, directory, **filters)
    with app.app_context():
        flask_migrate.init(directory=str(directory))
        engine = AppAudit.of(app).engine()
        upgrade(engine)  # flask resilience db upgrade
        assert not missing_tables(engine)
        first = _autogenerate(app, directory, "bookings")
        assert "op.create_table('bookings'" in first
        assert "resilience" not in first
        flask_migrate.upgrade(directory=str(directory))
        assert "resilience" not in _autogenerate(app, directory, "nothing_new")
        db.engine.dispose()


@GET_ENGINE
def test_without_the_filter_autogenerate_would_drop_our_tables(empty_url: str, tmp_path: Path) -> None:
    """Why the filter exists (and proof the test above can fail)."""
    directory = tmp_path / "migrations"
    app, db = _flask_migrate_app(empty_url, directory)
    with app.app_context():
        flask_migrate.init(directory=str(directory))
        upgrade(AppAudit.of(app).engine())
        script = _autogenerate(app, directory, "unfiltered")
        db.engine.dispose()
    assert "op.drop_table('resilience_audit_log')" in script


def test_revision_ids_are_our_own() -> None:
    versions = (script_location() / "versions").glob("*.py")
    names = sorted(path.stem for path in versions if path.stem != "__init__")
    assert names == ["fr_0001_audit_log", "fr_0002_audit_integrity", "fr_0003_utf8mb4"]


def test_a_database_at_the_old_revision_id_upgrades(empty_url: str) -> None:
    engine = sqlalchemy.create_engine(empty_url)
    upgrade(engine, "fr_0001_audit_log")
    with engine.begin() as connection:  # as the releases before the rename left it
        connection.execute(text("UPDATE resilience_alembic_version SET version_num = '0001'"))
    upgrade(engine)
    with engine.connect() as connection:
        version = connection.execute(text("SELECT version_num FROM resilience_alembic_version")).scalar_one()
    assert version == "fr_0003_utf8mb4"
    assert not missing_tables(engine)
    engine.dispose()


def test_db_current_history_stamp_and_offline_sql(make_app: MakeApp, empty_url: str) -> None:
    app, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=empty_url)
    runner = app.test_cli_runner()
    offline = runner.invoke(args=["resilience", "db", "upgrade", "--sql"])
    assert offline.exit_code == 0, offline.output
    assert "CREATE TABLE resilience_audit_log" in offline.output
    assert "CREATE TABLE resilience_audit_checkpoint" in offline.output
    engine = sqlalchemy.create_engine(empty_url)
    assert missing_tables(engine)  # printed, not run
    upgraded = runner.invoke(args=["resilience", "db", "upgrade"])
    assert upgraded.exit_code == 0, upgraded.output
    assert f"migrating {engine.url.render_as_string(hide_password=True)}" in upgraded.output
    assert "fr_0003_utf8mb4 (head)" in runner.invoke(args=["resilience", "db", "current"]).output
    history = runner.invoke(args=["resilience", "db", "history"]).output
    assert "fr_0002_audit_integrity -> fr_0003_utf8mb4 (flask_resilience) (head)" in history
    assert "fr_0001_audit_log -> fr_0002_audit_integrity (flask_resilience)" in history
    stamped = runner.invoke(args=["resilience", "db", "stamp", "fr_0001_audit_log"])
    assert stamped.exit_code == 0, stamped.output
    assert "fr_0001_audit_log" in runner.invoke(args=["resilience", "db", "current"]).output
    stamp(engine, "head")
    engine.dispose()


def test_db_upgrade_refuses_an_unreachable_configured_database(make_app: MakeApp, tmp_path: Path) -> None:
    url = "postgresql+psycopg://postgres:s3cret@127.0.0.1:1/test?connect_timeout=2"
    app, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=url)
    result = app.test_cli_runner().invoke(args=["resilience", "db", "upgrade"])
    assert result.exit_code == 1
    assert "cannot reach postgresql+psycopg://postgres:***@127.0.0.1:1/test" in result.output
    assert "s3cret" not in result.output
    assert not (tmp_path / "instance" / "resilience-audit.db").exists()


def test_db_upgrade_says_when_it_uses_the_instance_folder_sqlite(make_app: MakeApp) -> None:
    app, _ = make_app()
    result = app.test_cli_runner().invoke(args=["resilience", "db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert "no database configured: using the instance-folder SQLite" in result.output


def test_a_missing_table_is_one_clear_error_without_sql(
    make_app: MakeApp, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with scratch_schema(postgres_url, "rt_none") as url:
        app, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=url)
        with caplog.at_level(logging.ERROR, logger="flask_resilience"), app.app_context():
            for user in (1, 2):
                log_auth_event(AuditEventType.LOGIN, user_id=user)
                AppAudit.of(app).writer.flush()
        AppAudit.of(app).engine().dispose()
    logged = [record.getMessage() for record in caplog.records]
    named = [message for message in logged if "flask resilience db upgrade" in message]
    assert len(named) == 1
    assert "resilience_audit_log" in named[0]
    assert not [message for message in logged if "INSERT" in message or "%(" in message or "COPY" in message]


def test_the_flask_commands_entry_point_is_the_root_group_with_each_features_subgroups() -> None:
    from importlib.metadata import entry_points

    (entry,) = [entry for entry in entry_points(group="flask.commands") if entry.name == "resilience"]
    assert entry.value == "flask_resilience.cli:resilience"
    group = entry.load()
    assert {"audit", "db"} <= set(group.commands)
    assert {"upgrade", "downgrade", "current", "history", "stamp"} <= set(group.commands["db"].commands)
