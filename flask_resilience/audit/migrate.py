"""Apply Flask-Resilience's Alembic migrations to an engine."""

from __future__ import annotations

import importlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine


def script_location() -> Path:
    """Where the migrations are: ``migrations/`` in a checkout, inside the wheel when installed."""
    module = importlib.import_module("flask_resilience.migrations")
    return Path(str(module.__file__)).parent


def alembic_config(engine: Engine) -> Config:
    """An Alembic config pointing at the shipped migrations and ``engine``."""
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    url = engine.url.render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)
