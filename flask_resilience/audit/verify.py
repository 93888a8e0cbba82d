"""Checking the hash chains against themselves, their keys, their checkpoints
and their purge anchors.

A chain is intact when every link holds (each ``entry_hash`` recomputes under
the key its ``key_id`` names), ``seq`` has no gap (seqs of entries the database
refused count when a verified AUDIT_GAP entry names each with its hash, and the
next entry links to that hash), it starts at seq 1 or at a trusted purge
anchor, its head reaches its last signed checkpoint, and it ended with
``CHAIN_CLOSED``, or its writer is alive, or a later writer recorded adopting
it after a crash. Every checkpointed chain must exist.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Engine, select

from .chain import GENESIS, link_hash
from .checkpoints import Checkpoint
from .events import AuditEventType
from .keys import Keyring
from .purge import PURGE_KEY
from .table import audit_log


@dataclass(frozen=True)
class Anchor:
    """A purge record: ``chain_id`` now starts at ``first_seq``, whose
    ``prev_hash`` is given; stated by entry ``host_seq`` of chain ``host_chain``."""

    chain_id: str
    first_seq: int
    prev_hash: str
    host_chain: str
    host_seq: int


@dataclass(frozen=True)
class Quarantine:
    """An AUDIT_GAP record: entry ``seq`` of ``chain_id``, whose ``entry_hash``
    is given, was refused by the database and quarantined; stated by entry
    ``host_seq`` of chain ``host_chain``."""

    chain_id: str
    seq: int
    entry_hash: str
    host_chain: str
    host_seq: int


class _Statement(Protocol):
    """A record one entry makes about a chain (a purge anchor, a quarantine)."""

    @property
    def host_chain(self) -> str: ...

    @property
    def host_seq(self) -> int: ...


@dataclass
class ChainReport:
    chain_id: str
    rows: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    broken_at: int | None = None
    gaps: list[tuple[int, int]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # each makes the chain fail
    notes: list[str] = field(default_factory=list)
    anchor: Anchor | None = None  # the purge anchor the chain starts from
    quarantined: list[Quarantine] = field(default_factory=list)  # the records explaining missing seqs
    closed: bool = False
    legacy: bool = False  # written before entries were keyed and lifecycle-recorded
    hashes: dict[int, str] = field(default_factory=dict)  # entry_hash at checkpointed seqs
    last_logged_at: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.broken_at is None and not self.gaps and not self.problems

    def lines(self) -> list[str]:
        """What ``flask resilience audit verify`` prints for this chain."""
        name = f"chain {self.chain_id}"
        if self.ok:
            span = f", seq {self.first_seq}-{self.last_seq}" if self.rows else ""
            extra = "".join(f"; {note}" for note in self.notes)
            return [f"{name}: ok ({self.rows} entries{span}{extra})"]
        lines = [f"{name}: BROKEN at seq {self.broken_at}"] if self.broken_at is not None else []
        lines += [f"{name}: GAP, seq {start}-{end} missing" for start, end in self.gaps]
        return lines + [f"{name}: {problem}" for problem in self.problems]


@dataclass(frozen=True)
class Context:
    keyring: Keyring
    checkpoints: Mapping[str, tuple[Checkpoint, datetime]]
    now: datetime  # naive UTC
    live_window: timedelta
    allow_unkeyed: bool = False
    quarantines: Mapping[str, Mapping[int, Quarantine]] = field(default_factory=dict)


def verify(
    engine: Engine,
    keyring: Keyring,
    checkpoints: Mapping[str, tuple[Checkpoint, datetime]] | None = None,
    *,
    now: datetime,
    live_window: timedelta,
    allow_unkeyed: bool = False,
) -> list[ChainReport]:
    """One report per chain (and per checkpointed chain that has no entries)."""
    context = Context(
        keyring, checkpoints or {}, now, live_window, allow_unkeyed, _quarantine_candidates(engine)
    )
    anchors = _anchor_candidates(engine)
    reports = {report.chain_id: report for report in _scan(engine, anchors, context)}
    _check_quarantines(engine, reports, anchors, context)
    for chain_id, report in list(reports.items()):
        if report.anchor is not None and not _trusted(report.anchor, reports, keyring.keyed):
            rejected = report.anchor
            reports[chain_id] = next(iter(_scan(engine, {}, context, chain_id)))
            host = f"entry seq {rejected.host_seq} of chain {rejected.host_chain}"
            reports[chain_id].problems.append(f"purge anchor rejected: {host} does not verify")
    for chain_id, (checkpoint, _) in context.checkpoints.items():
        report = reports.setdefault(chain_id, ChainReport(chain_id))
        _check_checkpoint(report, checkpoint, anchors.get(chain_id, []), reports, context)
    adopters = _adoptions(engine)
    for report in reports.values():
        _check_ending(report, adopters.get(report.chain_id), context)
    return sorted(reports.values(), key=lambda report: report.chain_id)


def _scan(
    engine: Engine, anchors: Mapping[str, list[Anchor]], context: Context, chain_id: str | None = None
) -> Iterator[ChainReport]:
    query = (
        select(audit_log).order_by(audit_log.c.chain_id, audit_log.c.seq).execution_options(yield_per=1000)
    )
    if chain_id is not None:
        query = query.where(audit_log.c.chain_id == chain_id)
    with engine.connect() as connection:
        rows = (dict(row._mapping) for row in connection.execute(query))
        for found_id, chain_rows in itertools.groupby(rows, key=lambda row: str(row["chain_id"])):
            yield _check_chain(found_id, chain_rows, anchors.get(found_id, []), context)


def _check_chain(
    chain_id: str, rows: Iterable[dict[str, Any]], anchors: list[Anchor], context: Context
) -> ChainReport:
    report = ChainReport(chain_id, legacy=True)
    checkpoint = context.checkpoints.get(chain_id)
    watched = checkpoint[0].seq if checkpoint is not None else None
    expected_prev = GENESIS
    last: dict[str, Any] = {}
    for row in rows:
        seq = row["seq"]
        if report.first_seq is None:
            report.first_seq = seq
            expected_prev = _start(report, row, anchors, context)
        elif seq != (report.last_seq or 0) + 1:
            expected_prev = _across_gap(report, (report.last_seq or 0) + 1, row, context)
        report.rows += 1
        report.last_seq = seq
        report.legacy = report.legacy and row["key_id"] is None
        if report.broken_at is None and (row["prev_hash"] != expected_prev or not _hash_ok(row, context)):
            report.broken_at = seq
        if seq == watched:
            report.hashes[seq] = row["entry_hash"]
        expected_prev = row["entry_hash"]
        last = row
    report.closed = last.get("event_type") == AuditEventType.CHAIN_CLOSED and "closes_chain" not in (
        last.get("details") or {}
    )
    report.last_logged_at = last.get("logged_at")
    return report


def _start(report: ChainReport, row: dict[str, Any], anchors: list[Anchor], context: Context) -> str:
    """The ``prev_hash`` the first stored entry must have."""
    if row["seq"] == 1:
        return GENESIS
    for anchor in anchors:
        if anchor.first_seq == row["seq"]:
            report.anchor = anchor
            return anchor.prev_hash
    return _across_gap(report, 1, row, context)


def _across_gap(report: ChainReport, first: int, row: dict[str, Any], context: Context) -> str:
    """The ``prev_hash`` ``row`` must have after seqs ``first`` to ``row["seq"] - 1``
    are missing: the hash of the last when each was quarantined, else the
    gap is the finding and the check goes on from the row's own link."""
    claims = context.quarantines.get(report.chain_id, {})
    missing = range(first, row["seq"])
    if all(seq in claims for seq in missing):
        report.quarantined += [claims[seq] for seq in missing]
        return claims[missing[-1]].entry_hash
    report.gaps.append((first, row["seq"] - 1))
    return str(row["prev_hash"])


def _hash_ok(row: dict[str, Any], context: Context) -> bool:
    kid = row["key_id"]
    if kid is None and context.keyring.keyed and not context.allow_unkeyed:
        return False  # an unkeyed entry in a keyed log: anyone could have written it
    try:
        key = context.keyring.key_for(kid)
    except KeyError:
        return False  # signed by a key this verify does not hold
    return bool(row["entry_hash"] == link_hash(row["prev_hash"], row, key))


def _anchor_candidates(engine: Engine) -> dict[str, list[Anchor]]:
    """Every purge record's anchors, by purged chain (trusted only once verified)."""
    anchors: dict[str, list[Anchor]] = {}
    query = select(audit_log.c.chain_id, audit_log.c.seq, audit_log.c.details).where(
        audit_log.c.event_type == AuditEventType.ADMIN
    )
    with engine.connect() as connection:
        for host_chain, host_seq, details in connection.execute(query):
            stated = details.get(PURGE_KEY) if isinstance(details, dict) else None
            if not isinstance(stated, dict):
                continue
            for chain_id, start in stated.items():
                if isinstance(start, dict) and {"first_seq", "prev_hash"} <= start.keys():
                    anchor = Anchor(
                        chain_id, int(start["first_seq"]), str(start["prev_hash"]), host_chain, host_seq
                    )
                    anchors.setdefault(chain_id, []).append(anchor)
    return anchors


def _quarantine_candidates(engine: Engine) -> dict[str, dict[int, Quarantine]]:
    """Every AUDIT_GAP record of a quarantined entry, by the entry's chain and seq
    (trusted only once the record's own entry verifies)."""
    claims: dict[str, dict[int, Quarantine]] = {}
    query = select(audit_log.c.chain_id, audit_log.c.seq, audit_log.c.details).where(
        audit_log.c.event_type == AuditEventType.AUDIT_GAP
    )
    with engine.connect() as connection:
        for host_chain, host_seq, details in connection.execute(query):
            if not isinstance(details, dict) or details.get("rejected") != 1:
                continue
            chain_id, seq, entry_hash = (details.get(key) for key in ("chain_id", "seq", "entry_hash"))
            if isinstance(chain_id, str) and isinstance(seq, int) and isinstance(entry_hash, str):
                claim = Quarantine(chain_id, seq, entry_hash, host_chain, host_seq)
                claims.setdefault(chain_id, {})[seq] = claim
    return claims


def _check_quarantines(
    engine: Engine, reports: dict[str, ChainReport], anchors: Mapping[str, list[Anchor]], context: Context
) -> None:
    """Missing seqs count as quarantined only when each record saying so
    verifies; otherwise the chain is checked again without them."""
    for chain_id, report in list(reports.items()):
        untrusted = [q for q in report.quarantined if not _trusted(q, reports, context.keyring.keyed)]
        if untrusted:
            bare = replace(context, quarantines={})
            reports[chain_id] = next(iter(_scan(engine, anchors, bare, chain_id)))
            for claim in untrusted:
                host = f"entry seq {claim.host_seq} of chain {claim.host_chain}"
                reports[chain_id].problems.append(f"quarantine record rejected: {host} does not verify")
        else:
            report.notes += [f"seq {claim.seq} quarantined" for claim in report.quarantined]


def _trusted(
    anchor: _Statement,
    reports: Mapping[str, ChainReport],
    keyed: bool,
    seen: frozenset[str] = frozenset(),
) -> bool:
    """An anchor (or a quarantine record) counts only when the entry stating it verifies in its own chain:
    its link and hash hold (keyed, its HMAC proves a key holder wrote it), and
    unkeyed, its chain verifies from seq 1 or from an anchor trusted in turn."""
    host = reports.get(anchor.host_chain)
    if host is None or host.first_seq is None:
        return False
    if host.broken_at is not None and host.broken_at <= anchor.host_seq:
        return False
    if any(start <= anchor.host_seq for start, _ in host.gaps):
        return False
    if keyed or host.first_seq == 1:
        return True
    if host.anchor is None or host.chain_id in seen:
        return False
    return _trusted(host.anchor, reports, keyed, seen | {host.chain_id})


def _check_checkpoint(
    report: ChainReport,
    checkpoint: Checkpoint,
    anchors: list[Anchor],
    reports: Mapping[str, ChainReport],
    context: Context,
) -> None:
    at = f"seq {checkpoint.seq} ({checkpoint.created_at.isoformat()}Z)"
    unsigned_allowed = context.allow_unkeyed and checkpoint.key_id is None
    if not (checkpoint.signature_ok(context.keyring) or unsigned_allowed):
        report.problems.append(f"FORGED checkpoint at {at}: its signature does not verify")
    elif report.rows == 0:
        purged = any(
            a.first_seq > checkpoint.seq and _trusted(a, reports, context.keyring.keyed) for a in anchors
        )
        if purged:
            report.notes.append(f"purged whole, last checkpoint at {at}")
            report.closed = True
        else:
            report.problems.append(f"MISSING: no entries, but a signed checkpoint at {at}")
    elif report.last_seq is not None and report.last_seq < checkpoint.seq:
        report.problems.append(
            f"TRUNCATED: entries end at seq {report.last_seq}, a signed checkpoint at {at}"
        )
    elif checkpoint.seq in report.hashes and report.hashes[checkpoint.seq] != checkpoint.head_hash:
        report.problems.append(f"entry seq {checkpoint.seq} differs from its signed checkpoint")
        if report.broken_at is None or report.broken_at > checkpoint.seq:
            report.broken_at = checkpoint.seq


def _adoptions(engine: Engine) -> dict[str, str]:
    """Chains a later writer recorded as ended by a crash: chain id -> adopter's chain id."""
    query = select(audit_log.c.chain_id, audit_log.c.details).where(
        audit_log.c.event_type == AuditEventType.CHAIN_CLOSED
    )
    with engine.connect() as connection:
        return {
            str(details["closes_chain"]): str(adopter)
            for adopter, details in connection.execute(query)
            if isinstance(details, dict) and details.get("closes_chain")
        }


def _check_ending(report: ChainReport, adopter: str | None, context: Context) -> None:
    if report.closed or report.rows == 0 or report.problems:
        return
    checkpoint = context.checkpoints.get(report.chain_id)
    if checkpoint is not None and checkpoint[0].closing:
        return  # closed per its signed checkpoint; truncation is checked against it
    heard = max(filter(None, (checkpoint[1] if checkpoint else None, report.last_logged_at)))
    if adopter is not None:
        report.notes.append(f"ended without close: a crash, adopted by chain {adopter}")
    elif context.now - heard <= context.live_window:
        report.notes.append("open, writer live")
    elif report.legacy and context.allow_unkeyed:
        report.notes.append("written before chains were closed")
    else:
        report.problems.append("ENDED without close (crash or truncation)")
