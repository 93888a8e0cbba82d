"""@cached views: HTTP rules, keys, validators, stampede, failure modes."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator

import pytest
from flask import Flask, Response, jsonify, request, session
from flask.testing import FlaskClient
from flask.typing import ResponseReturnValue
from werkzeug.test import TestResponse

from flask_resilience import (
    cached,
    current_principal,
    invalidate_cache,
    invalidate_cache_by_pattern,
    invalidate_cache_by_tag,
    invalidates,
)
from flask_resilience.cache.service import AppCache
from flask_resilience.state import get_state
from tests.clock import FakeClock
from tests.conftest import MakeApp
from tests.services import free_port

CALLS: Counter[str] = Counter()


def build(app: Flask) -> Flask:
    CALLS.clear()

    @app.get("/flights")
    @cached(ttl=300, tags=["flights"], prefix="api")
    def flights() -> ResponseReturnValue:
        CALLS["flights"] += 1
        return jsonify(call=CALLS["flights"], args=request.args.to_dict(flat=False))

    @app.get("/hotels")
    @cached(ttl=300, tags=["hotels"], prefix="api")
    def hotels() -> ResponseReturnValue:
        CALLS["hotels"] += 1
        return jsonify(call=CALLS["hotels"])

    @app.get("/paged")
    @cached(query_args=["page"])
    def paged() -> ResponseReturnValue:
        CALLS["paged"] += 1
        return jsonify(call=CALLS["paged"])

    @app.get("/status/<int:code>")
    @cached(statuses=(200, 404))
    def status(code: int) -> ResponseReturnValue:
        CALLS[f"status{code}"] += 1
        return jsonify(call=CALLS[f"status{code}"]), code

    @app.get("/cookie")
    @cached()
    def cookie() -> ResponseReturnValue:
        CALLS["cookie"] += 1
        response = jsonify(call=CALLS["cookie"])
        response.set_cookie("tracking", str(CALLS["cookie"]))
        return response

    @app.get("/control/<value>")
    @cached()
    def control(value: str) -> ResponseReturnValue:
        CALLS[value] += 1
        return jsonify(call=CALLS[value]), 200, {"Cache-Control": value.replace("_", "-")}

    @app.get("/vary-star")
    @cached()
    def vary_star() -> ResponseReturnValue:
        CALLS["vary-star"] += 1
        return jsonify(call=CALLS["vary-star"]), 200, {"Vary": "*"}

    @app.get("/stream")
    @cached()
    def stream() -> ResponseReturnValue:
        CALLS["stream"] += 1

        def chunks() -> Iterator[str]:
            yield "a"
            yield "b"

        return Response(chunks())

    @app.get("/lang")
    @cached()
    def lang() -> ResponseReturnValue:
        CALLS["lang"] += 1
        language = request.headers.get("Accept-Language", "en")
        return jsonify(call=CALLS["lang"], language=language), 200, {"Vary": "Accept-Language"}

    @app.get("/me")
    @cached(per_user=True)
    def me() -> ResponseReturnValue:
        CALLS["me"] += 1
        principal = current_principal()
        return jsonify(call=CALLS["me"], principal=None if principal is None else principal.key)

    @app.get("/shared")
    @cached()
    def shared() -> ResponseReturnValue:
        CALLS["shared"] += 1
        return jsonify(call=CALLS["shared"], auth=request.headers.get("Authorization"))

    @app.get("/session-write")
    @cached()
    def session_write() -> ResponseReturnValue:
        CALLS["session-write"] += 1
        session["seen"] = True
        return jsonify(call=CALLS["session-write"])

    @app.get("/headers")
    @cached()
    def headers() -> ResponseReturnValue:
        CALLS["headers"] += 1
        return "hi", 200, {"X-Internal": "secret", "Content-Language": "pt"}

    @app.get("/async")
    @cached()
    async def async_view() -> ResponseReturnValue:
        await asyncio.sleep(0)
        CALLS["async"] += 1
        return jsonify(call=CALLS["async"])

    @app.get("/conditional")
    @cached(condition=lambda req: req.args.get("cache") != "no")
    def conditional() -> ResponseReturnValue:
        CALLS["conditional"] += 1
        return jsonify(call=CALLS["conditional"])

    @app.post("/flights")
    @invalidates(tags=["flights"])
    def update_flights() -> ResponseReturnValue:
        return "", 204

    @app.post("/flights/fail")
    @invalidates(tags=["flights"])
    def failed_update() -> ResponseReturnValue:
        return "", 500

    return app


def listening(app: Flask) -> Flask:
    """Until its invalidation listener is subscribed, a process keeps no L1 entries."""
    store = get_state(app).redis
    assert store is not None
    assert store.subscriber.wait_until_listening(10)
    return app


@pytest.fixture
def app(make_app: MakeApp, redis_url: str) -> Flask:
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url, RESILIENCE_ADMIN_TOKEN="cache-admin-token-0123456789")
    return listening(build(app))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def call_of(response: TestResponse) -> int:
    assert response.json is not None
    value: int = response.json["call"]
    return value


# -- hits, misses and headers ----------------------------------------------------------


def test_miss_then_hit_with_headers(client: FlaskClient) -> None:
    first = client.get("/flights")
    assert first.headers["X-Cache"] == "MISS"
    assert first.headers["Cache-Status"] == "flask-resilience; fwd=uri-miss; stored"
    assert first.headers["ETag"].startswith('"')
    second = client.get("/flights")
    assert second.headers["X-Cache"] == "HIT"
    assert second.headers["Cache-Status"].startswith("flask-resilience; hit; ttl=")
    assert second.headers["Age"] == "0"
    assert second.headers["ETag"] == first.headers["ETag"]
    assert second.data == first.data
    assert CALLS["flights"] == 1


def test_hit_from_l2_after_l1_is_gone(app: Flask, client: FlaskClient) -> None:
    client.get("/flights")
    AppCache.of(app).layered.l1.clear()
    response = client.get("/flights")
    assert response.headers["X-Cache"] == "HIT"
    assert response.headers["Cache-Status"].endswith("detail=l2")
    assert CALLS["flights"] == 1


def test_age_and_l1_ttl_cap_follow_the_injected_clock(make_app: MakeApp, redis_url: str) -> None:
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url, RESILIENCE_CACHE_L1_MAX_TTL=60)
    listening(build(app))
    clock = FakeClock(1_700_000_000)
    AppCache.of(app).layered.set_clock(clock)
    client = app.test_client()
    client.get("/flights")
    clock.advance(59)
    assert client.get("/flights").headers["Cache-Status"].endswith("detail=l1")
    clock.advance(2)  # past the L1 cap, well inside the 300 s TTL
    response = client.get("/flights")
    assert response.headers["Cache-Status"].endswith("detail=l2")
    assert response.headers["Age"] == "61"
    clock.advance(240)  # 301 s: expired everywhere
    assert client.get("/flights").headers["X-Cache"] == "MISS"
    assert CALLS["flights"] == 2


def test_etag_and_if_none_match_304(client: FlaskClient) -> None:
    etag = client.get("/lang", headers={"Accept-Language": "pt"}).headers["ETag"]
    response = client.get("/lang", headers={"Accept-Language": "pt", "If-None-Match": f'W/{etag}, "other"'})
    assert response.status_code == 304
    assert response.data == b""
    assert response.headers["ETag"] == etag
    assert response.headers["Vary"] == "Accept-Language"
    assert (
        client.get("/lang", headers={"Accept-Language": "pt", "If-None-Match": '"nope"'}).status_code == 200
    )


def test_head_is_served_from_the_get_entry(client: FlaskClient) -> None:
    client.get("/flights")
    response = client.head("/flights")
    assert response.headers["X-Cache"] == "HIT"
    assert response.data == b""


def test_end_to_end_headers_are_stored(client: FlaskClient) -> None:
    client.get("/headers")
    hit = client.get("/headers")
    assert hit.headers["X-Cache"] == "HIT"
    assert hit.headers["Content-Language"] == "pt"
    assert hit.headers["X-Internal"] == "secret"  # a deny-list, not an allow-list (test_cache_http)


# -- keys ---------------------------------------------------------------------------------


def test_query_string_order_does_not_matter(client: FlaskClient) -> None:
    client.get("/flights?from=LIS&to=OPO")
    assert client.get("/flights?to=OPO&from=LIS").headers["X-Cache"] == "HIT"
    assert client.get("/flights?to=FAO&from=LIS").headers["X-Cache"] == "MISS"


def test_query_allow_list_ignores_other_arguments(client: FlaskClient) -> None:
    client.get("/paged?page=2&utm_source=mail")
    assert client.get("/paged?page=2&utm_source=ads").headers["X-Cache"] == "HIT"
    assert client.get("/paged?page=3").headers["X-Cache"] == "MISS"


def test_vary_accept_language_keys_each_language(client: FlaskClient) -> None:
    pt = client.get("/lang", headers={"Accept-Language": "pt"})
    en = client.get("/lang", headers={"Accept-Language": "en"})
    assert en.headers["X-Cache"] == "MISS"
    again = client.get("/lang", headers={"Accept-Language": "pt"})
    assert again.headers["X-Cache"] == "HIT"
    assert again.json is not None and again.json["language"] == "pt"
    assert pt.json is not None and en.json is not None
    assert (pt.json["language"], en.json["language"]) == ("pt", "en")


# -- what is never stored -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/cookie", "set-cookie"),
        ("/control/private", "private"),
        ("/control/no-store", "no-store"),
        ("/control/no-cache", "no-cache"),
        ("/vary-star", "vary-star"),
        ("/stream", "streamed"),
        ("/status/500", "status"),
        ("/session-write", "session-modified"),
    ],
)
def test_response_is_not_stored(app: Flask, path: str, reason: str) -> None:
    first = app.test_client().get(path)
    second = app.test_client().get(path)
    assert second.headers["X-Cache"] == "MISS"
    assert second.headers["Cache-Status"].endswith(f"not-stored-{reason}")
    assert first.headers["Cache-Status"].endswith(f"not-stored-{reason}")
    assert AppCache.of(app).stats()["not_stored"][reason] == 2


def test_configured_statuses_are_stored(client: FlaskClient) -> None:
    client.get("/status/404")
    hit = client.get("/status/404")
    assert (hit.status_code, hit.headers["X-Cache"]) == (404, "HIT")


def test_set_cookie_is_never_replayed_to_another_client(app: Flask) -> None:
    first = app.test_client().get("/cookie")
    assert "Set-Cookie" in first.headers
    other = app.test_client().get("/cookie")
    assert other.headers["Set-Cookie"] != first.headers["Set-Cookie"]  # its own, freshly computed


# -- requests that bypass --------------------------------------------------------------------


def test_methods_other_than_get_and_head_bypass(app: Flask) -> None:
    @app.route("/both", methods=["GET", "POST"])
    @cached()
    def both() -> ResponseReturnValue:
        CALLS["both"] += 1
        return jsonify(call=CALLS["both"])

    client = app.test_client()
    client.post("/both")
    response = client.post("/both")
    assert response.headers["Cache-Status"].endswith("detail=method")
    assert client.get("/both").headers["X-Cache"] == "MISS"


def test_authorization_bypasses_the_shared_cache(client: FlaskClient) -> None:
    client.get("/shared")
    alice = client.get("/shared", headers={"Authorization": "Bearer alice"})
    assert alice.headers["Cache-Status"].endswith("detail=authorization")
    assert alice.json is not None and alice.json["auth"] == "Bearer alice"
    bob = client.get("/shared", headers={"Authorization": "Bearer bob"})
    assert bob.json is not None and bob.json["auth"] == "Bearer bob"


def test_session_cookie_bypasses_the_shared_cache(app: Flask) -> None:
    client = app.test_client()
    client.get("/shared")
    client.set_cookie("session", "abc")
    response = client.get("/shared")
    assert response.headers["Cache-Status"].endswith("detail=session-cookie")


def test_per_user_keys_on_the_principal_so_b_never_gets_a(client: FlaskClient) -> None:
    alice = client.get("/me", headers={"Authorization": "Bearer alice"})
    bob = client.get("/me", headers={"Authorization": "Bearer bob"})
    assert alice.json is not None and bob.json is not None
    assert alice.json["principal"] != bob.json["principal"]
    assert bob.headers["X-Cache"] == "MISS"
    again = client.get("/me", headers={"Authorization": "Bearer alice"})
    assert again.headers["X-Cache"] == "HIT"
    assert again.json == alice.json
    anonymous = client.get("/me")
    assert anonymous.json is not None and anonymous.json["principal"] is None


def test_request_no_cache_cannot_force_recomputation_by_default(client: FlaskClient) -> None:
    client.get("/flights")
    assert client.get("/flights", headers={"Cache-Control": "no-cache"}).headers["X-Cache"] == "HIT"
    assert (
        client.get("/flights", headers={"Cache-Control": "no-store"})
        .headers["Cache-Status"]
        .endswith("request-no-store")
    )


def test_request_no_cache_recomputes_when_configured(make_app: MakeApp, redis_url: str) -> None:
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url, RESILIENCE_CACHE_HONOR_NO_CACHE=True)
    client = listening(build(app)).test_client()
    client.get("/flights")
    assert client.get("/flights", headers={"Cache-Control": "no-cache"}).headers["X-Cache"] == "MISS"
    assert CALLS["flights"] == 2


def test_condition_and_cache_enabled_false(make_app: MakeApp, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_ENABLED", "false")
    app, _ = make_app()
    client = build(app).test_client()
    client.get("/flights")
    assert client.get("/flights").headers["Cache-Status"].endswith("detail=disabled")
    monkeypatch.delenv("CACHE_ENABLED")
    app, _ = make_app()
    client = build(app).test_client()
    client.get("/conditional?cache=no")
    assert client.get("/conditional?cache=no").headers["Cache-Status"].endswith("detail=condition")


def test_async_view_is_cached(client: FlaskClient) -> None:
    assert call_of(client.get("/async")) == 1
    hit = client.get("/async")
    assert (hit.headers["X-Cache"], call_of(hit)) == ("HIT", 1)


# -- invalidation in one process -------------------------------------------------------------


def test_invalidates_after_a_2xx_write_only(client: FlaskClient) -> None:
    client.get("/flights")
    client.get("/hotels")
    client.post("/flights/fail")
    assert client.get("/flights").headers["X-Cache"] == "HIT"
    client.post("/flights")
    assert client.get("/flights").headers["X-Cache"] == "MISS"
    assert client.get("/hotels").headers["X-Cache"] == "HIT"


def test_invalidate_by_key_pattern_and_regex(app: Flask, client: FlaskClient) -> None:
    import re

    client.get("/flights?to=LIS")
    client.get("/flights?to=OPO")
    client.get("/hotels")
    with app.app_context():
        invalidate_cache("api:/flights?to=LIS")
        assert client.get("/flights?to=LIS").headers["X-Cache"] == "MISS"
        assert client.get("/flights?to=OPO").headers["X-Cache"] == "HIT"
        assert invalidate_cache_by_pattern("api:/flights*") == 2
        assert client.get("/flights?to=OPO").headers["X-Cache"] == "MISS"
        assert client.get("/hotels").headers["X-Cache"] == "HIT"
        assert invalidate_cache_by_pattern(re.compile(r"^api:/hotels$")) == 1
        assert client.get("/hotels").headers["X-Cache"] == "MISS"
        with pytest.raises(ValueError, match="tag"):
            invalidate_cache_by_tag("has space")


# -- stampede and failure -----------------------------------------------------------------------


def test_fifty_threads_missing_one_key_run_the_view_once(app: Flask) -> None:
    entered = threading.Event()
    release = threading.Event()

    @app.get("/slow")
    @cached()
    def slow() -> ResponseReturnValue:
        CALLS["slow"] += 1
        entered.set()
        release.wait(10)
        return jsonify(call=CALLS["slow"])

    start = threading.Barrier(50)
    bodies: list[bytes] = []
    lock = threading.Lock()

    def fetch() -> None:
        start.wait()
        response = app.test_client().get("/slow")
        with lock:
            bodies.append(response.data)

    threads = [threading.Thread(target=fetch) for _ in range(50)]
    for thread in threads:
        thread.start()
    assert entered.wait(10)
    release.set()
    for thread in threads:
        thread.join(20)
    assert CALLS["slow"] == 1
    assert len(bodies) == 50
    assert len(set(bodies)) == 1


def test_redis_at_a_dead_port_still_serves_and_counts_errors(make_app: MakeApp) -> None:
    app, _ = make_app(RESILIENCE_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    client = build(app).test_client()
    statuses = [client.get("/flights").status_code for _ in range(5)]
    assert statuses == [200] * 5
    assert client.get("/flights").headers["X-Cache"] == "HIT"  # from L1
    stats = AppCache.of(app).stats()
    assert sum(stats["errors"].values()) >= 1
    assert stats["l2"]["available"] is False
    # The write itself succeeded: its response must not turn into a 500.
    assert client.post("/flights").status_code == 204
    assert AppCache.of(app).stats()["errors"]["invalidation_failed"] == 1


def test_invalidating_with_redis_down_is_an_error_not_silence(make_app: MakeApp) -> None:
    from flask_resilience.stores.redis import StoreUnavailableError

    app, _ = make_app(RESILIENCE_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    build(app)
    with app.app_context(), pytest.raises(StoreUnavailableError):
        invalidate_cache_by_tag("flights")
