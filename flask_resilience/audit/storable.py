"""Make an entry storable before it is queued, so one entry can never fail a batch.

Every text column is clamped to its width (with a marker saying how much was
cut), NUL (which PostgreSQL refuses in text) becomes U+FFFD, and so do lone
surrogates (which no database can encode as UTF-8). ``severity`` and
``status`` must be members of their enums: a wrong value is the caller's bug,
reported at the call site as ValueError.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import String

from .events import AuditStatus, Severity
from .table import audit_log

REPLACEMENT = "\ufffd"

# Column widths of the free-text fields (severity and status are validated instead).
WIDTHS: dict[str, int] = {
    column.name: column.type.length
    for column in audit_log.columns
    if isinstance(column.type, String) and column.type.length and column.name not in ("severity", "status")
}
WIDTHS["message"] = 0  # Text: no width, but NUL and surrogates still count
_SEVERITIES = frozenset(Severity)
_STATUSES = frozenset(AuditStatus)


def clamp(value: str, width: int) -> str:
    """``value`` cut to ``width`` characters, ending in a marker naming what was cut."""
    if not width or len(value) <= width:
        return value
    cut = len(value) - width
    while True:  # the marker's own length changes how much must be cut
        marker = f"…[truncated {cut:,} chars]"
        keep = width - len(marker)
        if keep <= 0:  # a column too narrow for the marker
            return value[:width]
        if len(value) - keep == cut:
            return value[:keep] + marker
        cut = len(value) - keep


def clean(value: str) -> str:
    """NUL and lone surrogates replaced by U+FFFD."""
    if "\x00" in value:
        value = value.replace("\x00", REPLACEMENT)
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def storable(fields: dict[str, Any]) -> dict[str, Any]:
    """Check ``severity``/``status`` (ValueError) and make the text fields
    fit their columns (mutates and returns ``fields``)."""
    severity = fields.get("severity")
    if severity is not None and severity not in _SEVERITIES:
        raise ValueError(f"severity must be one of {', '.join(Severity)}, got {str(severity)[:40]!r}")
    status = fields.get("status")
    if status is not None and status not in _STATUSES:
        raise ValueError(f"status must be one of {', '.join(AuditStatus)}, got {str(status)[:40]!r}")
    for name, given in fields.items():  # replaces values of existing keys only
        width = WIDTHS.get(name)
        if given is None or width is None:
            continue
        text = given
        if text.__class__ is not str:  # a str subclass or a number: clamped as the text stored
            text = fields[name] = str.__str__(given) if isinstance(given, str) else str(given)
        if (width and len(text) > width) or "\x00" in text or not text.isascii():
            fields[name] = clamp(clean(text), width)
    return fields
