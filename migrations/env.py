"""Alembic environment for Flask-Resilience's own tables.

Its version table is ``resilience_alembic_version``, so it never collides
with the application's own migrations in the same database.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from flask_resilience.audit.table import metadata

VERSION_TABLE = "resilience_alembic_version"
config = context.config


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("RESILIENCE_AUDIT_DATABASE_URI")
    if not url:
        raise RuntimeError("set RESILIENCE_AUDIT_DATABASE_URI (or sqlalchemy.url) to the audit database")
    return url


def run_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=metadata,
        literal_binds=True,
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(_url())
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
