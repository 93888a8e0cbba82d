"""``flask resilience db upgrade|downgrade|current|history|stamp``: the audit tables' migrations."""

from __future__ import annotations

import click
from flask.cli import AppGroup
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from ..config import AUDIT_PARTITION
from ..state import get_state
from . import migrate
from .service import current_audit
from .table import masked

db = AppGroup("db", help="Apply Flask-Resilience's database migrations (its own version table).")


def _database() -> Engine:
    """The audit database, reachable; says which one, and never falls back to
    the instance-folder SQLite when a database was configured."""
    app_audit = current_audit()
    configured = app_audit.database.engine()
    engine = app_audit.engine()
    if configured is None:
        click.echo(f"no database configured: using the instance-folder SQLite {masked(engine.url)}")
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as exc:
        problem = type(getattr(exc, "orig", None) or exc).__name__
        raise click.ClickException(f"cannot reach {masked(engine.url)} ({problem})") from None
    return engine


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.option("--sql", is_flag=True, help="Print the SQL for a DBA instead of running it.")
def db_upgrade(revision: str, sql: bool) -> None:
    """Create or update the audit tables."""
    if sql:
        migrate.upgrade_sql(current_audit().engine().url, revision)
        return
    engine = _database()
    click.echo(f"migrating {masked(engine.url)}")
    partition = get_state().config[AUDIT_PARTITION]
    migrate.upgrade(engine, revision, partition)
    click.echo(
        f"flask-resilience tables at {revision}"
        + (f", partitioned by {partition}" if partition != "none" else "")
    )


@db.command("downgrade")
@click.option("--revision", default="base", show_default=True)
def db_downgrade(revision: str) -> None:
    """Undo migrations (base drops the audit tables)."""
    engine = _database()
    click.echo(f"migrating {masked(engine.url)}")
    migrate.downgrade(engine, revision)
    click.echo(f"flask-resilience tables at {revision}")


@db.command("current")
def db_current() -> None:
    """Show the revision the audit database is at."""
    migrate.current(_database())


@db.command("history")
def db_history() -> None:
    """List Flask-Resilience's revisions."""
    migrate.history()


@db.command("stamp")
@click.argument("revision")
def db_stamp(revision: str) -> None:
    """Record REVISION as applied without running it (tables created by hand)."""
    migrate.stamp(_database(), revision)
    click.echo(f"flask-resilience tables stamped at {revision}")
