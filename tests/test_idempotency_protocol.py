"""The framework-free idempotency protocol: keys, record keys, fingerprints, decisions."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_resilience.idempotency.protocol import (
    Completed,
    Decision,
    InFlight,
    InvalidKey,
    Keep,
    Unreadable,
    canonical_json,
    canonical_query,
    decide,
    digest,
    fingerprint,
    keep,
    parse_key,
    record_key,
    user_pattern,
)
from flask_resilience.idempotency.records import MemoryRecords, completed_value, decode, in_flight_value
from flask_resilience.responses import StoredResponse, pack
from tests.clock import FakeClock

RESPONSE = StoredResponse(201, (("Location", "/p/1"),), b"{}", 1_700_000_000.0)


@pytest.mark.parametrize(
    ("sent", "key"),
    [("abc", "abc"), ('"abc"', "abc"), ('"a\\"b"', 'a"b'), ("a b", "a b"), ("x" * 255, "x" * 255)],
)
def test_keys_are_taken_as_sent(sent: str, key: str) -> None:
    assert parse_key(sent) == key


@pytest.mark.parametrize("sent", ["", " a", "a ", "a\xa0", "\ta", "x" * 256, "ü", '"open', '"a\\x"', '" a"'])
def test_padded_or_unprintable_keys_are_refused(sent: str) -> None:
    with pytest.raises(InvalidKey):
        parse_key(sent)


@given(st.text(max_size=300))
def test_parse_key_either_accepts_a_printable_key_or_raises(sent: str) -> None:
    try:
        key = parse_key(sent)
    except InvalidKey:
        return
    assert 1 <= len(key) <= 255 and key == key.strip() and key.isascii()


def test_record_keys_separate_callers_keys_and_routes() -> None:
    base = record_key("user:1", "k", "/pay")
    assert len({base, record_key("user:2", "k", "/pay"), record_key("user:1", "k2", "/pay")}) == 3
    assert record_key("user:1", "k", "/refund") != base
    assert base.startswith(user_pattern("1", "k").split(":")[0])


def test_repeated_parameters_keep_their_order_names_do_not() -> None:
    assert canonical_query("amount=1&amount=1000") != canonical_query("amount=1000&amount=1")
    assert canonical_query("a=1&b=2") == canonical_query("b=2&a=1")
    assert canonical_query("") == ""


@pytest.mark.parametrize(
    ("first", "second"),
    [("%61=1&a=2", "a=2&%61=1"), ("a+b=1&a%20b=2", "a%20b=2&a+b=1")],
)
def test_spellings_of_one_parameter_name_keep_their_order(first: str, second: str) -> None:
    # '%61' is 'a': the view sees a=[1, 2] for one and a=[2, 1] for the other.
    assert canonical_query(first) != canonical_query(second)


def test_fingerprint_covers_method_path_query_media_type_and_body() -> None:
    base = fingerprint("POST", "/p", "", "application/json", b'{"a":1}')
    others = [
        fingerprint("PUT", "/p", "", "application/json", b'{"a":1}'),
        fingerprint("POST", "/q", "", "application/json", b'{"a":1}'),
        fingerprint("POST", "/p", "x=1", "application/json", b'{"a":1}'),
        fingerprint("POST", "/p", "", "text/plain", b'{"a":1}'),
        fingerprint("POST", "/p", "", None, b'{"a":1}'),
        fingerprint("POST", "/p", "", "application/json", b'{"a":2}'),
    ]
    assert base not in others and len(set(others)) == len(others)


def test_json_mode_compares_content_and_falls_back_to_bytes() -> None:
    spaced = fingerprint("POST", "/p", "", "application/json", b'{"b": 1, "a": [1, 2]}', mode="json")
    assert spaced == fingerprint("POST", "/p", "", "application/json", b'{"a":[1,2],"b":1}', mode="json")
    assert canonical_json(b"not json") is None
    assert canonical_json(b"[" * 100_000 + b"]" * 100_000) is None


def test_decisions() -> None:
    done = Completed("fp", 100.0, RESPONSE)
    assert decide(None, "fp", 50.0) is Decision.PROCEED
    assert decide(done, "fp", 50.0) is Decision.REPLAY
    assert decide(done, "other", 50.0) is Decision.MISMATCH
    assert decide(done, "fp", 100.0) is Decision.PROCEED  # expired
    assert decide(InFlight("fp", "o"), "fp", 50.0) is Decision.IN_PROGRESS
    assert decide(InFlight("fp", "o"), "other", 50.0) is Decision.MISMATCH


@pytest.mark.parametrize(
    ("status", "streamed", "size", "on_error", "expected"),
    [
        (201, False, 10, "store", Keep.STORE),
        (303, False, 0, "store", Keep.STORE),
        (400, False, 10, "store", Keep.STORE),
        (500, False, 10, "store", Keep.STORE),
        (500, False, 10, "release", Keep.RELEASE),
        (201, False, 101, "store", Keep.NOT_KEPT),
        (201, True, 0, "store", Keep.NOT_KEPT),
        (201, True, 0, "release", Keep.RELEASE),
        (409, False, 10, "store", Keep.RELEASE),
        (429, False, 10, "store", Keep.RELEASE),
    ],
)
def test_what_is_kept(status: int, streamed: bool, size: int, on_error: str, expected: Keep) -> None:
    assert keep(status, streamed=streamed, size=size, max_bytes=100, on_error=on_error) is expected


def test_records_round_trip_through_the_envelope() -> None:
    done = Completed("fp", 123.5, RESPONSE)
    assert decode(completed_value(done)) == done
    assert decode(in_flight_value("fp", "owner")) == InFlight("fp", "owner")
    assert completed_value(done).startswith(b"FRI\x01")
    assert decode(b"FRC\x01garbage") == Unreadable()
    # The previous format, like a newer one, may say the request ran: never absent.
    assert decode(b'{"s":"p"}') == Unreadable()
    assert decide(Unreadable(), "fp", now=0.0) is Decision.UNREADABLE


@given(st.text(max_size=80), st.text(max_size=40))
def test_an_in_flight_value_is_the_envelope_whatever_its_parts(fingerprint_: str, owner: str) -> None:
    # The claim writes hex parts directly: the bytes must be the encoder's,
    # since a completion compares them byte for byte.
    assert in_flight_value(fingerprint_, owner) == pack(b"I", {"p": 1, "fp": fingerprint_, "o": owner}, b"")
    assert decode(in_flight_value(fingerprint_, owner)) == InFlight(fingerprint_, owner)


def test_an_in_flight_value_of_hex_parts_is_the_envelope() -> None:
    hex_print, owner = hashlib.sha256(b"x").hexdigest(), "f4a13c870cc724c6ad0c7dd0b22460f8"
    assert in_flight_value(hex_print, owner) == pack(b"I", {"p": 1, "fp": hex_print, "o": owner}, b"")


def test_memory_records_bound_completed_records_by_bytes_but_never_evict_claims() -> None:
    clock = FakeClock(1_000.0)
    records = MemoryRecords(max_entries=100, max_bytes=2_000, clock=clock, lease_clock=clock)
    held = records.claim("held", "fp", lease=60)
    assert held.owner is not None
    for number in range(10):
        claim = records.claim(f"k{number}", "fp", lease=60)
        body = StoredResponse(200, (), b"x" * 500, clock())
        assert records.complete(
            f"k{number}", claim.claimed, completed_value(Completed("fp", 2_000.0, body)), 60
        )
    assert isinstance(records.get("held"), InFlight)
    assert records.get("k0") is None and isinstance(records.get("k9"), Completed)
    assert len(records) <= 1 + 4
    clock.advance(61)  # the claim's lease and every record have expired
    assert records.get("held") is None
    remaining = len(records)
    assert records.delete_matching("*") == remaining
    assert len(records) == 0


def _complete(records: MemoryRecords, record_key: str, ttl: float) -> None:
    claim = records.claim(record_key, "fp", lease=60)
    done = Completed("fp", records.clock() + ttl, StoredResponse(200, (), b"", records.clock()))
    assert records.complete(record_key, claim.claimed, completed_value(done), ttl)


def test_memory_records_sweep_an_expired_record_before_evicting_a_live_one_whatever_their_order() -> None:
    clock = FakeClock(1_000.0)
    records = MemoryRecords(max_entries=3, max_bytes=1_000_000, clock=clock, sweep_every=1_000)
    _complete(records, "oldest-live", ttl=3_600)
    _complete(records, "short", ttl=5)
    _complete(records, "live", ttl=3_600)
    assert records.get("oldest-live") is not None  # now the most recently used
    clock.advance(6)  # "short" expired, in the middle of the LRU order
    _complete(records, "new", ttl=3_600)
    assert records.get("short") is None
    assert all(records.get(name) is not None for name in ("oldest-live", "live", "new"))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(1, 50), st.integers(0, 20)), max_size=120))
def test_memory_records_keep_exactly_the_live_records_under_churn(writes: list[tuple[str, int, int]]) -> None:
    """Rewrites, evictions and expiries in any order: what is kept is live,
    within bounds, and the newest write of each key (the expiry heap never
    drops a rewritten record by its old expiry)."""
    clock = FakeClock(1_000.0)
    records = MemoryRecords(max_entries=4, max_bytes=1_000_000, clock=clock, sweep_every=3)
    newest: dict[str, float] = {}
    for name, ttl, pause in writes:
        clock.advance(pause)
        if records.get(name) is None:  # absent or expired: claim and complete it again
            _complete(records, name, ttl)
            newest[name] = clock() + ttl
        assert len(records) <= 4
    for name, expires in newest.items():
        found = records.get(name)
        if found is not None:
            assert isinstance(found, Completed) and found.expires_at == expires > clock()


# Lone surrogates that surrogateescape encodes (bytes that were not UTF-8).
_ESCAPED = st.text(alphabet=st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text() | st.binary() | _ESCAPED, max_size=6))
def test_digest_is_sha256_of_the_parts_each_ended_by_nul(parts: list[str | bytes]) -> None:
    """Record keys and fingerprints stored by earlier versions keep matching."""
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part.encode("utf-8", "surrogateescape") if isinstance(part, str) else part)
        hasher.update(b"\x00")
    assert digest(*parts) == hasher.hexdigest()
    assert digest("a", b"b") == hashlib.sha256(b"a\x00b\x00").hexdigest()
