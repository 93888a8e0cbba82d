"""What an audit entry is: its event types, severities, statuses and fields."""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def new_id() -> str:
    """A random (version 4) UUID string.

    From the ``random`` module, which Python reseeds in every forked child:
    ``uuid.uuid4()`` reads ``os.urandom``, which costs tens of microseconds
    per call on some virtual machines, and entry ids need to be unique, not secret.
    """
    number = random.getrandbits(128)
    number = (number & ~(0xF000 << 64)) | (0x4000 << 64)  # version 4
    number = (number & ~(0xC000 << 48)) | (0x8000 << 48)  # RFC 4122 variant
    digits = f"{number:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


class AuditEventType(enum.StrEnum):
    # authentication
    LOGIN = "LOGIN"
    LOGOUT = "LOGOUT"
    LOGIN_FAILED = "LOGIN_FAILED"
    PASSWORD_CHANGE = "PASSWORD_CHANGE"
    PASSWORD_RESET = "PASSWORD_RESET"
    MFA_ENABLED = "MFA_ENABLED"
    MFA_DISABLED = "MFA_DISABLED"
    TOKEN_REFRESH = "TOKEN_REFRESH"
    # authorization
    ACCESS_GRANTED = "ACCESS_GRANTED"
    ACCESS_DENIED = "ACCESS_DENIED"
    ROLE_CHANGED = "ROLE_CHANGED"
    # data operations
    CREATE = "CREATE"
    READ = "READ"
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    EXPORT = "EXPORT"
    IMPORT = "IMPORT"
    # administration
    ADMIN = "ADMIN"
    USER_CREATED = "USER_CREATED"
    USER_UPDATED = "USER_UPDATED"
    USER_DELETED = "USER_DELETED"
    SETTINGS_CHANGED = "SETTINGS_CHANGED"
    # financial
    PAYMENT_PROCESSED = "PAYMENT_PROCESSED"
    PAYMENT_FAILED = "PAYMENT_FAILED"
    REFUND_ISSUED = "REFUND_ISSUED"
    PAYOUT_PROCESSED = "PAYOUT_PROCESSED"
    # security and system
    SECURITY_ALERT = "SECURITY_ALERT"
    RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"
    SYSTEM_ERROR = "SYSTEM_ERROR"
    # the extension's own
    CIRCUIT_OPENED = "CIRCUIT_OPENED"
    CIRCUIT_CLOSED = "CIRCUIT_CLOSED"
    IDEMPOTENCY_CONFLICT = "IDEMPOTENCY_CONFLICT"
    AUDIT_GAP = "AUDIT_GAP"
    CHAIN_OPENED = "CHAIN_OPENED"
    CHAIN_CLOSED = "CHAIN_CLOSED"


class Severity(enum.StrEnum):
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


class AuditStatus(enum.StrEnum):
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    ROLLED_BACK = "ROLLED_BACK"  # recorded with on_commit=True; the app's transaction rolled back


@dataclass
class AuditEntry:
    """One audit record. ``id``, ``occurred_at`` are set on creation; the chain
    fields (``chain_id``, ``seq``, ``prev_hash``, ``entry_hash``) and
    ``logged_at`` by the writer."""

    event_type: str
    status: str = AuditStatus.SUCCESS
    severity: str = Severity.INFO
    id: str = field(default_factory=new_id)
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    user_id: str | None = None
    user_email: str | None = None
    resource: str | None = None
    resource_id: str | None = None
    method: str | None = None
    path: str | None = None
    endpoint: str | None = None
    http_status: int | None = None
    ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    changes: dict[str, Any] | None = None
    details: dict[str, Any] | None = None
    message: str | None = None
    chain_id: str | None = None
    seq: int | None = None
    logged_at: datetime | None = None
    prev_hash: str | None = None
    entry_hash: str | None = None

    def as_row(self) -> dict[str, Any]:
        """The fields as a new dict (structured values shared, not copied)."""
        return dict(vars(self))

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> AuditEntry:
        """Build from a dict (unknown keys raise TypeError naming them)."""
        try:
            return cls(**data)
        except TypeError:
            unknown = sorted(set(data) - set(cls.__dataclass_fields__))
            if unknown:
                raise TypeError(f"unknown audit entry field(s): {', '.join(unknown)}") from None
            raise TypeError("an audit entry needs an event_type") from None
