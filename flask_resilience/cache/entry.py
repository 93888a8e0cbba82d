"""What the cache stores, in the shared record envelope (``responses.pack(b"C", ...)``).

An entry says what it is (``kind``): an HTTP ``response`` (a
:class:`~flask_resilience.responses.StoredResponse`), serialized ``data``, or
a ``vary`` marker naming the request headers the resource's responses vary
on, or a ``pass`` marker (hit-for-pass: its last response could not be
stored, so requests for it do not wait for one another). It also carries
when it expires and what it was made under: the tag versions and the Redis
epoch, read *before* the view ran, so that an invalidation during the run
makes it stale on arrival.
Anything unreadable reads as a miss, never as an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..responses import StoredResponse, UnreadableRecord, pack, unpack, valid_header_value, valid_time

KIND = b"C"
KINDS = frozenset({"response", "data", "vary", "pass"})


class UnreadableEntry(ValueError):
    """A stored value this version cannot read; treated as a miss."""


@dataclass(frozen=True, slots=True)
class Stamp:
    """What an entry was made under: the epoch of the tag counters and each
    tag's version. (The resource's generation is checked by the backend.)"""

    epoch: str
    tags: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """``kind`` is ``"response"``, ``"data"``, ``"vary"`` or ``"pass"`` (the
    resource's last response could not be stored: skip the stampede locks);
    times are wall-clock seconds."""

    kind: str
    body: bytes
    created_at: float
    expires_at: float
    stamp: Stamp
    response: StoredResponse | None = None
    etag: str | None = None
    vary: tuple[str, ...] = ()
    # What the front tier sends for every hit on this entry, built at its first
    # hit (cache/front.py): it lives and dies with the entry, is never stored,
    # and a copy made with dataclasses.replace starts without it.
    front_reply: Any = field(default=None, init=False, compare=False, repr=False)

    def ttl(self, now: float) -> float:
        return self.expires_at - now

    def encode(self) -> bytes:
        header: dict[str, Any] = {
            "k": self.kind,
            "c": self.created_at,
            "x": self.expires_at,
            "p": self.stamp.epoch,
            "g": self.stamp.tags,
        }
        if self.response is not None:
            header.update(self.response.fields(), e=self.etag)
        if self.vary:
            header["v"] = list(self.vary)
        return pack(KIND, header, self.body)


def decode(data: bytes) -> CacheEntry:
    """Parse a stored value; raises :class:`UnreadableEntry` for anything else."""
    try:
        header, body = unpack(KIND, data)
        kind = header["k"]
        if kind not in KINDS:
            raise UnreadableEntry(f"unknown entry kind {kind!r}")
        created_at, expires_at = float(header["c"]), float(header["x"])
        if not (valid_time(created_at) and valid_time(expires_at) and created_at <= expires_at):
            raise UnreadableEntry("a time out of range")
        etag = header.get("e")
        if etag is not None and not (isinstance(etag, str) and valid_header_value(etag)):
            raise UnreadableEntry("an ETag no server may send")
        return CacheEntry(
            kind=kind,
            body=body,
            created_at=created_at,
            expires_at=expires_at,
            stamp=Stamp(
                epoch=str(header["p"]),
                tags={str(tag): int(version) for tag, version in header["g"].items()},
            ),
            response=StoredResponse.from_fields(header, body) if kind == "response" else None,
            etag=etag,
            vary=tuple(str(name) for name in header.get("v", ())),
        )
    except UnreadableRecord as exc:
        raise UnreadableEntry(str(exc)) from None
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
        raise UnreadableEntry(f"damaged cache entry: {exc}") from None
