"""The data cache, write-through, write-behind, Flask-Caching as L2, the endpoints."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, jsonify
from flask.testing import FlaskClient
from flask.typing import ResponseReturnValue
from flask_caching import Cache

from flask_resilience import (
    CacheStrategy,
    Resilience,
    cached,
    get_cache_stats,
    invalidate_cache_by_pattern,
    invalidate_cache_by_tag,
    reset_cache_stats,
    warmup_cache,
    warmup_view,
)
from flask_resilience.cache.backends import PatternsNeedRedis
from flask_resilience.cache.entry import CacheEntry, Stamp, decode
from flask_resilience.cache.keys import DATA_VARIANT, full_key
from flask_resilience.cache.service import AppCache
from flask_resilience.responses import StoredResponse
from flask_resilience.state import get_state
from tests.conftest import MakeApp

TOKEN = "cache-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def app_and_ext(make_app: MakeApp, redis_url: str) -> tuple[Flask, Resilience]:
    app, ext = make_app(RESILIENCE_REDIS_URL=redis_url, RESILIENCE_ADMIN_TOKEN=TOKEN)
    store = get_state(app).redis
    assert store is not None
    assert store.subscriber.wait_until_listening(10)  # no L1 entries before that
    return app, ext


# -- data cache -------------------------------------------------------------------------------


def test_set_get_delete_and_tags(app_and_ext: tuple[Flask, Resilience]) -> None:
    app, ext = app_and_ext
    with app.app_context():
        assert ext.cache.get("user:1") is None
        assert ext.cache.get("user:1", default="none") == "none"
        ext.cache.set("user:1", {"name": "Ana", "trips": [1, 2]}, ttl=60, tags=["users"])
        ext.cache.set("nothing", None)
        assert ext.cache.get("user:1") == {"name": "Ana", "trips": [1, 2]}
        assert ext.cache.get("nothing", default="missing") is None  # a stored None is a hit
        invalidate_cache_by_tag("users")
        assert ext.cache.get("user:1") is None
        ext.cache.set("user:2", 2)
        ext.cache.delete("user:2")
        assert ext.cache.get("user:2") is None
        with pytest.raises(TypeError):
            ext.cache.set("bad", object())  # JSON only, never pickle


def test_get_or_set_calls_the_loader_once_under_threads(app_and_ext: tuple[Flask, Resilience]) -> None:
    app, ext = app_and_ext
    calls = []
    release = threading.Event()

    def loader() -> list[int]:
        calls.append(1)
        release.wait(10)
        return [1, 2, 3]

    results: list[Any] = []

    def fetch() -> None:
        with app.app_context():
            results.append(ext.cache.get_or_set("expensive", loader, ttl=60))

    threads = [threading.Thread(target=fetch) for _ in range(20)]
    for thread in threads:
        thread.start()
    for _ in range(1000):
        if calls:
            break
        threading.Event().wait(0.005)
    release.set()
    for thread in threads:
        thread.join(10)
    assert len(calls) == 1
    assert results == [[1, 2, 3]] * 20


def test_unreadable_l2_value_is_a_miss(app_and_ext: tuple[Flask, Resilience]) -> None:
    app, ext = app_and_ext
    l2 = AppCache.of(app).layered.l2
    assert l2 is not None
    for key, raw in [
        ("legacy", b"\x80\x04pickled-by-someone-else"),
        ("truncated", b"FRC\x01\x00\x00\x00\xff{"),
    ]:
        assert l2.put(full_key(DATA_VARIANT, key), key, raw, 60, generation=None, token=None)
    with app.app_context():
        assert ext.cache.get("legacy") is None
        assert ext.cache.get("truncated") is None
    assert get_cache_stats_of(app)["errors"]["unreadable_entry"] == 2


def test_entry_format_round_trip() -> None:
    response = StoredResponse(201, (("Content-Type", "x/y"),), b"\x00body", 1.5)
    stamp = Stamp("epoch", {"*": 1, "t": 3})
    entry = CacheEntry("response", b"\x00body", 1.5, 2.5, stamp, response, etag='"e"')
    assert decode(entry.encode()) == entry
    marker = CacheEntry("vary", b"", 1.5, 2.5, stamp, vary=("accept-language",))
    assert decode(marker.encode()) == marker  # readable from L2 too


def get_cache_stats_of(app: Flask) -> dict[str, Any]:
    with app.app_context():
        return dict(get_cache_stats())


def test_write_through_persists_before_caching(app_and_ext: tuple[Flask, Resilience]) -> None:
    app, ext = app_and_ext
    order: list[str] = []
    with app.app_context():
        ext.cache.set("price", 10)

        def persist(value: int) -> str:
            order.append(f"persist {value}, cache holds {ext.cache.get('price')}")
            return "saved"

        assert ext.cache.write_through("price", 12, persist) == "saved"
        order.append(f"cache holds {ext.cache.get('price')}")

        def broken(value: int) -> None:
            raise OSError("database down")

        with pytest.raises(OSError, match="database down"):
            ext.cache.write_through("price", 99, broken)
        assert ext.cache.get("price") is None  # the store may have changed: no stale or unsaved value
    assert order == ["persist 12, cache holds 10", "cache holds 12"]


def test_write_behind_retries_then_persists(app_and_ext: tuple[Flask, Resilience]) -> None:
    app, ext = app_and_ext
    queue = AppCache.of(app).write_behind
    queue.retry_delays = (0.0, 0.0, 0.0)
    attempts: list[int] = []
    done = threading.Event()

    def flaky(value: int) -> None:
        attempts.append(value)
        if len(attempts) < 3:
            raise OSError("try again")
        done.set()

    with app.app_context():
        assert ext.cache.write_behind("counter", 7, flaky) is True
        assert ext.cache.get("counter") == 7  # cached at once
    assert done.wait(10)
    ext.shutdown()
    stats = queue.stats()
    assert (stats["persisted"], stats["retries"], stats["failed"]) == (1, 2, 0)
    assert attempts == [7, 7, 7]


def test_write_behind_drops_when_full_and_flushes_on_shutdown(make_app: MakeApp, redis_url: str) -> None:
    app, ext = make_app(RESILIENCE_REDIS_URL=redis_url, RESILIENCE_CACHE_WRITE_BEHIND_QUEUE=2)
    queue = AppCache.of(app).write_behind
    queue.retry_delays = ()
    blocker = threading.Event()
    started = threading.Event()
    persisted: list[int] = []

    def slow(value: int) -> None:
        started.set()
        blocker.wait(10)
        persisted.append(value)

    def failing(value: int) -> None:
        raise OSError("down")

    with app.app_context():
        assert ext.cache.write_behind("a", 1, slow)
        assert started.wait(10)  # the worker is busy with the first write
        assert ext.cache.write_behind("b", 2, persisted.append)
        assert ext.cache.write_behind("c", 3, failing)
        assert ext.cache.write_behind("d", 4, persisted.append) is False  # queue of 2 is full
    blocker.set()
    ext.shutdown()
    stats = queue.stats()
    assert persisted == [1, 2]
    assert (stats["dropped"], stats["failed"], stats["pending"]) == (1, 1, 0)


def test_warmup_cache_and_view(app_and_ext: tuple[Flask, Resilience]) -> None:
    app, ext = app_and_ext
    runs: list[int] = []

    @app.get("/deals")
    @cached(ttl=60)
    def deals() -> ResponseReturnValue:
        runs.append(1)
        return jsonify(deals=["LIS"])

    with app.app_context():
        warmup_cache("deals:today", ["LIS", "OPO"], 60, ["deals"])
        assert ext.cache.get("deals:today") == ["LIS", "OPO"]
        assert warmup_view("/deals") == 200
    assert app.test_client().get("/deals").headers["X-Cache"] == "HIT"
    assert runs == [1]


def test_view_strategy_validation() -> None:
    with pytest.raises(ValueError, match="write_through"):
        cached(strategy=CacheStrategy.WRITE_THROUGH)
    with pytest.raises(ValueError, match="ttl"):
        cached(ttl=-5)
    with pytest.raises(ValueError, match="tag"):
        cached(tags=["bad tag"])


# -- Flask-Caching as the second layer -------------------------------------------------------


@pytest.fixture(params=["SimpleCache", "RedisCache"])
def flask_caching_app(request: pytest.FixtureRequest, make_app: MakeApp, key_prefix: str) -> Iterator[Flask]:
    config: dict[str, Any] = {"CACHE_TYPE": request.param, "CACHE_KEY_PREFIX": f"fc-{key_prefix}"}
    if request.param == "RedisCache":
        config["CACHE_REDIS_URL"] = request.getfixturevalue("redis_url")
    cache = Cache(config=config)
    extension = Resilience(cache_backend=cache)
    app, _ = make_app(extension)
    cache.init_app(app, config=config)
    runs: list[int] = []

    @app.get("/routes")
    @cached(ttl=60, tags=["routes"])
    def routes() -> ResponseReturnValue:
        runs.append(1)
        return jsonify(run=len(runs))

    yield app
    with app.app_context():
        cache.clear()


def test_flask_caching_backend_stores_and_invalidates(flask_caching_app: Flask) -> None:
    app = flask_caching_app
    client = app.test_client()
    client.get("/routes")
    AppCache.of(app).layered.l1.clear()
    hit = client.get("/routes")
    assert hit.headers["Cache-Status"].endswith("detail=l2")
    with app.app_context():
        invalidate_cache_by_tag("routes")
        assert get_cache_stats()["l2"]["backend"] == "flask-caching"
        with pytest.raises(PatternsNeedRedis, match="Redis"):
            invalidate_cache_by_pattern("cache:*")
    assert client.get("/routes").headers["X-Cache"] == "MISS"


# -- endpoints ---------------------------------------------------------------------------------


@pytest.fixture
def admin_client(app_and_ext: tuple[Flask, Resilience]) -> FlaskClient:
    app, _ = app_and_ext

    @app.get("/cities")
    @cached(tags=["cities"])
    def cities() -> ResponseReturnValue:
        return jsonify(["LIS"])

    return app.test_client()


def test_cache_stats_endpoint_needs_admin(admin_client: FlaskClient) -> None:
    admin_client.get("/cities")
    admin_client.get("/cities")
    assert admin_client.get("/api/health/cache").status_code == 401
    body = admin_client.get("/api/health/cache", headers=ADMIN).json
    assert body is not None
    assert (body["misses"], body["l1_hits"], body["hit_rate"]) == (1, 1, 0.5)
    assert body["endpoints"]["cities"] == {"misses": 1, "l1_hits": 1}
    assert body["l1"]["entries"] == 1


def test_cache_reset_clear_and_invalidate_endpoints(admin_client: FlaskClient) -> None:
    admin_client.get("/cities")
    assert admin_client.post("/api/health/cache/clear").status_code == 401
    assert admin_client.post("/api/health/cache/reset", headers=ADMIN).json == {"reset": True}
    assert admin_client.post("/api/health/cache/clear", headers=ADMIN).json == {"cleared": True}
    assert admin_client.get("/cities").headers["X-Cache"] == "MISS"
    response = admin_client.post("/api/health/cache/invalidate", json={"tag": "cities"}, headers=ADMIN)
    assert response.status_code == 200
    assert admin_client.get("/cities").headers["X-Cache"] == "MISS"
    response = admin_client.post(
        "/api/health/cache/invalidate", json={"pattern": "cache:/cit*"}, headers=ADMIN
    )
    assert response.json is not None and response.json["removed"] == 1
    for bad in ({}, {"tag": "a", "key": "b"}, {"regex": "("}, {"tag": "bad tag"}):
        response = admin_client.post("/api/health/cache/invalidate", json=bad, headers=ADMIN)
        assert response.status_code == 400, bad
        assert response.content_type == "application/problem+json"


@pytest.mark.parametrize(
    "regex",
    [
        "(a+)+$",  # nested repeats: exponential backtracking on "aaaa...b"
        "(a*)*b",
        "(a|aa)+$",  # a repeated alternation
        "(.*a){20}",
        r"(a)\1+",  # a back reference
        "a" * 513,  # too long
    ],
)
def test_an_admin_regex_that_could_backtrack_forever_is_refused(
    admin_client: FlaskClient, regex: str
) -> None:
    """One request must not pin every worker's CPU: the regex is matched
    against every key in L2 and, through pub/sub, in every process's L1."""
    response = admin_client.post("/api/health/cache/invalidate", json={"regex": regex}, headers=ADMIN)
    assert response.status_code == 400, response.json
    assert response.content_type == "application/problem+json"
    assert response.json is not None and "regular expression" in response.json["title"].lower()


@pytest.mark.parametrize(
    "regex", ["^cache:/cit", "cache:/(cities|towns)/[0-9]+$", r"\?page=\d{1,3}", "a+b*c?"]
)
def test_an_ordinary_admin_regex_is_accepted(admin_client: FlaskClient, regex: str) -> None:
    response = admin_client.post("/api/health/cache/invalidate", json={"regex": regex}, headers=ADMIN)
    assert response.status_code == 200, response.json


def test_dashboard_includes_the_cache(admin_client: FlaskClient) -> None:
    body = admin_client.get("/api/health/dashboard", headers=ADMIN).json
    assert body is not None and "hit_rate" in body["features"]["cache"]
    assert body["features"]["cache"]["l1_unsynced"] == 0  # requests served while not listening


def test_reset_cache_stats_function(app_and_ext: tuple[Flask, Resilience]) -> None:
    app, ext = app_and_ext
    with app.app_context():
        ext.cache.get("x")
        reset_cache_stats()
        assert get_cache_stats()["misses"] == 0
