"""Cache safety as a hostile client sees it: keys, HTTP semantics, embedded mode,
lost tag counters, and what a hit skips."""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask, abort, jsonify, request, url_for
from flask.typing import ResponseReturnValue

from flask_resilience import (
    cached,
    invalidate_cache,
    invalidate_cache_by_tag,
    warmup_cache,
)
from flask_resilience.cache.service import AppCache
from flask_resilience.state import get_state
from tests.clock import FakeClock
from tests.conftest import MakeApp
from tests.services import free_port, start_redis_server

RUNS: Counter[str] = Counter()


def _user() -> str | None:
    return request.headers.get("X-User")


def build(app: Flask) -> Flask:
    RUNS.clear()

    @app.get("/api/orders/<order>")
    @cached(per_user=True)
    def order(order: str) -> ResponseReturnValue:
        RUNS["order"] += 1
        return jsonify(order=order, owner=_user())

    @app.get("/search/<path:term>")
    @cached()
    def search(term: str) -> ResponseReturnValue:
        RUNS["search"] += 1
        return jsonify(term=term, page=request.args.get("page"))

    @app.get("/flights")
    @cached(tags=["flights"], prefix="api")
    def flights() -> ResponseReturnValue:
        RUNS["flights"] += 1
        return jsonify(a=request.args.getlist("a"), run=RUNS["flights"])

    @app.get("/mine")
    @cached(per_user=True, key_func=lambda req: "mine")
    def mine() -> ResponseReturnValue:
        return jsonify(owner=_user())

    @app.get("/link")
    @cached()
    def link() -> ResponseReturnValue:
        return jsonify(url=url_for("link", _external=True))

    @app.get("/pinned")
    @cached(vary_host=False)
    def pinned() -> ResponseReturnValue:
        RUNS["pinned"] += 1
        return jsonify(run=RUNS["pinned"])

    return app


@pytest.fixture
def app(make_app: MakeApp, redis_url: str) -> Flask:
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url, RESILIENCE_PRINCIPAL_LOADER=_user)
    store = get_state(app).redis
    assert store is not None
    assert store.subscriber.wait_until_listening(10)
    return build(app)


def _get(app: Flask, path: str, **headers: str) -> Any:
    return app.test_client().get(path, headers=headers)


# -- 1. keys ------------------------------------------------------------------------------------


def test_encoded_hash_in_the_path_cannot_read_another_users_entry(app: Flask) -> None:
    mine = _get(app, "/api/orders/1001", **{"X-User": "42"})
    assert mine.json == {"order": "1001", "owner": "42"}
    forged = _get(app, "/api/orders/1001%23u=user:42")
    assert forged.headers["X-Cache"] == "MISS"
    assert forged.json["owner"] is None


def test_encoded_question_mark_is_not_the_query_string(app: Flask) -> None:
    attacker = _get(app, "/search/foo%3Fpage=2")
    assert attacker.json == {"term": "foo?page=2", "page": None}
    real = _get(app, "/search/foo?page=2")
    assert real.headers["X-Cache"] == "MISS"
    assert real.json == {"term": "foo", "page": "2"}


def test_order_of_a_repeated_parameter_is_part_of_the_key(app: Flask) -> None:
    assert _get(app, "/flights?a=evil&a=good").json["a"] == ["evil", "good"]
    other = _get(app, "/flights?a=good&a=evil")
    assert other.headers["X-Cache"] == "MISS"
    assert other.json["a"] == ["good", "evil"]


def test_per_user_scopes_a_key_func_too(app: Flask) -> None:
    assert _get(app, "/mine", **{"X-User": "alice"}).json == {"owner": "alice"}
    bob = _get(app, "/mine", **{"X-User": "bob"})
    assert bob.json == {"owner": "bob"}
    assert _get(app, "/mine", **{"X-User": "alice"}).headers["X-Cache"] == "HIT"


def test_host_and_scheme_are_in_the_key(app: Flask) -> None:
    poisoned = _get(app, "/link", Host="evil.example")
    assert poisoned.json == {"url": "http://evil.example/link"}
    real = _get(app, "/link", Host="api.example")
    assert real.headers["X-Cache"] == "MISS"
    assert real.json == {"url": "http://api.example/link"}
    secure = app.test_client().get("/link", headers={"Host": "api.example"}, base_url="https://api.example")
    assert secure.json == {"url": "https://api.example/link"}


def test_vary_host_false_shares_one_entry_across_hosts(app: Flask) -> None:
    _get(app, "/pinned", Host="a.example")
    assert _get(app, "/pinned", Host="b.example").headers["X-Cache"] == "HIT"
    assert RUNS["pinned"] == 1


# -- 6. what a hit skips --------------------------------------------------------------------------


def test_a_decorator_above_cached_runs_on_hits(make_app: MakeApp) -> None:
    app, _ = make_app()
    checks: list[str | None] = []

    def authorize(view: Callable[..., ResponseReturnValue]) -> Callable[..., ResponseReturnValue]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> ResponseReturnValue:
            checks.append(request.headers.get("X-Role"))
            if request.headers.get("X-Role") != "admin":
                abort(403)
            return view(*args, **kwargs)

        return wrapper

    @app.get("/report")
    @authorize
    @cached()
    def report() -> ResponseReturnValue:
        return jsonify(secret=True)

    client = app.test_client()
    assert client.get("/report", headers={"X-Role": "admin"}).headers["X-Cache"] == "MISS"
    assert client.get("/report", headers={"X-Role": "admin"}).headers["X-Cache"] == "HIT"
    assert client.get("/report").status_code == 403
    assert checks == ["admin", "admin", None]


# -- 4. embedded mode -------------------------------------------------------------------------------


def test_embedded_mode_keeps_the_full_ttl(make_app: MakeApp) -> None:
    app, _ = make_app(RESILIENCE_CACHE_L1_MAX_TTL=60)
    build(app)
    clock = FakeClock(1_700_000_000)
    AppCache.of(app).layered.set_clock(clock)
    with app.app_context():
        warmup_cache("rates", {"EUR": 1}, 300)
    _get(app, "/flights")
    clock.advance(61)
    assert _get(app, "/flights").headers["X-Cache"] == "HIT"
    with app.app_context():
        assert AppCache.of(app).data.get("rates") == {"EUR": 1}
    clock.advance(240)  # 301 s
    assert _get(app, "/flights").headers["X-Cache"] == "MISS"


# -- 5. tag counters lost to eviction, failover or a flush ------------------------------------------


def _delete_tag_counters(raw_redis: redis.Redis, key_prefix: str, tag: str) -> int:
    doomed = [key for key in raw_redis.scan_iter(match=f"{key_prefix}*") if b"cache-tags" in key]
    doomed = [key for key in doomed if key.endswith(f":{tag}".encode())]
    return int(raw_redis.delete(*doomed)) if doomed else 0


def test_a_lost_tag_counter_does_not_revive_invalidated_entries(
    app: Flask, raw_redis: redis.Redis, key_prefix: str
) -> None:
    _get(app, "/flights?a=old")
    with app.app_context():
        invalidate_cache_by_tag("flights")
    assert _delete_tag_counters(raw_redis, key_prefix, "flights") == 1  # evicted
    AppCache.of(app).layered.l1.clear()
    AppCache.of(app).layered.tags.forget()  # as after a restart of this process
    again = _get(app, "/flights?a=old")
    assert again.headers["X-Cache"] == "MISS"
    assert again.json["run"] == 2


def test_a_lost_epoch_makes_every_entry_a_miss(app: Flask, raw_redis: redis.Redis, key_prefix: str) -> None:
    _get(app, "/flights")
    epoch = [key for key in raw_redis.scan_iter(match=f"{key_prefix}*") if key.endswith(b"epoch")]
    assert len(epoch) == 1
    raw_redis.delete(*epoch)
    AppCache.of(app).layered.l1.clear()
    AppCache.of(app).layered.tags.forget()
    assert _get(app, "/flights").headers["X-Cache"] == "MISS"


def test_allkeys_eviction_policy_is_warned_about(
    make_app: MakeApp, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    server = start_redis_server(str(tmp_path), port, "--maxmemory-policy", "allkeys-lru")
    try:
        with caplog.at_level(logging.WARNING, logger="flask_resilience"):
            _, ext = make_app(RESILIENCE_REDIS_URL=f"redis://127.0.0.1:{port}/0")
        assert "maxmemory-policy is allkeys-lru" in caplog.text
        ext.shutdown()
    finally:
        server.kill()
        server.wait(10)


def test_key_invalidation_reaches_every_host_and_user_variant(app: Flask) -> None:
    for user in ("1", "2"):
        _get(app, "/api/orders/7", **{"X-User": user, "Host": "a.example"})
    with app.app_context():
        invalidate_cache("cache:/api/orders/7")
    for user in ("1", "2"):
        assert (
            _get(app, "/api/orders/7", **{"X-User": user, "Host": "a.example"}).headers["X-Cache"] == "MISS"
        )


@pytest.mark.parametrize(
    "path",
    [
        "/search/%00%23u=x",
        "/search/%ff%fe",
        "/search/%ED%A0%80",  # a lone surrogate, UTF-8 encoded
        "/search/a?page=%ED%A0%80&page=%00",
        "/search/" + "x" * 5000,
        "/search/%2E%2E%3F?%23=%3F",
    ],
)
def test_hostile_paths_are_keyed_never_a_500(app: Flask, path: str) -> None:
    first = _get(app, path, Host="h\u00e9st.example", **{"X-Long": "v" * 10_000})
    assert first.status_code == 200
    assert _get(app, path, Host="h\u00e9st.example").headers["X-Cache"] == "HIT"
