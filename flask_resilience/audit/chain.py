"""Tamper evidence: each writer process keeps a hash chain of its entries.

``entry_hash = HMAC-SHA-256(key, prev_hash || canonical entry)`` (plain
SHA-256 when the log is unkeyed); ``key_id`` names the key. Changing a row
breaks its link; deleting one leaves a gap in ``seq``. A chain starts with a
``CHAIN_OPENED`` entry and a clean shutdown ends it with ``CHAIN_CLOSED``, so a
cut tail shows (see ``checkpoints.py`` for the signed heads that prove it).

The canonical form (docs/audit.rst, "Canonical form") is a JSON array of the
``HASHED`` fields in that order, as ``json.dumps(values, sort_keys=True,
separators=(",", ":"), ensure_ascii=True)`` writes it: no whitespace, object
keys sorted, non-ASCII as ``\\uXXXX`` escapes, timestamps as naive-UTC ISO 8601
(``YYYY-MM-DDTHH:MM:SS`` plus ``.ffffff`` unless the microseconds are 0).
``tests/test_audit_canonical.py`` holds a test vector.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import operator
import os
import socket
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

from .events import AuditEntry, AuditEventType
from .keys import key_id

GENESIS = "0" * 64
HASHED = (
    "id", "chain_id", "seq", "occurred_at", "logged_at", "event_type", "severity", "status",
    "user_id", "user_email", "resource", "resource_id", "method", "path", "endpoint",
    "http_status", "ip", "user_agent", "request_id", "changes", "details", "message",
)  # fmt: skip


_values = operator.itemgetter(*HASHED)
# json.dumps(values, sort_keys=True, separators=(",", ":"), default=str), without
# building an encoder per call (this runs on the request thread, once per entry):
# the C encoder JSONEncoder would build, made once (same bytes).
_C_ENCODE = (
    c_make_encoder(None, str, encode_basestring_ascii, None, ":", ",", True, False, True)
    if c_make_encoder is not None
    else None
)
_PY_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str).encode


def _encode(values: list[Any]) -> str:
    if _C_ENCODE is not None:
        return "".join(_C_ENCODE(values, 0))
    return _PY_ENCODE(values)  # pragma: no cover - a Python without the C accelerator


_OCCURRED, _LOGGED = HASHED.index("occurred_at"), HASHED.index("logged_at")


def _stamp(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is not None:  # stored as naive UTC
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat()
    return value


def canonical(row: Mapping[str, Any]) -> bytes:
    """The bytes hashed for a row: a JSON array of the hashed fields, in a fixed order."""
    values = list(_values(row))
    values[_OCCURRED] = _stamp(values[_OCCURRED])
    values[_LOGGED] = _stamp(values[_LOGGED])
    return _encode(values).encode()


def from_canonical(data: bytes) -> dict[str, Any]:
    """The hashed fields of a row back from :func:`canonical` (times as naive UTC datetimes)."""
    row = dict(zip(HASHED, json.loads(data), strict=True))
    for name in ("occurred_at", "logged_at"):
        if row[name] is not None:
            row[name] = datetime.fromisoformat(row[name])
    return row


def _digest(prev_hash: str, encoded: bytes, key: bytes | None) -> str:
    hasher = _keyed(key).copy() if key else hashlib.sha256()
    hasher.update(prev_hash.encode())
    hasher.update(encoded)
    return hasher.hexdigest()


@functools.lru_cache(maxsize=16)
def _keyed(key: bytes) -> hmac.HMAC:
    """HMAC-SHA-256 with ``key`` set up once (its padded key hashed); each entry copies it."""
    return hmac.new(key, digestmod=hashlib.sha256)


def link_hash(prev_hash: str, row: Mapping[str, Any], key: bytes | None) -> str:
    return _digest(prev_hash, canonical(row), key)


class Chain:
    """The chain of one writer process (not thread-safe: the writer serialises)."""

    def __init__(self, key: bytes | None) -> None:
        self.key = key
        self.key_id = key_id(key) if key else None
        self.chain_id = str(uuid.uuid4())
        self.seq = 0
        self.prev_hash = GENESIS
        self.closed = False

    def link(self, row: dict[str, Any]) -> dict[str, Any]:
        """Give ``row`` its place in the chain (mutates and returns it)."""
        self.link_encoded(row)
        return row

    def link_encoded(self, row: dict[str, Any]) -> bytes:
        """Like :meth:`link`, returning the canonical bytes that were hashed
        (the audit journal stores them, so a row is encoded once)."""
        self.seq += 1
        row["chain_id"] = self.chain_id
        row["seq"] = self.seq
        row["prev_hash"] = self.prev_hash
        row["key_id"] = self.key_id  # names the key; not hashed
        encoded = canonical(row)
        row["entry_hash"] = self.prev_hash = _digest(self.prev_hash, encoded, self.key)
        return encoded


def opening_entry(chain: Chain, opened_at: datetime) -> AuditEntry:
    """The first entry of every chain (``opened_at``: its first entry's time, so
    the record sorts first by time as well as by ``seq``)."""
    return AuditEntry(
        event_type=AuditEventType.CHAIN_OPENED,
        occurred_at=opened_at,
        message="audit chain opened",
        details={"chain_id": chain.chain_id, "pid": os.getpid(), "host": socket.gethostname()},
    )


def closing_entry(chain: Chain, reason: str = "clean shutdown") -> AuditEntry:
    """The last entry of a chain whose writer stopped cleanly."""
    return AuditEntry(
        event_type=AuditEventType.CHAIN_CLOSED,
        message=f"audit chain closed ({reason})",
        details={"chain_id": chain.chain_id, "pid": os.getpid(), "reason": reason},
    )


def adoption_entry(dead_chain_id: str, last_seq: int, adopted: int) -> AuditEntry:
    """Recorded (in the adopter's own chain) when a writer takes over the
    entries a dead process left behind: that chain ended in a known crash."""
    return AuditEntry(
        event_type=AuditEventType.CHAIN_CLOSED,
        message="audit chain of a dead writer closed by adoption",
        details={"closes_chain": dead_chain_id, "last_seq": last_seq, "adopted": adopted, "reason": "crash"},
    )
