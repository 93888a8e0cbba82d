"""Apply Flask-Resilience's Alembic migrations to an engine, and check they were."""

from __future__ import annotations

import importlib
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from .partitions import convert


def script_location() -> Path:
    """Where the migrations are: ``migrations/`` in a checkout, inside the wheel when installed."""
    module = importlib.import_module("flask_resilience.migrations")
    return Path(str(module.__file__)).parent


def alembic_config(url: URL, stdout: TextIO | None = None) -> Config:
    """An Alembic config pointing at the shipped migrations and ``url``;
    messages and offline SQL go to ``stdout`` (default: the current sys.stdout)."""
    out = stdout if stdout is not None else sys.stdout
    config = Config(stdout=out, output_buffer=out)
    config.set_main_option("script_location", str(script_location()))
    config.set_main_option("sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%"))
    return config


def _run(engine: Engine, action: str, revision: str) -> None:
    config = alembic_config(engine.url)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, action)(config, revision)


def upgrade(engine: Engine, revision: str = "head", partition: str = "none") -> None:
    """Migrate to ``revision``; then, with ``partition`` month or day on
    PostgreSQL, make the log partitioned (once; its rows kept)."""
    _run(engine, "upgrade", revision)
    if partition != "none" and engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            convert(connection, partition, datetime.now(UTC))


def downgrade(engine: Engine, revision: str = "base") -> None:
    _run(engine, "downgrade", revision)


def stamp(engine: Engine, revision: str) -> None:
    _run(engine, "stamp", revision)


def current(engine: Engine) -> None:
    """Print the revision the database is at."""
    config = alembic_config(engine.url)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.current(config, verbose=False)


def history() -> None:
    """Print the shipped revisions, newest first."""
    command.history(alembic_config(URL.create("sqlite")))


def upgrade_sql(url: URL, revision: str = "head") -> None:
    """Print the SQL of an upgrade instead of running it (for a DBA to apply)."""
    start_to_end = revision if ":" in revision else f"base:{revision}"
    command.upgrade(alembic_config(url), start_to_end, sql=True)
