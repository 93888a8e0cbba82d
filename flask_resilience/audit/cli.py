"""``flask resilience audit verify|purge|export`` and ``flask resilience db upgrade|downgrade``."""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta
from typing import TextIO

import click
from flask.cli import AppGroup
from sqlalchemy import Engine

from ..config import AUDIT_HMAC_KEY
from ..state import get_state
from .events import AuditEventType
from .migrate import downgrade, upgrade
from .service import current_audit, table_exists
from .verify import PURGE_KEY, as_csv, as_jsonl, count_rows, export_rows, purge, verify

resilience = AppGroup("resilience", help="Flask-Resilience commands.")
audit = AppGroup("audit", help="Verify, purge and export the audit log.")
db = AppGroup("db", help="Apply Flask-Resilience's database migrations.")
resilience.add_command(audit)
resilience.add_command(db)

_AGE = re.compile(r"^(\d+)([dhm])$")


def parse_age(value: str) -> timedelta:
    """``90d``, ``12h`` or ``30m``."""
    match = _AGE.match(value.strip())
    if match is None:
        raise click.BadParameter("use a number followed by d, h or m, e.g. 90d")
    amount, unit = int(match.group(1)), match.group(2)
    return {"d": timedelta(days=amount), "h": timedelta(hours=amount), "m": timedelta(minutes=amount)}[unit]


def parse_since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.now(UTC).replace(tzinfo=None) - parse_age(value)
    except click.BadParameter:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter("use an ISO 8601 time or an age such as 7d") from None
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _audit_engine() -> Engine:
    """The audit database, with its table (the SQLite fallback migrates itself);
    a clear error instead of a traceback when the table was never created."""
    app_audit = current_audit()
    engine = app_audit.engine()
    if not table_exists(engine):
        if app_audit.writer.prepare is None:
            raise click.ClickException("there is no audit table yet: run 'flask resilience db upgrade'")
        app_audit.writer.prepare(engine)
    return engine


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Create or update the audit table."""
    upgrade(current_audit().engine(), revision)
    click.echo(f"flask-resilience tables at {revision}")


@db.command("downgrade")
@click.option("--revision", default="base", show_default=True)
def db_downgrade(revision: str) -> None:
    """Undo migrations (base drops the audit table)."""
    downgrade(current_audit().engine(), revision)
    click.echo(f"flask-resilience tables at {revision}")


@audit.command("verify")
def audit_verify() -> None:
    """Check every chain; exit 1 on a broken link or a gap."""
    state = get_state()
    engine = _audit_engine()
    state.audit.writer.flush()
    key = state.config[AUDIT_HMAC_KEY]
    reports = verify(engine, key.encode() if key else None)
    failed = False
    for report in reports:
        if report.ok:
            seqs = f"seq {report.first_seq}-{report.last_seq}"
            click.echo(f"chain {report.chain_id}: ok ({report.rows} entries, {seqs})")
            continue
        failed = True
        if report.broken_at is not None:
            click.echo(f"chain {report.chain_id}: BROKEN at seq {report.broken_at}")
        for start, end in report.gaps:
            click.echo(f"chain {report.chain_id}: GAP, seq {start}-{end} missing")
    click.echo(f"{len(reports)} chains checked, {'problems found' if failed else 'all intact'}")
    if failed:
        sys.exit(1)


@audit.command("purge")
@click.option("--older-than", "older_than", required=True, help="Age such as 90d, 12h.")
def audit_purge(older_than: str) -> None:
    """Delete entries older than the given age, keeping chains verifiable."""
    before = datetime.now(UTC).replace(tzinfo=None) - parse_age(older_than)
    app_audit = current_audit()
    engine = _audit_engine()
    app_audit.writer.flush()
    deleted, anchors = purge(engine, before)
    if deleted:
        app_audit.record(
            {
                "event_type": AuditEventType.ADMIN,
                "message": f"audit purge of entries older than {older_than}",
                "details": {PURGE_KEY: anchors, "deleted": deleted},
            },
            durable=True,
        )
    click.echo(f"deleted {deleted} entries older than {before.isoformat()}Z")


@audit.command("export")
@click.option("--since", default=None, help="ISO 8601 time or an age such as 7d.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--output", type=click.File("w"), default="-", help="File to write (default: stdout).")
def audit_export(since: str | None, fmt: str, output: TextIO) -> None:
    """Stream entries as JSON lines or CSV."""
    app_audit = current_audit()
    engine = _audit_engine()
    app_audit.writer.flush()
    start = parse_since(since)
    if fmt == "csv":
        output.write(as_csv(None))
    rows = export_rows(engine, start)
    show_progress = output is not sys.stdout and sys.stderr.isatty()
    if show_progress:
        with click.progressbar(
            rows, length=count_rows(engine, start), label="exporting", file=sys.stderr
        ) as bar:
            for row in bar:
                output.write(as_csv(row) if fmt == "csv" else as_jsonl(row))
    else:
        for row in rows:
            output.write(as_csv(row) if fmt == "csv" else as_jsonl(row))
