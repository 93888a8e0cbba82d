"""What the cache stores, and its plain, versioned byte format (never pickle).

An entry is a small JSON header and a body of raw bytes::

    b"FRC1" + 4-byte big-endian header length + header JSON + body

The header says what the body is (an HTTP response or serialized data), when
it was created, when it expires and which tag versions it was made under.
Anything else (an old format, a truncated value, a foreign key) reads as a
miss, never as an error.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

MAGIC = b"FRC1"
_LENGTH = struct.Struct(">I")


class UnreadableEntry(ValueError):
    """A stored value this version cannot read; treated as a miss."""


@dataclass(frozen=True)
class CacheEntry:
    """``kind`` is ``"response"`` or ``"data"``; times are wall-clock seconds."""

    kind: str
    body: bytes
    created_at: float
    expires_at: float
    tags: dict[str, int] = field(default_factory=dict)
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    etag: str | None = None

    def ttl(self, now: float) -> float:
        return self.expires_at - now

    def encode(self) -> bytes:
        header = {
            "k": self.kind,
            "c": self.created_at,
            "x": self.expires_at,
            "g": self.tags,
        }
        if self.kind == "response":
            header.update(s=self.status, h=[list(pair) for pair in self.headers], e=self.etag)
        raw = json.dumps(header, separators=(",", ":")).encode()
        return MAGIC + _LENGTH.pack(len(raw)) + raw + self.body


def decode(data: bytes) -> CacheEntry:
    """Parse a stored value; raises :class:`UnreadableEntry` for anything else."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _LENGTH.size:
        raise UnreadableEntry("not a flask-resilience cache entry (or an older format)")
    start = len(MAGIC) + _LENGTH.size
    (length,) = _LENGTH.unpack_from(data, len(MAGIC))
    try:
        header = json.loads(data[start : start + length])
        kind = header["k"]
        entry = CacheEntry(
            kind=kind,
            body=data[start + length :],
            created_at=float(header["c"]),
            expires_at=float(header["x"]),
            tags={str(tag): int(version) for tag, version in header["g"].items()},
        )
        if kind == "response":
            entry = CacheEntry(
                kind=kind,
                body=entry.body,
                created_at=entry.created_at,
                expires_at=entry.expires_at,
                tags=entry.tags,
                status=int(header["s"]),
                headers=tuple((str(name), str(value)) for name, value in header["h"]),
                etag=header.get("e"),
            )
        elif kind != "data":
            raise UnreadableEntry(f"unknown entry kind {kind!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UnreadableEntry(f"damaged cache entry: {exc}") from None
    return entry
