"""``flask resilience audit verify|purge|export``; :func:`register` adds them
(and ``db``) to the ``flask resilience`` group."""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta
from typing import TextIO

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from ..config import AUDIT_CHECKPOINT_SECONDS
from ..state import get_state
from .db_cli import db
from .events import AuditEventType
from .export import as_csv, as_jsonl, count_rows, export_rows
from .keys import Keyring, app_keyring
from .purge import PURGE_KEY, newest_key_ids, plan, purge
from .service import AppAudit, current_audit
from .table import missing_tables
from .verify import ChainReport, verify

audit = AppGroup("audit", help="Verify, purge and export the audit log.")


def register(root: click.Group) -> None:
    """Add the audit feature's command groups to ``flask resilience``."""
    root.add_command(audit)
    root.add_command(db)


_AGE = re.compile(r"(\d+)([dhm])")


def parse_age(value: str) -> timedelta:
    """``90d``, ``12h`` or ``30m``."""
    match = _AGE.fullmatch(value.strip())
    if match is None:
        raise click.BadParameter("use a number followed by d, h or m, e.g. 90d")
    amount, unit = int(match.group(1)), match.group(2)
    return {"d": timedelta(days=amount), "h": timedelta(hours=amount), "m": timedelta(minutes=amount)}[unit]


def parse_since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return _utcnow() - parse_age(value)
    except click.BadParameter:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter("use an ISO 8601 time or an age such as 7d") from None
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _audit_engine() -> Engine:
    """The audit database, with its tables (the SQLite fallback migrates itself);
    a clear error instead of a traceback when they were never created."""
    app_audit = current_audit()
    engine = app_audit.engine()
    if missing_tables(engine):
        if app_audit.database.engine() is not None:
            raise click.ClickException("the audit tables are missing: run 'flask resilience db upgrade'")
        prepare = app_audit.writer.prepare
        assert prepare is not None  # set with the instance-folder SQLite, which migrates itself
        prepare(engine)
    return engine


def verify_app_log(engine: Engine, *, allow_unkeyed: bool = False) -> tuple[list[ChainReport], Keyring]:
    """Verify the current app's audit log with its keys and checkpoints (what
    ``audit verify`` prints); raises SQLAlchemyError when the checkpoints cannot be read."""
    state = get_state()
    AppAudit.of().writer.flush()
    keyring = app_keyring(current_app, state.config)
    store = AppAudit.of().writer.checkpoints
    checkpoints = store.latest(engine) if store is not None else {}
    live_window = timedelta(seconds=2 * state.config[AUDIT_CHECKPOINT_SECONDS])
    reports = verify(
        engine, keyring, checkpoints, now=_utcnow(), live_window=live_window, allow_unkeyed=allow_unkeyed
    )
    return reports, keyring


@audit.command("verify")
@click.option(
    "--allow-unkeyed", is_flag=True, help="Accept unkeyed entries (written before the log was keyed)."
)
def audit_verify(allow_unkeyed: bool) -> None:
    """Check every chain; exit 1 on a broken link, a gap, a truncated or missing chain."""
    engine = _audit_engine()
    try:
        reports, keyring = verify_app_log(engine, allow_unkeyed=allow_unkeyed)
    except SQLAlchemyError:
        raise click.ClickException(
            "the checkpoint table cannot be read: run 'flask resilience db upgrade'"
        ) from None
    if not keyring.keyed:
        click.echo("warning: the log is unkeyed; a chain rewritten as a whole cannot be detected")
    for report in reports:
        for line in report.lines():
            click.echo(line)
    failed = not all(report.ok for report in reports)
    click.echo(f"{len(reports)} chains checked, {'problems found' if failed else 'all intact'}")
    if failed:
        sys.exit(1)


@audit.command("purge")
@click.option("--older-than", "older_than", required=True, help="Age such as 90d, 12h.")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted, per chain, and delete nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def audit_purge(older_than: str, dry_run: bool, yes: bool) -> None:
    """Delete entries older than the given age, keeping chains verifiable."""
    age = parse_age(older_than)
    older_than = older_than.strip()  # as parsed: the record is stored unredacted (no CR/LF from the shell)
    before = _utcnow() - age
    app_audit = current_audit()
    engine = _audit_engine()
    app_audit.writer.flush()
    _warn_of_another_key(engine)
    if dry_run or (not yes and interactive()):
        cuts = plan(engine, before)
        for cut in cuts:
            click.echo(f"chain {cut.chain_id}: {cut.rows} entries (seq 1-{cut.last_seq})")
        click.echo(
            f"{sum(cut.rows for cut in cuts)} entries older than {before.isoformat()}Z in {len(cuts)} chains"
        )
        if dry_run:
            return
        click.confirm("delete them?", abort=True)
    deleted, anchors = purge(engine, before)
    if deleted:
        app_audit.record_own(
            {
                "event_type": AuditEventType.ADMIN,
                "message": f"audit purge of entries older than {older_than}",
                "details": {PURGE_KEY: anchors, "deleted": deleted},
            }
        )
    click.echo(f"deleted {deleted} entries older than {before.isoformat()}Z")
    store = app_audit.writer.checkpoints
    if store is not None:
        try:
            pruned = store.prune(engine, before)
        except SQLAlchemyError as exc:
            click.echo(f"old checkpoints kept: they cannot be deleted here ({type(exc).__name__})")
        else:
            click.echo(f"pruned {pruned} checkpoints older than {before.isoformat()}Z")


def _warn_of_another_key(engine: Engine) -> None:
    """The purge record is signed with this app's key: when the newest entries
    were signed with others, a verify holding only those rejects its anchors."""
    signing = app_keyring(current_app, get_state().config).signing_id
    recent = newest_key_ids(engine)
    if recent and signing not in recent:
        others = ", ".join(sorted(key or "none (unkeyed)" for key in recent))
        click.echo(
            f"warning: this app signs audit entries with key {signing or 'none (unkeyed)'}, but the newest "
            f"entries were signed with {others}: a verify that does not accept this app's key will reject "
            "the purge record and report the purged entries as a gap"
        )


def interactive() -> bool:
    """Whether a person is at the terminal to confirm."""
    return sys.stdin.isatty()


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
