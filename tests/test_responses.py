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


def test_a_header_nested_too_deep_to_read_is_unreadable() -> None:
    raw = b"[" * 100_000
    with pytest.raises(UnreadableRecord):
        unpack(b"C", b"FRC\x01" + len(raw).to_bytes(4, "big") + raw)


@pytest.mark.parametrize(
    "damage",
    [
        {"t": float("nan")},
        {"t": 1e300},
        {"t": -1.0},
        {"s": 42},
        {"s": 1000},
        {"h": [["X-Split", "a\r\nSet-Cookie: x=1"]]},
        {"h": [["X-Nul", "a\x00b"]]},
        {"h": [["Bad Name", "v"]]},
        {"h": [["", "v"]]},
    ],
    ids=["nan-time", "huge-time", "negative-time", "status-42", "status-1k", "crlf", "nul", "space", "none"],
)
def test_fields_no_server_could_send_again_are_refused(damage: dict[str, object]) -> None:
    """A stored response is served without checking its headers again: what
    could not be sent (or would split the response) never reads as one."""
    fields = {**StoredResponse(200, (("Content-Type", "text/plain"),), b"x", 1.0).fields(), **damage}
    with pytest.raises(ValueError, match=r"range|no server"):
        StoredResponse.from_fields(fields, b"x")
