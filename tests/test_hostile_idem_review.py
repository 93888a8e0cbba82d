"""Hostile review of three idempotency changes: unreadable records (503, never
run again), monotonic leases in memory mode, the memory-mode expiry heap;
and principal scoping read without proxies.

Each defect found is a strict xfail naming it; each promise that held under
the attack is a plain test.
"""

from __future__ import annotations

import heapq
import json
import logging
import random
import struct
import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Blueprint, Flask, jsonify, request
from flask.typing import ResponseReturnValue
from flask_login import LoginManager, UserMixin
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from flask_resilience import Resilience, idempotent, invalidate_idempotency_key
from flask_resilience.idempotency.protocol import Completed, InFlight, Record, Unreadable
from flask_resilience.idempotency.records import MemoryRecords, RedisRecords, completed_value, decode
from flask_resilience.idempotency.service import AppIdempotency
from flask_resilience.metrics import ResilienceCollector
from flask_resilience.responses import StoredResponse
from tests.clock import FakeClock
from tests.conftest import MakeApp

_LENGTH = struct.Struct(">I")


def _envelope(header: bytes, body: bytes = b"", version: int = 1) -> bytes:
    """An ``I`` record envelope around raw header bytes (which may be damaged)."""
    return b"FRI" + bytes((version,)) + _LENGTH.pack(len(header)) + header + body


def _split(value: bytes) -> tuple[dict[str, Any], bytes]:
    (length,) = _LENGTH.unpack_from(value, 4)
    header: dict[str, Any] = json.loads(value[8 : 8 + length])
    return header, value[8 + length :]


class _Runs:
    """Counts how often a view ran."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self) -> int:
        with self.lock:
            self.count += 1
            return self.count


def _redis_pay_app(make_app: MakeApp, redis_url: str, set_get: bool, runs: _Runs) -> Flask:
    # PROPAGATE_EXCEPTIONS off: an escaping exception is answered 500, as in production.
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url, PROPAGATE_EXCEPTIONS=False)
    records = AppIdempotency.of(app).records
    assert isinstance(records, RedisRecords)
    records._set_get = set_get

    @app.post("/pay")
    @idempotent()
    def pay() -> ResponseReturnValue:
        return jsonify(run=runs())

    return app


def _only_record(raw_redis: redis.Redis, key_prefix: str) -> bytes:
    stored = list(raw_redis.scan_iter(match=key_prefix + "idem:*"))
    assert len(stored) == 1, stored
    return bytes(stored[0])


def _replace_before_first_poll(records: RedisRecords, replace: Callable[[], object]) -> None:
    """Run ``replace`` just before a waiting duplicate first polls the record
    (after its claim read the in-flight one): the record changes mid-wait."""
    poll = records.get
    pending = [replace]

    def get(record_key: str) -> Record | None:
        while pending:
            pending.pop()()
        return poll(record_key)

    records.get = get  # type: ignore[method-assign]


SET_GET = pytest.mark.parametrize("set_get", [False, True], ids=["lua-claim", "set-nx-px-get"])


# --------------------------------------------------------------------------------------------
# 1. Unreadable records: 503, never run again, untouched, counted, logged; never a 500.
# --------------------------------------------------------------------------------------------


@SET_GET
def test_a_record_with_a_deeply_nested_damaged_header_is_refused_503_not_500(
    make_app: MakeApp, redis_url: str, raw_redis: redis.Redis, key_prefix: str, set_get: bool
) -> None:
    runs = _Runs()
    app = _redis_pay_app(make_app, redis_url, set_get, runs)
    client = app.test_client()
    headers = {"Idempotency-Key": "k-deep"}
    assert client.post("/pay", json={}, headers=headers).status_code == 200
    where = _only_record(raw_redis, key_prefix)
    damaged = _envelope(b"[" * 100_000)
    raw_redis.set(where, damaged, keepttl=True)
    AppIdempotency.of(app).memory.clear()
    answer = client.post("/pay", json={}, headers=headers)
    assert runs.count == 1
    assert raw_redis.get(where) == damaged
    assert answer.status_code == 503, f"answered {answer.status_code}"
    assert answer.json is not None and answer.json["type"].endswith("idempotency-record-unreadable")


def test_decode_never_raises_for_a_deeply_nested_damaged_header() -> None:
    assert isinstance(decode(_envelope(b"[" * 100_000)), Unreadable)


DAMAGED_FIELDS: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("timestamp-overflow", lambda header: header.__setitem__("t", 1e300)),
    ("timestamp-nan", lambda header: header.__setitem__("t", float("nan"))),
    ("header-with-newline", lambda header: header["h"].append(["X-Damaged", "a\nb"])),
]


@SET_GET
@pytest.mark.parametrize(("name", "damage"), DAMAGED_FIELDS, ids=[name for name, _ in DAMAGED_FIELDS])
def test_a_completed_record_with_damaged_fields_is_refused_503_not_500(
    *,
    make_app: MakeApp,
    redis_url: str,
    raw_redis: redis.Redis,
    key_prefix: str,
    set_get: bool,
    name: str,
    damage: Callable[[dict[str, Any]], None],
) -> None:
    runs = _Runs()
    app = _redis_pay_app(make_app, redis_url, set_get, runs)
    client = app.test_client()
    headers = {"Idempotency-Key": f"k-{name}"}
    assert client.post("/pay", json={}, headers=headers).status_code == 200
    where = _only_record(raw_redis, key_prefix)
    stored = raw_redis.get(where)
    assert isinstance(stored, bytes)
    header, body = _split(stored)
    damage(header)
    damaged = _envelope(json.dumps(header).encode(), body)
    raw_redis.set(where, damaged, keepttl=True)
    AppIdempotency.of(app).memory.clear()
    answer = client.post("/pay", json={}, headers=headers)
    assert runs.count == 1
    assert raw_redis.get(where) == damaged
    assert answer.status_code == 503, f"answered {answer.status_code}"


UNREADABLE_VALUES = [
    pytest.param(_envelope(b'{"p":1,"fp":"x","o":"y"}', version=2), id="newer-version"),
    pytest.param(b"FRI\x01\x00\x00\x00\x40truncated", id="damaged"),
    pytest.param(b'{"s":"p","fp":"x","o":"y"}', id="pre-envelope-in-flight"),
    pytest.param(b"FRI1\x00\x00\x00\x02{}", id="pre-envelope-completed"),
    pytest.param(_envelope(b'{"fp":"x","x":null}'), id="null-expiry"),
    pytest.param(_envelope(b"[1,2]"), id="header-not-object"),
    pytest.param(b"", id="empty"),
]


def _memory_mode_app(make_app: MakeApp, runs: _Runs, form: str) -> tuple[Flask, str]:
    """A memory-mode app (no Redis) whose /pay... runs ``runs`` under one form of protection."""
    extension = Resilience()
    if form == "prefix":
        extension.idempotent_blueprint("/api")
    app, _ = make_app(extension)
    assert isinstance(AppIdempotency.of(app).records, MemoryRecords)
    if form == "decorated":

        @app.post("/pay")
        @idempotent()
        def pay() -> ResponseReturnValue:
            return jsonify(run=runs())

        return app, "/pay"
    if form == "async":

        @app.post("/pay")
        @idempotent()
        async def pay_async() -> ResponseReturnValue:
            return jsonify(run=runs())

        return app, "/pay"
    if form == "blueprint":
        blueprint = Blueprint("payments", __name__)

        @blueprint.post("/pay")
        def pay_bp() -> ResponseReturnValue:
            return jsonify(run=runs())

        extension.idempotent_blueprint(blueprint)
        app.register_blueprint(blueprint, url_prefix="/bp")
        return app, "/bp/pay"

    @app.post("/api/pay")
    def pay_prefix() -> ResponseReturnValue:
        return jsonify(run=runs())

    return app, "/api/pay"


@pytest.mark.parametrize("form", ["decorated", "async", "blueprint", "prefix"])
@pytest.mark.parametrize("unreadable", UNREADABLE_VALUES)
def test_memory_mode_unreadable_record_is_503_never_run_untouched_counted_on_every_form(
    make_app: MakeApp, caplog: pytest.LogCaptureFixture, form: str, unreadable: bytes
) -> None:
    runs = _Runs()
    app, path = _memory_mode_app(make_app, runs, form)
    client = app.test_client()
    key = f"raw-client-key-{form}"
    headers = {"Idempotency-Key": key}
    assert client.post(path, json={}, headers=headers).status_code == 200
    records = AppIdempotency.of(app).records
    assert isinstance(records, MemoryRecords)
    (where,) = list(records._done)
    _value, expires = records._done[where]
    records._bytes += len(unreadable) - len(_value)
    records._done[where] = (unreadable, expires)
    with caplog.at_level(logging.DEBUG):
        for _ in range(3):
            answer = client.post(path, json={}, headers=headers)
            assert answer.status_code == 503
            assert answer.mimetype == "application/problem+json"
            assert answer.json is not None and answer.json["type"].endswith("idempotency-record-unreadable")
            assert answer.headers["Retry-After"]
    assert runs.count == 1
    assert records._done[where] == (unreadable, expires)
    assert AppIdempotency.of(app).stats()["unreadable_records"] == 3
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors and all("unreadable" in record.getMessage() for record in errors)
    assert key not in caplog.text


@SET_GET
@pytest.mark.parametrize("unreadable", UNREADABLE_VALUES)
def test_redis_unreadable_record_is_503_and_counted_in_the_metric(
    *,
    make_app: MakeApp,
    redis_url: str,
    raw_redis: redis.Redis,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
    set_get: bool,
    unreadable: bytes,
) -> None:
    runs = _Runs()
    app = _redis_pay_app(make_app, redis_url, set_get, runs)
    client = app.test_client()
    headers = {"Idempotency-Key": "raw-client-key-metric"}
    assert client.post("/pay", json={}, headers=headers).status_code == 200
    where = _only_record(raw_redis, key_prefix)
    raw_redis.set(where, unreadable, keepttl=True)
    AppIdempotency.of(app).memory.clear()
    with caplog.at_level(logging.DEBUG):
        statuses = [client.post("/pay", json={}, headers=headers).status_code for _ in range(2)]
    assert statuses == [503, 503]
    assert runs.count == 1
    assert raw_redis.get(where) == unreadable
    registry = CollectorRegistry()
    registry.register(ResilienceCollector(app))
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }
    assert samples[("resilience_idempotency_requests_total", (("outcome", "unreadable_record"),))] == 2.0
    assert "raw-client-key-metric" not in caplog.text


@SET_GET
def test_a_duplicate_waiting_for_a_record_that_turns_unreadable_never_runs_nor_500s(
    make_app: MakeApp, redis_url: str, raw_redis: redis.Redis, key_prefix: str, set_get: bool
) -> None:
    """wait=N: the first request's in-flight record is replaced (a newer
    version took the key over) while a duplicate polls it."""
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url)
    records = AppIdempotency.of(app).records
    assert isinstance(records, RedisRecords)
    records._set_get = set_get
    started, release = threading.Event(), threading.Event()
    runs = _Runs()

    @app.post("/slow")
    @idempotent(wait=300)
    def slow() -> ResponseReturnValue:
        runs()
        started.set()
        release.wait(10)
        return jsonify(ok=True)

    headers = {"Idempotency-Key": "k-wait"}
    first = threading.Thread(target=lambda: app.test_client().post("/slow", json={}, headers=headers))
    first.start()
    try:
        assert started.wait(10)
        where = _only_record(raw_redis, key_prefix)
        in_flight = raw_redis.get(where)
        assert isinstance(in_flight, bytes) and isinstance(decode(in_flight), InFlight)
        newer = _envelope(b'{"p":1,"fp":"x","o":"y"}', version=2)
        _replace_before_first_poll(records, lambda: raw_redis.set(where, newer, keepttl=True))
        answer = app.test_client().post("/slow", json={}, headers=headers)
        assert answer.status_code in (409, 503)
        # And a retry while the record is unreadable: 503 at once, no wait.
        again = app.test_client().post("/slow", json={}, headers=headers)
        assert again.status_code == 503
        assert runs.count == 1
    finally:
        release.set()
        first.join(10)
    assert raw_redis.get(where) == _envelope(b'{"p":1,"fp":"x","o":"y"}', version=2)
    assert runs.count == 1


@pytest.mark.parametrize("mode", ["memory", "redis"])
def test_an_operator_clears_an_unreadable_record_and_the_key_works_again(
    make_app: MakeApp, redis_url: str, raw_redis: redis.Redis, key_prefix: str, mode: str
) -> None:
    """docs: "a damaged record is cleared with invalidate_idempotency_key"."""
    app, _ = make_app(**({"RESILIENCE_REDIS_URL": redis_url} if mode == "redis" else {}))
    runs = _Runs()

    @app.post("/pay")
    @idempotent()
    def pay() -> ResponseReturnValue:
        return jsonify(run=runs())

    client = app.test_client()
    headers = {"Idempotency-Key": "k-clear", "Authorization": "Bearer someone"}
    assert client.post("/pay", json={}, headers=headers).status_code == 200
    records = AppIdempotency.of(app).records
    if isinstance(records, MemoryRecords):
        (where,) = list(records._done)
        value, expires = records._done[where]
        records._done[where] = (b"damaged", expires)
        records._bytes += len(b"damaged") - len(value)
    else:
        raw_redis.set(_only_record(raw_redis, key_prefix), b"damaged", keepttl=True)
        AppIdempotency.of(app).memory.clear()
    assert client.post("/pay", json={}, headers=headers).status_code == 503
    with app.app_context():
        assert invalidate_idempotency_key("k-clear") == 1
    assert client.post("/pay", json={}, headers=headers).json == {"run": 2}
    assert runs.count == 2


@SET_GET
def test_a_duplicate_waiting_for_a_record_that_turns_unreadable_is_answered_503(
    make_app: MakeApp, redis_url: str, raw_redis: redis.Redis, key_prefix: str, set_get: bool
) -> None:
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url)
    records = AppIdempotency.of(app).records
    assert isinstance(records, RedisRecords)
    records._set_get = set_get
    started, release = threading.Event(), threading.Event()

    @app.post("/slow")
    @idempotent(wait=300)
    def slow() -> ResponseReturnValue:
        started.set()
        release.wait(10)
        return jsonify(ok=True)

    headers = {"Idempotency-Key": "k-wait-503"}
    first = threading.Thread(target=lambda: app.test_client().post("/slow", json={}, headers=headers))
    first.start()
    try:
        assert started.wait(10)
        where = _only_record(raw_redis, key_prefix)
        newer = _envelope(b'{"p":1,"fp":"x","o":"y"}', version=2)
        _replace_before_first_poll(records, lambda: raw_redis.set(where, newer, keepttl=True))
        answer = app.test_client().post("/slow", json={}, headers=headers)
    finally:
        release.set()
        first.join(10)
    assert answer.status_code == 503, f"answered {answer.status_code}"
    assert AppIdempotency.of(app).stats()["unreadable_records"] == 1


@SET_GET
def test_fail_open_never_runs_again_over_a_record_of_another_redis_type(
    make_app: MakeApp, redis_url: str, raw_redis: redis.Redis, key_prefix: str, set_get: bool
) -> None:
    """A value of another type at the record's key (an old format, an
    operator's mistake) is a record this version cannot read, not an outage."""
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url)
    records = AppIdempotency.of(app).records
    assert isinstance(records, RedisRecords)
    records._set_get = set_get
    runs = _Runs()

    @app.post("/pay")
    @idempotent(fail_open=True)
    def pay() -> ResponseReturnValue:
        return jsonify(run=runs())

    client = app.test_client()
    headers = {"Idempotency-Key": "k-wrongtype"}
    assert client.post("/pay", json={}, headers=headers).status_code == 200
    where = _only_record(raw_redis, key_prefix)
    ttl = raw_redis.pttl(where)
    raw_redis.delete(where)
    raw_redis.hset(where, "fp", "x")
    raw_redis.pexpire(where, ttl)
    AppIdempotency.of(app).memory.clear()
    answer = client.post("/pay", json={}, headers=headers)
    assert runs.count == 1, f"the view ran again (answered {answer.status_code})"
    assert answer.status_code == 503


# --------------------------------------------------------------------------------------------
# 2. Monotonic leases in memory mode.
# --------------------------------------------------------------------------------------------


def _done(records: MemoryRecords, record_key: str, ttl: float, body: bytes = b"ok") -> bytes:
    claim = records.claim(record_key, "fp", lease=30)
    assert claim.owner is not None, record_key
    stored = StoredResponse(200, (), body, records.clock())
    value = completed_value(Completed("fp", records.clock() + ttl, stored))
    assert records.complete(record_key, claim.claimed, value, ttl)
    return value


@pytest.mark.parametrize("step", [86_400.0 * 365, -86_400.0 * 365, 1e9, -999.0])
def test_a_wall_clock_step_never_frees_a_running_requests_key(step: float) -> None:
    wall, mono = FakeClock(1_700_000_000.0), FakeClock(50.0)
    records = MemoryRecords(max_entries=4, max_bytes=10_000, clock=wall, lease_clock=mono, sweep_every=1)
    first = records.claim("k", "fp", lease=30)
    assert first.owner is not None
    wall.advance(step)
    for other in range(20):  # writes that sweep, and fill the store past its bounds
        _done(records, f"o{other}", ttl=10)
    second = records.claim("k", "fp", lease=30)
    assert second.owner is None and second.existing == InFlight("fp", first.owner)
    assert records.renew("k", first.claimed, 30)
    mono.advance(29)
    assert records.claim("k", "fp", lease=30).owner is None
    mono.advance(2)  # the renewed lease has run out by the monotonic clock
    assert records.claim("k", "fp", lease=30).owner is not None
    assert not records.complete("k", first.claimed, b"late", 10)


def test_completed_records_expire_by_their_absolute_wall_clock_expiry_not_the_lease_clock() -> None:
    wall, mono = FakeClock(1_700_000_000.0), FakeClock(50.0)
    records = MemoryRecords(max_entries=100, max_bytes=100_000, clock=wall, lease_clock=mono, sweep_every=1)
    _done(records, "k", ttl=100)
    mono.advance(10_000)  # monotonic time alone never expires a completed record
    _done(records, "other", ttl=100)
    assert isinstance(records.get("k"), Completed)
    wall.advance(-5_000)  # stepped back: still there
    assert isinstance(records.get("k"), Completed)
    wall.advance(5_000 + 99)
    assert isinstance(records.get("k"), Completed)
    wall.advance(1)  # its absolute expiry
    assert records.get("k") is None
    assert records.claim("k", "fp", lease=30).owner is not None


def test_memory_mode_app_a_wall_clock_step_during_the_view_does_not_let_a_duplicate_run(
    make_app: MakeApp,
) -> None:
    app, _ = make_app(RESILIENCE_IDEMPOTENCY_TTL=3600)
    wall = FakeClock(1_700_000_000.0)
    AppIdempotency.of(app).clock = wall
    runs = _Runs()
    nested: list[int] = []

    @app.post("/pay")
    @idempotent()
    def pay() -> ResponseReturnValue:
        number = runs()
        if number == 1:
            wall.advance(10 * 86_400)  # NTP steps the clock while the view runs
            duplicate = app.test_client().post("/pay", json={}, headers={"Idempotency-Key": "k-step"})
            nested.append(duplicate.status_code)
            wall.advance(-20 * 86_400)
            duplicate = app.test_client().post("/pay", json={}, headers={"Idempotency-Key": "k-step"})
            nested.append(duplicate.status_code)
        return jsonify(run=number)

    client = app.test_client()
    first = client.post("/pay", json={}, headers={"Idempotency-Key": "k-step"})
    assert first.status_code == 200 and nested == [409, 409] and runs.count == 1
    replay = client.post("/pay", json={}, headers={"Idempotency-Key": "k-step"})
    assert replay.headers["X-Idempotency-Replayed"] == "true" and runs.count == 1
    wall.advance(3_599)
    assert client.post("/pay", json={}, headers={"Idempotency-Key": "k-step"}).json == {"run": 1}
    wall.advance(1)  # the record's absolute expiry: the key is free again
    assert client.post("/pay", json={}, headers={"Idempotency-Key": "k-step"}).json == {"run": 2}


# --------------------------------------------------------------------------------------------
# 3. The expiry heap of memory mode.
# --------------------------------------------------------------------------------------------


def _check_invariants(records: MemoryRecords, max_entries: int, max_bytes: int) -> None:
    done = records._done
    assert len(done) <= max_entries
    assert records._bytes == sum(len(value) for value, _ in done.values())
    assert records._bytes <= max_bytes
    # Stale entries (records since dropped) wait for the next write's compaction.
    assert len(records._expiries) <= 2 * (max_entries + 1) + 65
    heap_entries = set(records._expiries)
    for key, (_value, expires) in done.items():
        assert (expires, key) in heap_entries, key  # every record can still be swept
    assert all(key not in done for key in records._flights)


def test_the_expiry_heap_keeps_bounds_and_accounting_under_random_operations() -> None:
    rng = random.Random(20261207)
    wall, mono = FakeClock(1_700_000_000.0), FakeClock(0.0)
    max_entries, max_bytes = 12, 3_000
    records = MemoryRecords(
        max_entries=max_entries, max_bytes=max_bytes, clock=wall, lease_clock=mono, sweep_every=7
    )
    held: dict[str, bytes] = {}
    for _ in range(6_000):
        operation = rng.random()
        key = f"k{rng.randrange(40)}"
        if operation < 0.35:
            claim = records.claim(key, "fp", lease=rng.choice([5, 60, 10_000]))
            if claim.owner is not None:
                held[key] = claim.claimed
        elif operation < 0.7 and held:
            key = rng.choice(sorted(held))
            ttl = rng.choice([1, 10, 100, 100_000])
            body = b"x" * rng.randrange(0, 400)
            value = completed_value(Completed("fp", wall() + ttl, StoredResponse(200, (), body, wall())))
            records.complete(key, held.pop(key), value, ttl)
        elif operation < 0.78 and held:
            key = rng.choice(sorted(held))
            records.release(key, held.pop(key))
        elif operation < 0.85:
            records.delete_matching(rng.choice([key, "k1*", "*"]))
        elif operation < 0.95:
            records.get(key)
        else:
            wall.advance(rng.choice([0.5, 5, 50, -20]))
            mono.advance(rng.choice([0.5, 5, 50]))
        _check_invariants(records, max_entries, max_bytes)
        for flight_key, claimed in held.items():  # in-flight claims are never evicted
            stored = records._flights.get(flight_key)
            if stored is not None and stored[1] > mono():
                assert records.get(flight_key) == decode(claimed)


def test_expired_records_are_swept_before_a_live_one_is_evicted() -> None:
    wall, mono = FakeClock(1_700_000_000.0), FakeClock(0.0)
    records = MemoryRecords(max_entries=3, max_bytes=1_000_000, clock=wall, lease_clock=mono)
    _done(records, "live-old", ttl=1_000)  # least recently used, but live
    _done(records, "short-1", ttl=10)
    _done(records, "short-2", ttl=10)
    wall.advance(11)
    _done(records, "new", ttl=1_000)
    _done(records, "new-2", ttl=1_000)
    assert isinstance(records.get("live-old"), Completed)
    assert isinstance(records.get("new"), Completed) and isinstance(records.get("new-2"), Completed)


def test_a_rewritten_record_is_not_dropped_by_its_old_expiry() -> None:
    wall, mono = FakeClock(1_700_000_000.0), FakeClock(0.0)
    records = MemoryRecords(max_entries=2, max_bytes=1_000_000, clock=wall, lease_clock=mono, sweep_every=1)
    for _ in range(3):
        _done(records, "k", ttl=10)
        assert records.delete_matching("k") == 1
    _done(records, "k", ttl=1_000)
    wall.advance(20)  # every old expiry of "k" is due
    _done(records, "other", ttl=1_000)  # sweeps (sweep_every=1) and fills the store
    assert isinstance(records.get("k"), Completed)
    wall.advance(5)
    _done(records, "k2", ttl=10)  # evicts the least recently used: "other"
    assert isinstance(records.get("k"), Completed)


@pytest.mark.parametrize("churn", ["delete", "evict", "expire"])
def test_the_expiry_heap_stays_bounded_under_churn_with_a_long_ttl(churn: str) -> None:
    wall, mono = FakeClock(1_700_000_000.0), FakeClock(0.0)
    records = MemoryRecords(max_entries=50, max_bytes=10_000_000, clock=wall, lease_clock=mono)
    for number in range(20_000):
        key = "k" if churn == "delete" else f"k{number}"
        _done(records, key, ttl=10 if churn == "expire" else 10**9)
        if churn == "delete":
            records.delete_matching(key)
        elif churn == "expire":
            wall.advance(1)
        mono.advance(0.001)
    assert len(records._expiries) <= 2 * len(records._done) + 65
    assert len(records._done) <= 50


def test_concurrent_claims_and_completions_keep_one_winner_and_the_bounds() -> None:
    records = MemoryRecords(max_entries=20, max_bytes=20_000, sweep_every=3)
    threads, rounds = 8, 200
    barrier = threading.Barrier(threads)
    winners: list[list[int]] = [[] for _ in range(rounds)]
    errors: list[BaseException] = []

    def worker(number: int) -> None:
        try:
            for round_ in range(rounds):
                barrier.wait(10)
                claim = records.claim(f"same-{round_}", "fp", lease=60)
                if claim.owner is not None:
                    winners[round_].append(number)
                    _value = completed_value(Completed("fp", 2e9, StoredResponse(200, (), b"y" * 100, 0.0)))
                    assert records.complete(f"same-{round_}", claim.claimed, _value, 60)
                own = records.claim(f"own-{number}-{round_}", "fp", lease=60)
                assert own.owner is not None
                value = completed_value(Completed("fp", 2e9, StoredResponse(200, (), b"z" * 300, 0.0)))
                assert records.complete(f"own-{number}-{round_}", own.claimed, value, 1e9)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            barrier.abort()

    pool = [threading.Thread(target=worker, args=(number,)) for number in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(30)
    assert not errors, errors
    assert all(len(round_winners) == 1 for round_winners in winners)
    _check_invariants(records, 20, 20_000)
    assert heapq.nsmallest(1, records._expiries) == records._expiries[:1]


def test_memory_mode_a_response_larger_than_the_store_is_not_run_again(make_app: MakeApp) -> None:
    app, _ = make_app(RESILIENCE_IDEMPOTENCY_MEMORY_BYTES=10_000)  # _MAX_BODY_BYTES: 1 MiB
    runs = _Runs()

    @app.post("/export")
    @idempotent()
    def export() -> ResponseReturnValue:
        return jsonify(run=runs(), data="x" * int(request.args.get("size", "10")))

    client = app.test_client()
    small = client.post("/export?size=10", json={}, headers={"Idempotency-Key": "small"})
    assert small.status_code == 200 and runs.count == 1
    big = {"Idempotency-Key": "big"}
    assert client.post("/export?size=20000", json={}, headers=big).status_code == 200
    assert runs.count == 2
    retry = client.post("/export?size=20000", json={}, headers=big)
    # Kept (or answered 413 "not kept"), but never run again.
    replayed = retry.headers["X-Idempotency-Replayed"]
    assert runs.count == 2, (
        f"the big request ran again (retry answered {retry.status_code}, replayed {replayed})"
    )
    assert retry.status_code in (200, 413)
    small_retry = client.post("/export?size=10", json={}, headers={"Idempotency-Key": "small"})
    assert small_retry.json == {"run": 1, "data": "x" * 10}  # not flushed for a record that cannot fit


def test_memory_mode_app_concurrent_duplicates_run_once_and_different_keys_each_once(
    make_app: MakeApp,
) -> None:
    app, _ = make_app(RESILIENCE_IDEMPOTENCY_MEMORY_ENTRIES=5, RESILIENCE_IDEMPOTENCY_MEMORY_BYTES=50_000)
    runs: dict[str, int] = {}
    lock = threading.Lock()
    gate = threading.Event()

    @app.post("/pay/<key>")
    @idempotent()
    def pay(key: str) -> ResponseReturnValue:
        with lock:
            runs[key] = runs.get(key, 0) + 1
        gate.wait(2)
        return jsonify(key=key)

    statuses: list[int] = []

    def post(key: str) -> None:
        answer = app.test_client().post(f"/pay/{key}", json={}, headers={"Idempotency-Key": key})
        with lock:
            statuses.append(answer.status_code)

    pool = [threading.Thread(target=post, args=(f"k{number % 4}",)) for number in range(16)]
    for thread in pool:
        thread.start()
    threading.Timer(0.3, gate.set).start()
    for thread in pool:
        thread.join(10)
    assert runs == {"k0": 1, "k1": 1, "k2": 1, "k3": 1}
    assert len(statuses) == 16 and set(statuses) <= {200, 409}  # replays or "still running"
    records = AppIdempotency.of(app).records
    assert isinstance(records, MemoryRecords)
    assert not records._flights and len(records._done) == 4


@SET_GET
@pytest.mark.parametrize("form", ["blueprint", "prefix"])
def test_redis_unreadable_record_under_blueprint_and_prefix_protection_is_503(
    *, make_app: MakeApp, redis_url: str, raw_redis: redis.Redis, key_prefix: str, set_get: bool, form: str
) -> None:
    extension = Resilience()
    runs = _Runs()
    if form == "prefix":
        extension.idempotent_blueprint("/api")
    app, _ = make_app(extension, RESILIENCE_REDIS_URL=redis_url)
    records = AppIdempotency.of(app).records
    assert isinstance(records, RedisRecords)
    records._set_get = set_get
    if form == "blueprint":
        blueprint = Blueprint("pay_bp", __name__)

        @blueprint.post("/pay")
        def pay_bp() -> ResponseReturnValue:
            return jsonify(run=runs())

        extension.idempotent_blueprint(blueprint)
        app.register_blueprint(blueprint, url_prefix="/api")
    else:

        @app.post("/api/pay")
        def pay_prefix() -> ResponseReturnValue:
            return jsonify(run=runs())

    client = app.test_client()
    headers = {"Idempotency-Key": f"k-{form}"}
    assert client.post("/api/pay", json={}, headers=headers).status_code == 200
    where = _only_record(raw_redis, key_prefix)
    raw_redis.set(where, b"FRI\x07later", keepttl=True)
    AppIdempotency.of(app).memory.clear()
    assert client.post("/api/pay", json={}, headers=headers).status_code == 503
    assert runs.count == 1 and raw_redis.get(where) == b"FRI\x07later"


# --------------------------------------------------------------------------------------------
# 4. Principal scoping: user B never gets user A's replay.
# --------------------------------------------------------------------------------------------


def _scoped_app(make_app: MakeApp) -> Flask:
    app, _ = make_app()

    @app.post("/orders")
    @idempotent()
    def orders() -> ResponseReturnValue:
        return jsonify(auth=request.headers.get("Authorization"), user=request.headers.get("X-User"))

    return app


AUTH_PAIRS: list[tuple[str, list[tuple[str, str]], list[tuple[str, str]]]] = [
    ("distinct", [("Authorization", "Bearer a")], [("Authorization", "Bearer b")]),
    ("lower-case-name", [("authorization", "Bearer a")], [("AUTHORIZATION", "Bearer b")]),
    (
        "repeated",
        [("Authorization", "Bearer a"), ("Authorization", "Bearer x")],
        [("Authorization", "Bearer b"), ("Authorization", "Bearer x")],
    ),
    (
        "repeated-vs-single",
        [("Authorization", "Bearer a")],
        [("Authorization", "Bearer a"), ("Authorization", "")],
    ),
    ("empty-vs-set", [("Authorization", "")], [("Authorization", "Bearer b")]),
    ("case-of-value", [("Authorization", "Bearer abc")], [("Authorization", "bearer ABC")]),
    ("padding", [("Authorization", "Bearer a")], [("Authorization", "Bearer a ")]),
]


@pytest.mark.parametrize(("name", "alice", "bob"), AUTH_PAIRS, ids=[name for name, _, _ in AUTH_PAIRS])
def test_a_different_authorization_never_gets_anothers_replay(
    make_app: MakeApp, name: str, alice: list[tuple[str, str]], bob: list[tuple[str, str]]
) -> None:
    app = _scoped_app(make_app)
    client = app.test_client()
    key = [("Idempotency-Key", f"o-{name}")]
    first = client.post("/orders", json={}, headers=alice + key)
    second = client.post("/orders", json={}, headers=bob + key)
    assert first.status_code == second.status_code == 200
    if second.headers["X-Idempotency-Replayed"] == "true":
        # Only the same credential may share a scope: werkzeug folds these to one value.
        assert first.request.environ.get("HTTP_AUTHORIZATION") == second.request.environ.get(
            "HTTP_AUTHORIZATION"
        )


class _User(UserMixin):  # type: ignore[misc]
    def __init__(self, user_id: str) -> None:
        self.id = user_id


@pytest.mark.parametrize("order", ["login-after-extension", "login-before-extension"])
def test_flask_login_users_are_scoped_whenever_flask_login_is_set_up(
    make_app: MakeApp, key_prefix: str, order: str
) -> None:
    manager = LoginManager()
    extensions: list[Resilience] = []

    def make_app_for(app: Flask) -> None:
        app.config["RESILIENCE_KEY_PREFIX"] = key_prefix
        extensions.append(Resilience(app))

    def load(req: Any) -> _User | None:
        user = req.headers.get("X-User")
        return _User(user) if user else None

    manager.request_loader(load)

    if order == "login-before-extension":
        app = Flask("resilience_login")
        app.config.update(TESTING=True, SECRET_KEY="s")
        manager.init_app(app)
        make_app_for(app)
    else:
        app, _ = make_app()
        manager.init_app(app)
    runs = _Runs()

    @app.post("/orders")
    @idempotent()
    def orders() -> ResponseReturnValue:
        return jsonify(user=request.headers.get("X-User"), run=runs())

    client = app.test_client()
    shared = {"Authorization": "Bearer shared-service-token", "Idempotency-Key": "o-1"}
    alice = client.post("/orders", json={}, headers={**shared, "X-User": "alice"})
    bob = client.post("/orders", json={}, headers={**shared, "X-User": "bob"})
    alice_again = client.post("/orders", json={}, headers={**shared, "X-User": "alice"})
    assert alice.json == {"user": "alice", "run": 1}
    assert bob.json == {"user": "bob", "run": 2}
    try:
        assert alice_again.json == {"user": "alice", "run": 1}
        assert alice_again.headers["X-Idempotency-Replayed"] == "true"
    finally:
        for extension in extensions:
            extension.shutdown()


def test_a_principal_loader_scopes_users_sharing_one_credential(make_app: MakeApp) -> None:
    extension = Resilience()

    @extension.principal_loader
    def loader() -> str | None:
        return request.headers.get("X-User")

    app, _ = make_app(extension)
    LoginManager().init_app(app)  # the loader wins over Flask-Login
    runs = _Runs()

    @app.post("/orders")
    @idempotent()
    def orders() -> ResponseReturnValue:
        return jsonify(user=request.headers.get("X-User"), run=runs())

    client = app.test_client()
    shared = {"Authorization": "Bearer shared", "Idempotency-Key": "o-1"}
    alice = client.post("/orders", json={}, headers={**shared, "X-User": "alice"})
    bob = client.post("/orders", json={}, headers={**shared, "X-User": "bob"})
    anonymous_a = client.post("/orders", json={}, headers={"Idempotency-Key": "o-1", "Authorization": "A"})
    anonymous_b = client.post("/orders", json={}, headers={"Idempotency-Key": "o-1", "Authorization": "B"})
    assert [answer.json for answer in (alice, bob)] == [
        {"user": "alice", "run": 1},
        {"user": "bob", "run": 2},
    ]
    assert anonymous_a.json == {"user": None, "run": 3} and anonymous_b.json == {"user": None, "run": 4}


def test_requests_sharing_an_app_context_never_share_a_principal(make_app: MakeApp) -> None:
    """Flask reuses an active app context (and its ``g``) of the same app
    for a new request: test suites under ``with app.app_context()``,
    in-process sub-requests (batch endpoints)."""
    extension = Resilience()

    @extension.principal_loader
    def loader() -> str | None:
        return request.headers.get("X-User")

    app, _ = make_app(extension)
    runs = _Runs()

    @app.post("/orders")
    @idempotent()
    def orders() -> ResponseReturnValue:
        return jsonify(user=request.headers.get("X-User"), run=runs())

    client = app.test_client()
    with app.app_context():
        alice = client.post("/orders", json={}, headers={"X-User": "alice", "Idempotency-Key": "o-1"})
        bob = client.post("/orders", json={}, headers={"X-User": "bob", "Idempotency-Key": "o-1"})
    assert alice.json == {"user": "alice", "run": 1}
    assert bob.json == {"user": "bob", "run": 2}, f"bob got {bob.json}"
