"""HTTP semantics of stored responses: headers, HEAD, validators, what is not
stored, credentials that bypass."""

from __future__ import annotations

from collections import Counter

import pytest
from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

from flask_resilience import cached
from flask_resilience.cache.service import AppCache
from flask_resilience.state import get_state
from tests.conftest import MakeApp

RUNS: Counter[str] = Counter()


def build(app: Flask) -> Flask:
    RUNS.clear()

    @app.get("/headers")
    @cached()
    def headers() -> ResponseReturnValue:
        return (
            b"\x1f\x8b-gzipped",
            200,
            {
                "Content-Encoding": "gzip",
                "Content-Security-Policy": "default-src 'none'",
                "X-Frame-Options": "DENY",
                "Access-Control-Allow-Origin": "https://app.example",
                "Link": "</next>; rel=next",
                "X-Internal": "secret",
                "X-Hop": "per-connection",
                "Connection": "X-Hop",
                "X-Request-ID": "from-the-view",
            },
        )

    @app.get("/head-aware")
    @cached()
    def head_aware() -> ResponseReturnValue:
        RUNS["head-aware"] += 1
        if request.method == "HEAD":
            return "", 200, {"X-Length": "7"}
        return "payload"

    @app.get("/comma-etag")
    @cached()
    def comma_etag() -> ResponseReturnValue:
        return "x", 200, {"ETag": '"a,b"'}

    @app.get("/control/<name>")
    @cached()
    def control(name: str) -> ResponseReturnValue:
        RUNS[name] += 1
        extra = {
            "s-maxage": {"Cache-Control": "s-maxage=0"},
            "pragma": {"Pragma": "no-cache"},
            "expired": {"Expires": "Thu, 01 Jan 1970 00:00:00 GMT"},
            "future": {"Expires": "Thu, 01 Jan 2099 00:00:00 GMT"},
        }[name]
        return jsonify(run=RUNS[name]), 200, extra

    @app.get("/shared")
    @cached()
    def shared() -> ResponseReturnValue:
        RUNS["shared"] += 1
        return jsonify(run=RUNS["shared"])

    return app


@pytest.fixture
def app(make_app: MakeApp, redis_url: str) -> Flask:
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url, RESILIENCE_CACHE_DENIED_HEADERS=["X-Internal"])
    store = get_state(app).redis
    assert store is not None
    assert store.subscriber.wait_until_listening(10)
    return build(app)


def test_every_end_to_end_header_is_stored_but_the_deny_list(app: Flask) -> None:
    client = app.test_client()
    client.get("/headers")
    AppCache.of(app).layered.l1.clear()  # from L2: the stored form
    hit = client.get("/headers")
    assert hit.headers["X-Cache"] == "HIT"
    assert hit.data == b"\x1f\x8b-gzipped"
    assert hit.headers["Content-Encoding"] == "gzip"
    assert hit.headers["Content-Security-Policy"] == "default-src 'none'"
    assert hit.headers["X-Frame-Options"] == "DENY"
    assert hit.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert hit.headers["Link"] == "</next>; rel=next"
    assert "X-Internal" not in hit.headers  # RESILIENCE_CACHE_DENIED_HEADERS
    assert "X-Hop" not in hit.headers  # named by Connection
    assert hit.headers["X-Request-ID"] != "from-the-view"  # this request's own id


def test_head_miss_of_a_head_aware_view_is_not_served_to_get(app: Flask) -> None:
    client = app.test_client()
    assert client.head("/head-aware").headers["X-Cache"] == "MISS"
    got = client.get("/head-aware")
    assert got.data == b"payload"
    assert client.head("/head-aware").headers["X-Cache"] == "HIT"  # HEAD from the GET entry
    assert client.get("/head-aware").data == b"payload"


def test_an_etag_with_a_comma_is_matched_by_werkzeugs_parser(app: Flask) -> None:
    client = app.test_client()
    client.get("/comma-etag")
    assert client.get("/comma-etag", headers={"If-None-Match": '"a,b"'}).status_code == 304
    assert client.get("/comma-etag", headers={"If-None-Match": 'W/"a,b", "c"'}).status_code == 304
    assert client.get("/comma-etag", headers={"If-None-Match": '"a"'}).status_code == 200


@pytest.mark.parametrize(
    ("name", "reason"), [("s-maxage", "s-maxage-0"), ("pragma", "pragma-no-cache"), ("expired", "expired")]
)
def test_responses_that_forbid_shared_reuse_are_not_stored(app: Flask, name: str, reason: str) -> None:
    client = app.test_client()
    client.get(f"/control/{name}")
    second = client.get(f"/control/{name}")
    assert second.headers["X-Cache"] == "MISS"
    assert second.headers["Cache-Status"].endswith(f"not-stored-{reason}")


def test_a_future_expires_is_stored(app: Flask) -> None:
    client = app.test_client()
    client.get("/control/future")
    assert client.get("/control/future").headers["X-Cache"] == "HIT"


@pytest.mark.parametrize(
    ("header", "value", "reason"),
    [
        ("X-Api-Key", "k-123", "x-api-key"),
        ("Proxy-Authorization", "Basic eA==", "proxy-authorization"),
        ("Cookie", "remember_token", "credential-cookie"),
    ],
)
def test_other_credentials_bypass_the_shared_cache(app: Flask, header: str, value: str, reason: str) -> None:
    client = app.test_client()
    client.get("/shared")
    if header == "Cookie":
        client.set_cookie(value, "42|abc")  # Flask-Login's remember-me cookie
        response = client.get("/shared")
    else:
        response = client.get("/shared", headers={header: value})
    assert response.headers["Cache-Status"].endswith(f"detail={reason}")
    assert response.json == {"run": 2}


def test_configured_private_headers(make_app: MakeApp) -> None:
    app, _ = make_app(RESILIENCE_CACHE_PRIVATE_HEADERS=["X-Tenant-Token"])
    client = build(app).test_client()
    client.get("/shared")
    assert client.get("/shared", headers={"X-Tenant-Token": "t"}).headers["X-Cache"] == "MISS"
    assert client.get("/shared", headers={"X-Api-Key": "k"}).headers["X-Cache"] == "HIT"


def test_removed_allow_list_setting_is_refused(make_app: MakeApp) -> None:
    with pytest.raises(ValueError, match="RESILIENCE_CACHE_DENIED_HEADERS"):
        make_app(RESILIENCE_CACHE_STORED_HEADERS=["X-Internal"])
