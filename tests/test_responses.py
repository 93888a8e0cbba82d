"""The stored-response format shared by the cache and idempotency records."""

from __future__ import annotations

import contextlib

import pytest
from flask import Response
from hypothesis import given
from hypothesis import strategies as st

from flask_resilience.responses import HeaderPolicy, StoredResponse, UnreadableRecord, pack, unpack


def test_capture_keeps_end_to_end_headers_and_drops_the_deny_list() -> None:
    response = Response(b'{"a": 1}', status=201, mimetype="application/json")
    response.headers["Content-Encoding"] = "identity"
    response.headers["Content-Security-Policy"] = "default-src 'none'"
    response.headers["Set-Cookie"] = "session=secret"
    response.headers["Date"] = "Mon, 30 Nov 2026 00:00:00 GMT"
    response.headers["X-Request-ID"] = "abc"
    response.headers["Connection"] = "close, X-Hop"
    response.headers["X-Hop"] = "1"
    stored = StoredResponse.capture(response, HeaderPolicy.denying("X-Request-ID"), now=12.5)
    names = {name.lower() for name, _ in stored.headers}
    assert names == {"content-type", "content-encoding", "content-security-policy"}
    assert (stored.status, stored.body, stored.created_at) == (201, b'{"a": 1}', 12.5)


def test_round_trip_through_the_envelope() -> None:
    stored = StoredResponse(302, (("Location", "/x"), ("Content-Type", "text/plain")), b"\x00\xff", 1.25)
    data = pack(b"T", {"extra": "é", **stored.fields()}, stored.body)
    header, body = unpack(b"T", data)
    assert header["extra"] == "é"
    assert StoredResponse.from_fields(header, body) == stored
    response = stored.to_response()
    assert (response.status_code, response.get_data(), response.headers["Location"]) == (
        302,
        b"\x00\xff",
        "/x",
    )


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"FR",
        b"FRT\x00" + b"\x00\x00\x00\x02{}",
        b"FRX\x01\x00\x00\x00\x02{}",
        b"FRT\x01\x00\x00\x00\x09{}",
        b"FRT\x01\x00\x00\x00\x02[]",
    ],
)
def test_anything_else_is_unreadable(data: bytes) -> None:
    with pytest.raises(UnreadableRecord):
        unpack(b"T", data)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_raise_anything_but_unreadable(data: bytes) -> None:
    with contextlib.suppress(UnreadableRecord):
        unpack(b"T", data)
