"""Regressions found by a hostile review of the cache: invalidations that must
not be lost when Redis falters, and responses a shared cache must not keep."""

from __future__ import annotations

import os
import signal
import subprocess
from itertools import count

import pytest
from flask import Flask, Response, after_this_request

from flask_resilience import cached, invalidate_cache, warmup_cache, warmup_view
from flask_resilience.cache.service import AppCache
from flask_resilience.stores.redis import StoreUnavailableError
from tests.conftest import MakeApp

RUNS = count(1)  # shared by every app of a test: each computed value is unique


def _app(make_app: MakeApp, url: str) -> Flask:
    app, _ = make_app(RESILIENCE_REDIS_URL=url, RESILIENCE_REDIS_SOCKET_TIMEOUT=0.2)

    @app.get("/price")
    @cached(60)
    def price() -> Response:
        return Response(f"price-{next(RUNS)}")

    return app


def test_key_invalidation_right_after_a_redis_hiccup_still_reaches_redis(
    make_app: MakeApp, throwaway_redis: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, server = throwaway_redis
    writer, reader = _app(make_app, url), _app(make_app, url)
    stale = reader.test_client().get("/price").get_data()  # stored in L2
    os.kill(server.pid, signal.SIGSTOP)  # Redis stops answering for a moment
    writer.test_client().get("/price")  # times out: the writer skips L2 for a while
    os.kill(server.pid, signal.SIGCONT)
    with writer.app_context():
        invalidate_cache("cache:/price")  # Redis answers again: this must reach it
    fresh = _app(make_app, url)  # another process, with an empty L1
    assert fresh.test_client().get("/price").get_data() != stale


def test_key_invalidation_that_cannot_reach_redis_raises(
    make_app: MakeApp, throwaway_redis: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, server = throwaway_redis
    writer = _app(make_app, url)
    writer.test_client().get("/price")
    server.kill()
    server.wait(10)
    with writer.app_context(), pytest.raises(StoreUnavailableError):
        invalidate_cache("cache:/price")  # the caller must learn the entry may survive


@pytest.mark.parametrize(
    "control", ["Private", "NO-STORE", "No-Cache", "S-MaxAge=0", "s-maxage=abc", "s-maxage=0x10"]
)
def test_cache_control_directives_are_case_insensitive_and_invalid_ages_are_not_stored(
    make_app: MakeApp, control: str
) -> None:
    app, _ = make_app()

    @app.get("/me")
    @cached(60)
    def me() -> Response:
        return Response(f"secret-{next(RUNS)}", headers={"Cache-Control": control})

    client = app.test_client()
    first = client.get("/me")
    assert "not-stored" in first.headers["Cache-Status"]
    assert client.get("/me").get_data() != first.get_data()


def test_a_request_cache_control_no_store_in_any_case_is_honoured(make_app: MakeApp) -> None:
    app, _ = make_app()

    @app.get("/page")
    @cached(60)
    def page() -> Response:
        return Response(f"page-{next(RUNS)}")

    response = app.test_client().get("/page", headers={"Cache-Control": "No-Store"})
    assert "detail=request-no-store" in response.headers["Cache-Status"]


def test_warmup_view_fills_the_entry_the_public_host_reads(make_app: MakeApp) -> None:
    # With vary_host (the default) the host is part of the key: an entry
    # rendered for "localhost" would never serve api.example.com.
    app, _ = make_app()

    @app.get("/deals")
    @cached(60)
    def deals() -> Response:
        return Response(f"deals-{next(RUNS)}")

    with app.app_context():
        assert warmup_view("/deals", base_url="https://api.example.com") == 200
    served = app.test_client().get("/deals", base_url="https://api.example.com")
    assert served.headers["X-Cache"] == "HIT"


@pytest.mark.parametrize("with_redis", [False, True])
def test_invalidating_a_long_resource_key_drops_it(
    make_app: MakeApp, redis_url: str, with_redis: bool
) -> None:
    # Resources over keys.MAX_RESOURCE characters are stored cut and hashed;
    # invalidate_cache takes the resource as the docs spell it.
    app, _ = make_app(**({"RESILIENCE_REDIS_URL": redis_url} if with_redis else {}))

    @app.get("/search")
    @cached(60)
    def search() -> Response:
        return Response(f"results-{next(RUNS)}")

    term = "x" * 300
    client = app.test_client()
    stale = client.get(f"/search?q={term}").get_data()
    with app.app_context():
        invalidate_cache(f"cache:/search?q={term}")
        warmup_cache("k" * 300, "old")
        invalidate_cache("k" * 300)
        assert AppCache.of().data.get("k" * 300) is None
    assert client.get(f"/search?q={term}").get_data() != stale


def test_flask_logins_remember_cookie_under_its_configured_name_bypasses(make_app: MakeApp) -> None:
    app, _ = make_app(REMEMBER_COOKIE_NAME="stay_in")

    @app.get("/home")
    @cached(60)
    def home() -> Response:
        return Response(f"home-{next(RUNS)}")

    client = app.test_client()
    client.get("/home")  # the shared entry
    client.set_cookie("stay_in", "user-7|signature")
    response = client.get("/home")
    assert "detail=credential-cookie" in response.headers["Cache-Status"]


def test_a_cookie_set_through_after_this_request_keeps_the_response_out(make_app: MakeApp) -> None:
    # The cookie is added after the view returns; the response still sets a
    # per-client cookie and must not be shared, exactly as if the view set it.
    app, _ = make_app()

    @app.get("/visit")
    @cached(60)
    def visit() -> Response:
        visitor = f"visitor-{next(RUNS)}"

        @after_this_request
        def remember(response: Response) -> Response:
            response.set_cookie("visitor", visitor)
            return response

        return Response(f"welcome {visitor}")

    client = app.test_client()
    first = client.get("/visit")
    assert "detail=not-stored-after-this-request" in first.headers["Cache-Status"]
    assert app.test_client().get("/visit").get_data() != first.get_data()
