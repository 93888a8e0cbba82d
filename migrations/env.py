"""Alembic environment for Flask-Resilience's own tables.

Its version table is ``resilience_alembic_version``, so it never collides
with the application's own migrations in the same database.
"""

from __future__ import annotations

import os

from alembic import context
from flask_resilience.migrations.include import VERSION_TABLE
from sqlalchemy import Connection, create_engine, inspect, text

from flask_resilience.audit.table import metadata

config = context.config
# Revision ids before they were made unique (an app's own "0001" collided with ours).
RENAMED = {"0001": "fr_0001_audit_log"}


def _rename_old_revisions(connection: Connection) -> None:
    if not inspect(connection).has_table(VERSION_TABLE):
        return
    for old, new in RENAMED.items():
        connection.execute(
            text(f"UPDATE {VERSION_TABLE} SET version_num = :new WHERE version_num = :old"),  # noqa: S608
            {"new": new, "old": old},
        )


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


def _run_on(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
    with context.begin_transaction():
        _rename_old_revisions(connection)
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    engine = create_engine(_url())
    with engine.connect() as connection:
        _run_on(connection)
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
