"""One stored HTTP response, shared by the cache and idempotency records.

A :class:`StoredResponse` is a status, the end-to-end headers a
:class:`HeaderPolicy` keeps, the body bytes and when it was made. Both
features store it inside one plain, versioned envelope (never pickle)::

    b"FR" + kind (1 byte) + version (1 byte) + 4-byte big-endian header length
          + header JSON + body

``kind`` says whose record it is (the cache's ``C``, idempotency's ``I``);
the JSON header carries the response's fields next to the feature's own.
Anything else (another kind, an older version, a truncated value) raises
:class:`UnreadableRecord`, which each feature treats as absent.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Response

VERSION = 1
# json.dumps(header, separators=(",", ":"), ensure_ascii=False), without an encoder built per call.
_header_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_LENGTH = struct.Struct(">I")
_PREAMBLE = 4 + _LENGTH.size
_LATEST_TIME = 253_402_300_800.0  # 10000-01-01 UTC: what datetime can still show
# A name is an RFC 9110 token; a value holds no CR, LF or NUL (nothing that
# could split a response).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"[^\r\n\x00]*")

HOP_BY_HOP = frozenset(
    {
        # RFC 9110 §7.6.1, plus the non-standard ones proxies still send.
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
ALWAYS_DENIED = HOP_BY_HOP | {
    "set-cookie",  # one client's session must never reach another
    "date",  # per response; the server adds its own
    "age",  # computed when served
    "content-length",  # derived from the stored body
}


def valid_time(seconds: float) -> bool:
    """Whether wall-clock ``seconds`` can be a stored time (NaN never is)."""
    return 0.0 <= seconds < _LATEST_TIME


def valid_header_value(value: str) -> bool:
    """Whether ``value`` may be sent as a header value as it is."""
    return _HEADER_VALUE.fullmatch(value) is not None


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not a stored number")


class UnreadableRecord(ValueError):
    """A stored value this version cannot read; callers treat it as absent."""


@dataclass(frozen=True, slots=True)
class HeaderPolicy:
    """Which of a response's headers are stored: all but a deny-list.

    The deny-list is :data:`ALWAYS_DENIED` plus ``denied`` (lower-case names,
    e.g. the request-id header), plus any header the response's own
    ``Connection`` header names.
    """

    denied: frozenset[str] = ALWAYS_DENIED

    @classmethod
    def denying(cls, *names: str) -> HeaderPolicy:
        return cls(ALWAYS_DENIED | {name.lower() for name in names})

    def keep(self, headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
        pairs = list(headers)
        denied = self.denied
        connection = [value for name, value in pairs if name.lower() == "connection"]
        if connection:
            named = {token.strip().lower() for value in connection for token in value.split(",")}
            denied = denied | named
        return tuple((name, value) for name, value in pairs if name.lower() not in denied)


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """An HTTP response as stored; ``created_at`` is wall-clock seconds."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    created_at: float

    @classmethod
    def capture(cls, response: Response, policy: HeaderPolicy, now: float) -> StoredResponse:
        """Read a finished (not streamed) response: its body is buffered."""
        return cls(
            status=response.status_code,
            headers=policy.keep(response.headers.items()),
            body=response.get_data(),
            created_at=now,
        )

    def to_response(self) -> Response:
        return Response(self.body, status=self.status, headers=list(self.headers))

    def fields(self) -> dict[str, Any]:
        """The JSON header fields that describe this response."""
        return {"s": self.status, "h": [list(pair) for pair in self.headers], "t": self.created_at}

    @classmethod
    def from_fields(cls, header: Mapping[str, Any], body: bytes) -> StoredResponse:
        """Raises KeyError, TypeError or ValueError for a damaged header: one
        that could not be served again (a status outside 100-999, a time out
        of range, a header a server would refuse or split) never reads as a
        response."""
        status = int(header["s"])
        created_at = float(header["t"])
        if not 100 <= status <= 999:
            raise ValueError(f"status {status} out of range")
        if not valid_time(created_at):
            raise ValueError("time out of range")
        headers = tuple((str(name), str(value)) for name, value in header["h"])
        for name, value in headers:
            if not _HEADER_NAME.fullmatch(name) or not valid_header_value(value):
                raise ValueError("a header no server may send")
            if name.lower() in ALWAYS_DENIED:  # never stored: a second Content-Length, a cookie
                raise ValueError(f"a header no record holds: {name}")
        return cls(status=status, headers=headers, body=body, created_at=created_at)


def pack(kind: bytes, header: Mapping[str, Any], body: bytes) -> bytes:
    """The envelope for ``kind`` (one byte) holding ``header`` and ``body``."""
    return pack_json(kind, _header_json(header).encode(), body)


def pack_json(kind: bytes, header: bytes, body: bytes) -> bytes:
    """:func:`pack` for a header already encoded (compact JSON, as ``pack`` writes it)."""
    return b"FR" + kind + bytes((VERSION,)) + _LENGTH.pack(len(header)) + header + body


def unpack(kind: bytes, data: bytes) -> tuple[dict[str, Any], bytes]:
    """The header and body of an envelope of ``kind``; raises :class:`UnreadableRecord`."""
    if len(data) < _PREAMBLE or data[:2] != b"FR" or data[2:3] != kind or data[3] != VERSION:
        raise UnreadableRecord(f"not a version {VERSION} {kind.decode()!r} record (or an older format)")
    (length,) = _LENGTH.unpack_from(data, 4)
    end = _PREAMBLE + length
    if end > len(data):
        raise UnreadableRecord("truncated record")
    try:
        header = json.loads(data[_PREAMBLE:end], parse_constant=_no_constants)  # no NaN, no Infinity
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep to read
        raise UnreadableRecord(f"damaged record header: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise UnreadableRecord("damaged record header: not an object")
    return header, data[end:]
