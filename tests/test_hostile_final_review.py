"""Hostile review of three late changes: tag counters that start from the
clock, the principal kept once a view is dispatched, and the breaker status
that reads Redis. A strict xfail is a defect found; the rest held."""

from __future__ import annotations

import subprocess
from itertools import count
from typing import Any

import pytest
import redis
from flask import Flask, g, jsonify, request
from flask.typing import ResponseReturnValue

from flask_resilience import (
    CircuitOpenError,
    CircuitState,
    Resilience,
    cached,
    current_principal,
    invalidate_cache_by_tag,
)
from flask_resilience.cache.service import AppCache
from tests.cache_outage import stopped
from tests.clock import FakeClock, eventually
from tests.conftest import MakeApp
from tests.test_breaker_shared import PARAMETERS, SERVICE, _shared_app, _trip, status_app
from tests.test_hostile_cache_review import tagged_app

RUNS = count(1)  # every computed body is unique


# -- 1. tag counters start from the clock -------------------------------------------------------


def test_an_invalidation_after_the_tag_counter_was_damaged_to_a_negative_integer_reaches_every_l1(
    make_app: MakeApp, redis_url: str, raw_redis: redis.Redis, key_prefix: str
) -> None:
    """_VERSIONS takes a counter that is not ``^%d+$`` for damaged and
    restarts it from the clock; _BUMP only restarts what INCRBY refuses, so
    "-1" becomes 0: below the version every process knew, and learn()
    ignores it here and in every other process (L1 keeps the old entry)."""
    writer, writer_client = tagged_app(make_app, redis_url)
    _reader, reader_client = tagged_app(make_app, redis_url)
    for client in (writer_client, reader_client, writer_client, reader_client):
        client.get("/fares")
    before = writer_client.get("/fares")
    assert before.headers["Cache-Status"].endswith("detail=l1")
    (counter,) = raw_redis.scan_iter(match=f"{key_prefix}*:cache:t:fares")
    raw_redis.set(counter, "-1")
    with writer.app_context():
        invalidate_cache_by_tag("fares")
    fresh = writer_client.get("/fares")
    assert fresh.status_code == 200
    assert fresh.headers["X-Cache"] == "MISS", "the invalidating process still serves the old entry"
    assert eventually(lambda: reader_client.get("/fares").get_data() == fresh.get_data())


def test_holds_an_invalidation_after_the_tag_counter_became_another_type_or_text(
    make_app: MakeApp, redis_url: str, raw_redis: redis.Redis, key_prefix: str
) -> None:
    """Another Redis type, then text: each next invalidation is seen everywhere, L2 stays up."""
    writer, writer_client = tagged_app(make_app, redis_url)
    _reader, reader_client = tagged_app(make_app, redis_url)
    for damage in ("list", "text", "huge"):
        for client in (writer_client, reader_client, writer_client, reader_client):
            assert client.get("/fares").status_code == 200
        before = writer_client.get("/fares")
        assert before.headers["Cache-Status"].endswith("detail=l1")
        (counter,) = raw_redis.scan_iter(match=f"{key_prefix}*:cache:t:fares")
        raw_redis.delete(counter)
        if damage == "list":
            raw_redis.rpush(counter, "x")
        elif damage == "text":
            raw_redis.set(counter, "twelve")
        else:
            raw_redis.set(counter, "9" * 19)
        with writer.app_context():
            invalidate_cache_by_tag("fares")
        fresh = writer_client.get("/fares")
        assert fresh.status_code == 200 and fresh.headers["X-Cache"] == "MISS", damage
        body = fresh.get_data()
        assert eventually(lambda: reader_client.get("/fares").get_data() == body), damage  # noqa: B023
        assert AppCache.of(writer).stats()["l2"]["available"], damage


def _flask_caching_app(make_app: MakeApp, key_prefix: str) -> tuple[Flask, Any]:
    from flask_caching import Cache

    config: dict[str, Any] = {"CACHE_TYPE": "SimpleCache", "CACHE_KEY_PREFIX": f"fc-{key_prefix}"}
    cache = Cache(config=config)
    app, _ = make_app(Resilience(cache_backend=cache), RESILIENCE_AUDIT_ENABLED=False)
    cache.init_app(app, config=config)

    @app.get("/routes")
    @cached(ttl=60, tags=["routes"])
    def routes() -> ResponseReturnValue:
        return jsonify(run=next(RUNS))

    return app, cache


def test_a_damaged_tag_counter_on_flask_caching_costs_a_miss_not_a_500(
    make_app: MakeApp, key_prefix: str
) -> None:
    """A counter that is not an integer (another writer, a wrong serializer)
    must read as damaged and restart, as on Redis; here the view answers 500."""
    app, cache = _flask_caching_app(make_app, key_prefix)
    client = app.test_client()
    first = client.get("/routes")
    assert first.status_code == 200
    with app.app_context():
        assert (
            cache.cache.get(f"{key_prefix}cache:t:routes") is not None
        )  # the counter, as the backend names it
        cache.cache.set(f"{key_prefix}cache:t:routes", "twelve", timeout=0)
    AppCache.of(app).layered.tags.forget()  # another process, or the copy aged out
    answer = client.get("/routes")
    assert answer.status_code == 200
    with app.app_context():
        invalidate_cache_by_tag("routes")
    after = client.get("/routes")
    assert after.status_code == 200 and after.headers["X-Cache"] == "MISS"
    assert AppCache.of(app).stats()["l2"]["available"]


# -- 2. the principal ------------------------------------------------------------------------------


def test_holds_a_per_user_entry_is_never_served_to_the_next_caller_in_a_reused_app_context(
    make_app: MakeApp, redis_url: str
) -> None:
    """An early hook asks for the principal while g still holds the last
    caller; the app's own auth hook runs later. The loader returns odd values too."""
    app, extension = make_app(RESILIENCE_REDIS_URL=redis_url, RESILIENCE_AUDIT_ENABLED=False)
    seen: list[object] = []

    @app.before_request
    def early() -> None:
        seen.append(current_principal())

    @app.before_request
    def auth() -> None:
        user = request.headers.get("X-User")
        g.user = {"alice": "alice", "bob": "bob", "zero": 0, "empty": ""}.get(user or "")

    @extension.principal_loader
    def loader() -> str | int | None:
        user: str | int | None = getattr(g, "user", None)
        return user

    @app.get("/me")
    @cached(60, per_user=True)
    def me() -> ResponseReturnValue:
        return jsonify(user=str(getattr(g, "user", None)), run=next(RUNS))

    client = app.test_client()
    with app.app_context():  # one pushed app context: g is shared by the requests
        alice = client.get("/me", headers={"X-User": "alice"})
        bob = client.get("/me", headers={"X-User": "bob"})
        zero = client.get("/me", headers={"X-User": "zero"})
        empty = client.get("/me", headers={"X-User": "empty"})
        again = client.get("/me", headers={"X-User": "alice"})
    assert alice.json is not None and alice.json["user"] == "alice"
    assert bob.json is not None and bob.json["user"] == "bob"
    assert zero.json is not None and zero.json["user"] == "0"
    assert empty.json is not None and empty.json["user"] == ""
    assert empty.headers["X-Cache"] == "MISS"  # no principal: bypassed, never another's entry
    assert again.get_data() == alice.get_data()


# -- 3. breaker status reads Redis ---------------------------------------------------------------


def test_the_status_endpoint_answers_when_the_shared_state_is_damaged(
    make_app: MakeApp, redis_url: str, raw_redis: redis.Redis
) -> None:
    """A damaged state hash (another writer, a bad migration) must not turn
    the status page into a 500: it is what on-call reads in an incident."""
    extension = Resilience()
    extension.circuit_breaker(SERVICE, **PARAMETERS)
    app, store = status_app(make_app, extension, redis_url)
    raw_redis.hset(store.key("state", slot=f"breaker:{SERVICE}"), mapping={"s": "BOGUS", "u": "x", "v": "y"})
    answer = app.test_client().get("/api/health/circuit-breakers")
    assert answer.status_code == 200


def test_reading_the_status_while_redis_hangs_does_not_make_a_new_worker_forget_to_sync(
    make_app: MakeApp, throwaway_redis: tuple[str, subprocess.Popen[bytes]]
) -> None:
    """Another worker opened the circuit before this one started: its first
    call reads Redis and is refused. A status read while Redis hung must not
    change that; here it drops the pending sync, and after Redis is back the
    call goes to the failing service as if the circuit were CLOSED."""
    url, server = throwaway_redis
    clock = FakeClock(1_700_000_000)
    _, tripping = _shared_app(make_app, url, clock)
    _trip(tripping, 5)
    assert tripping.state is CircuitState.OPEN
    extension = Resilience()
    fresh = extension.circuit_breaker(SERVICE, clock=clock, **PARAMETERS)
    app, _store = status_app(make_app, extension, url, RESILIENCE_REDIS_SOCKET_TIMEOUT=0.2)
    client = app.test_client()
    with stopped(server):
        answer = client.get("/api/health/circuit-breakers")
    assert answer.status_code == 200
    assert answer.json is not None and answer.json["circuit_breakers"][SERVICE]["storage_errors"] == 1
    called: list[int] = []
    with pytest.raises(CircuitOpenError):
        fresh.call(lambda: called.append(1))
    assert called == []


def test_an_invalidation_after_the_tag_counter_rolled_back_reaches_every_l1(
    make_app: MakeApp, redis_url: str, raw_redis: redis.Redis, key_prefix: str
) -> None:
    """A failover to a replica that had not received the last bumps takes the
    counter back below the version processes knew (a loss of its last
    writes). The next invalidation bumps it to a version still below theirs,
    so every process, the invalidating one included, ignores it."""
    writer, writer_client = tagged_app(make_app, redis_url)
    _reader, reader_client = tagged_app(make_app, redis_url)
    writer_client.get("/fares")
    (counter,) = raw_redis.scan_iter(match=f"{key_prefix}*:cache:t:fares")
    lagging = int(raw_redis.get(counter) or 0)  # what the replica has
    with writer.app_context():
        for _ in range(3):
            invalidate_cache_by_tag("fares")
    for client in (writer_client, reader_client, writer_client, reader_client):
        client.get("/fares")
    assert writer_client.get("/fares").headers["Cache-Status"].endswith("detail=l1")
    raw_redis.set(counter, lagging)  # the failover
    with writer.app_context():
        invalidate_cache_by_tag("fares")
    fresh = writer_client.get("/fares")
    assert fresh.headers["X-Cache"] == "MISS", "the invalidating process still serves the old entry"
    body = fresh.get_data()
    assert eventually(lambda: reader_client.get("/fares").get_data() == body)


def test_a_loader_answering_false_for_no_user_does_not_make_two_credentials_one_principal(
    make_app: MakeApp, redis_url: str
) -> None:
    """``return user.is_authenticated and user.id`` answers False for nobody
    (a bool is an int, so the loader's type allows it). That is no user: each
    Authorization header must stay its own principal, not "user:False" for all."""
    app, extension = make_app(RESILIENCE_REDIS_URL=redis_url, RESILIENCE_AUDIT_ENABLED=False)

    @extension.principal_loader
    def loader() -> str | int | None:
        known = request.headers.get("X-User")
        return bool(known) and str(known)

    @app.get("/account")
    @cached(60, per_user=True)
    def account() -> ResponseReturnValue:
        return jsonify(token=request.headers.get("Authorization"), run=next(RUNS))

    client = app.test_client()
    first = client.get("/account", headers={"Authorization": "Bearer alice-token"})
    second = client.get("/account", headers={"Authorization": "Bearer mallory-token"})
    assert first.json is not None and first.json["token"] == "Bearer alice-token"
    assert second.json is not None and second.json["token"] == "Bearer mallory-token", "served alice's entry"


@pytest.mark.cluster
def test_holds_tag_counters_restart_from_the_clock_on_a_redis_cluster(
    cluster_nodes: list[tuple[str, int]], key_prefix: str
) -> None:
    """The scripts (TIME before a write, a missing, damaged or foreign-typed
    counter) on a cluster: each restart is above what was known, and the
    next bump too."""
    from flask_resilience.cache.backends import RedisBackend
    from flask_resilience.stores.redis import RedisStore, build_client

    store = RedisStore(
        build_client(None, tuple(cluster_nodes), socket_timeout=0.5, connect_timeout=0.5), key_prefix
    )
    try:
        backend = RedisBackend(store)
        _, (known,) = backend.tag_versions(["fares"])
        key = store.key("cache", "t", "fares", slot="cache-tags")
        for damage in ("missing", "text", "list"):
            store.client.delete(key)
            if damage == "text":
                store.client.set(key, "twelve")
            elif damage == "list":
                store.client.rpush(key, "x")
            bumped = backend.bump_tag("fares")
            assert bumped > known, damage
            _, (read,) = backend.tag_versions(["fares"])
            assert read == bumped, damage
            known = bumped
    finally:
        for name in list(store.scan()):
            store.delete(name)
        store.close()


def test_one_damaged_breaker_key_does_not_hide_another_circuits_open_state(
    make_app: MakeApp, redis_url: str, raw_redis: redis.Redis
) -> None:
    """Redis answers; only the first breaker's state key is another type
    (WRONGTYPE is a RedisError, read as "Redis failed"). The loop stops
    there, and a circuit another worker opened is reported CLOSED."""
    clock = FakeClock(1_700_000_000)
    _, tripping = _shared_app(make_app, redis_url, clock)
    extension = Resilience()
    extension.circuit_breaker("damaged", clock=clock, **PARAMETERS)
    extension.circuit_breaker(SERVICE, clock=clock, **PARAMETERS)
    asked, store = status_app(make_app, extension, redis_url)
    client = asked.test_client()
    assert client.get("/api/health/circuit-breakers").status_code == 200
    store.subscriber.stop()  # this worker hears nothing of what follows
    raw_redis.rpush(store.key("state", slot="breaker:damaged"), "x")
    _trip(tripping, 5)
    answer = client.get("/api/health/circuit-breakers")
    assert answer.status_code == 200 and answer.json is not None
    assert answer.json["circuit_breakers"][SERVICE]["state"] == "OPEN"
