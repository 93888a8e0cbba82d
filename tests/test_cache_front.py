"""The front tier: hits answered in the middleware, before Flask dispatches."""

from __future__ import annotations

import functools
import gc
import tracemalloc
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import redis
from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.test import Client

from flask_resilience import Resilience, cached, invalidate_cache, invalidate_cache_by_tag
from flask_resilience.cache.service import AppCache
from flask_resilience.state import get_state
from tests.cache_worker import Worker
from tests.conftest import MakeApp


class Counts:
    def __init__(self) -> None:
        self.hooks = 0
        self.runs = 0


def front_app(make_app: MakeApp, **config: Any) -> tuple[Flask, Counts]:
    app, _ = make_app(**config)
    counts = Counts()

    @app.before_request
    def count_hook() -> None:
        counts.hooks += 1

    @app.after_request
    def security_headers(response: Any) -> Any:
        response.headers["X-Frame-Options"] = "DENY"
        return response

    @app.get("/front")
    @cached(ttl=300, tags=["flights"], prefix="api", front=True)
    def front() -> ResponseReturnValue:
        counts.runs += 1
        return jsonify(runs=counts.runs, args=request.args.to_dict(flat=False), path=request.path)

    @app.get("/plain")
    @cached(ttl=300, prefix="api")
    def plain() -> ResponseReturnValue:
        counts.runs += 1
        return jsonify(runs=counts.runs)

    @app.get("/echo/<path:rest>")
    @cached(ttl=300, prefix="api", front=True)
    def echo(rest: str) -> ResponseReturnValue:
        counts.runs += 1
        return jsonify(rest=rest, args=request.args.to_dict(flat=False), host=request.host)

    @app.get("/slash/")
    @cached(ttl=300, prefix="api", front=True)
    def slash() -> ResponseReturnValue:
        return jsonify(slash=True)

    return app, counts


def body(response: Any) -> Any:
    data = response.json
    assert data is not None
    return data


def detail(response: Any) -> str:
    return str(response.headers["Cache-Status"]).rsplit("detail=", 1)[-1]


def test_a_hit_is_answered_before_flask_with_the_final_response(make_app: MakeApp) -> None:
    app, counts = front_app(make_app)
    client = app.test_client()
    first = client.get("/front")
    assert (first.headers["X-Cache"], counts.hooks, counts.runs) == ("MISS", 1, 1)
    second = client.get("/front", headers={"X-Request-ID": "mine-1"})
    assert detail(second) == "front"
    assert (counts.hooks, counts.runs) == (1, 1)  # no app code ran
    assert second.get_data() == first.get_data()
    assert second.headers["X-Frame-Options"] == "DENY"  # after_request's headers are kept
    assert second.headers["X-Request-ID"] == "mine-1"  # the request id is this request's
    assert second.headers["Content-Length"] == str(len(first.get_data()))
    assert second.headers["ETag"] == first.headers["ETag"]
    assert "Date" not in second.headers and "Set-Cookie" not in second.headers
    third = client.get("/front")
    earlier = (second.headers["X-Request-ID"], first.headers["X-Request-ID"])
    assert third.headers["X-Request-ID"] not in earlier
    assert AppCache.of(app).stats()["l1_hits"] == 2


def test_before_request_runs_for_every_view_not_opted_in(make_app: MakeApp) -> None:
    app, counts = front_app(make_app)
    client = app.test_client()
    for _ in range(3):
        assert client.get("/plain").status_code == 200
    assert counts.hooks == 3 and counts.runs == 1  # view-level hits: the app's hooks ran
    assert detail(client.get("/plain")) == "l1"


def test_head_and_conditional_requests(make_app: MakeApp) -> None:
    app, counts = front_app(make_app)
    client = app.test_client()
    etag = client.get("/front").headers["ETag"]
    client.get("/front")
    head = client.head("/front")
    assert detail(head) == "front" and head.get_data() == b""
    assert int(head.headers["Content-Length"]) > 0
    not_modified = client.get("/front", headers={"If-None-Match": etag})
    assert not_modified.status_code == 304 and detail(not_modified) == "front"
    assert not_modified.headers["ETag"] == etag and not_modified.get_data() == b""
    assert counts.hooks == 1
    other = client.get("/front", headers={"If-None-Match": '"other"'})
    assert other.status_code == 200 and detail(other) == "front"


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer a"},
        {"X-Api-Key": "k"},
        {"Cookie": "session=abc"},
        {"Cookie": "remember_token=abc"},
        {"Cache-Control": "max-age=0"},
        {"Pragma": "no-cache"},
        {"If-Modified-Since": "Mon, 07 Dec 2026 00:00:00 GMT"},
        {"Range": "bytes=0-1"},
    ],
    ids=lambda headers: next(iter(headers.items()))[0] + "=" + next(iter(headers.items()))[1],
)
def test_requests_with_credentials_or_directives_go_through_flask(
    make_app: MakeApp, headers: dict[str, str]
) -> None:
    app, counts = front_app(make_app)
    client = app.test_client(use_cookies=False)  # sends the Cookie header as given
    client.get("/front")
    assert detail(client.get("/front")) == "front"
    hooks = counts.hooks
    response = client.get("/front", headers=headers)
    assert counts.hooks == hooks + 1  # Flask handled it (the app's hooks ran)
    assert detail(response) != "front"


def test_an_unrelated_cookie_does_not_stop_the_front_tier(make_app: MakeApp) -> None:
    app, counts = front_app(make_app)
    client = app.test_client(use_cookies=False)
    client.get("/front")
    response = client.get("/front", headers={"Cookie": "theme=dark; _ga=1"})
    assert detail(response) == "front" and counts.hooks == 1


def test_other_methods_are_never_answered(make_app: MakeApp) -> None:
    app, counts = front_app(make_app)
    client = app.test_client()
    client.get("/front")
    for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
        response = client.open("/front", method=method)
        assert "Cache-Status" not in response.headers or detail(response) != "front", method
    assert counts.hooks == 6


def test_views_whose_answer_depends_on_the_caller_are_never_eligible(make_app: MakeApp) -> None:
    app, _ = make_app(RESILIENCE_CACHE_FRONT=True)
    hooks: list[str] = []

    @app.before_request
    def note() -> None:
        hooks.append(request.path)

    @app.get("/user")
    @cached(ttl=300, per_user=True, front=True)
    def user() -> ResponseReturnValue:
        return jsonify(ok=True)

    @app.get("/cond")
    @cached(ttl=300, condition=lambda _request: True, front=True)
    def cond() -> ResponseReturnValue:
        return jsonify(ok=True)

    @app.get("/keyed")
    @cached(ttl=300, key_func=lambda req: req.path, front=True)
    def keyed() -> ResponseReturnValue:
        return jsonify(ok=True)

    @app.get("/lang")
    @cached(ttl=300, front=True)
    def lang() -> ResponseReturnValue:
        return jsonify(lang=request.headers.get("Accept-Language")), 200, {"Vary": "Accept-Language"}

    @app.get("/everywhere")
    @cached(ttl=300)
    def everywhere() -> ResponseReturnValue:
        return jsonify(ok=True)

    @app.get("/opted-out")
    @cached(ttl=300, front=False)
    def opted_out() -> ResponseReturnValue:
        return jsonify(ok=True)

    client = app.test_client()
    for path in ("/user", "/cond", "/keyed", "/lang", "/opted-out"):
        for _ in range(3):
            response = client.get(path)
            assert detail(response) != "front", path
        assert hooks.count(path) == 3, path
    client.get("/everywhere")
    assert detail(client.get("/everywhere")) == "front"  # RESILIENCE_CACHE_FRONT=True


def test_responses_an_after_request_hook_made_private_are_not_kept(make_app: MakeApp) -> None:
    app, _ = make_app()
    runs: list[int] = []

    @app.after_request
    def cookie(response: Any) -> Any:
        if request.path == "/cookie":
            response.set_cookie("tracking", "1")
        if request.path == "/private":
            response.headers["Cache-Control"] = "private"
        if request.path == "/pragma":
            response.headers["Pragma"] = "no-cache"
        if request.path == "/expired":
            response.headers["Expires"] = "0"
        return response

    @app.get("/cookie")
    @app.get("/private", endpoint="private")
    @app.get("/pragma", endpoint="pragma")
    @app.get("/expired", endpoint="expired")
    @cached(ttl=300, front=True)
    def view() -> ResponseReturnValue:
        runs.append(1)
        return jsonify(ok=True)

    client = app.test_client()
    for path in ("/cookie", "/private", "/pragma", "/expired"):
        for _ in range(3):
            assert detail(client.get(path)) != "front"


def test_accept_encoding_variants_are_kept_apart(make_app: MakeApp) -> None:
    app, _ = make_app()

    @app.get("/enc")
    @cached(ttl=300, front=True)
    def enc() -> ResponseReturnValue:
        encoding = request.headers.get("Accept-Encoding", "none")
        return jsonify(encoding=encoding), 200, {"Vary": "Accept-Encoding"}

    client = app.test_client()
    for encoding in ("gzip", "br", "gzip", "br"):
        response = client.get("/enc", headers={"Accept-Encoding": encoding})
        assert response.json == {"encoding": encoding}
    assert detail(client.get("/enc", headers={"Accept-Encoding": "br"})) == "front"
    assert client.get("/enc").json == {"encoding": "none"}
    assert client.get("/enc").json == {"encoding": "none"}


def test_invalidation_reaches_front_entries(make_app: MakeApp) -> None:
    app, counts = front_app(make_app)
    client = app.test_client()
    client.get("/front")
    assert detail(client.get("/front")) == "front"
    with app.app_context():
        invalidate_cache_by_tag("flights")
    assert body(client.get("/front"))["runs"] == 2
    assert detail(client.get("/front")) == "front"
    with app.app_context():
        invalidate_cache("api:/front")
    assert body(client.get("/front"))["runs"] == 3
    assert counts.runs == 3


def test_paths_queries_redirects_and_mounts(make_app: MakeApp) -> None:
    app, counts = front_app(make_app)
    client = app.test_client()
    cases = ["/echo/a%3Fb", "/echo/a?b", "/echo/a%23b", "/echo/a%00b", "/echo/a?x=1&x=2", "/echo/a?x=2&x=1"]
    for _ in range(2):
        bodies = [body(client.get(path)) for path in cases]
        assert [body["rest"] for body in bodies] == ["a?b", "a", "a#b", "a\x00b", "a", "a"]
        assert bodies[4]["args"] == {"x": ["1", "2"]} and bodies[5]["args"] == {"x": ["2", "1"]}
    assert detail(client.get("/echo/a%3Fb")) == "front"
    for _ in range(2):
        redirect = client.get("/slash")
        assert redirect.status_code == 308 and "Cache-Status" not in redirect.headers
    assert client.get("/echo/%FF%FE").status_code in (200, 404)
    assert client.get("/echo/%FF%FE").status_code in (200, 404)
    mounted = Client(app)
    first = mounted.get("/echo/x", environ_overrides={"SCRIPT_NAME": "/mount"})
    second = mounted.get("/echo/x", environ_overrides={"SCRIPT_NAME": "/mount"})
    assert first.json == second.json and detail(second) == "front"
    assert detail(client.get("/echo/x")) != "front"  # another mount point: its own identity first
    assert counts.runs >= 6


def test_a_forged_host_never_receives_another_hosts_entry(make_app: MakeApp) -> None:
    app, _ = front_app(make_app)
    client = app.test_client()
    for _ in range(2):
        assert body(client.get("/echo/h", headers={"Host": "good.example"}))["host"] == "good.example"
        assert body(client.get("/echo/h", headers={"Host": "evil.example"}))["host"] == "evil.example"


def test_a_proxy_fix_inside_leaves_the_tier_idle(make_app: MakeApp) -> None:
    app = Flask("proxied")
    app.config.update(TESTING=True)
    app.wsgi_app = ProxyFix(app.wsgi_app, x_host=1)  # type: ignore[method-assign]
    runs: list[str] = []

    @app.get("/p")
    @cached(ttl=300, front=True)
    def proxied() -> ResponseReturnValue:
        runs.append(request.host)
        return jsonify(host=request.host)

    extension = Resilience(app)
    try:
        client = app.test_client()
        for host in ("a.example", "b.example", "a.example", "b.example"):
            response = client.get("/p", headers={"X-Forwarded-Host": host})
            assert response.json == {"host": host}
            assert detail(response) != "front"
    finally:
        extension.shutdown()


def _expected(path: str, query: list[tuple[str, str]], host: str) -> dict[str, Any]:
    args: dict[str, list[str]] = {}
    for name, value in query:
        args.setdefault(name, []).append(value)
    return {"rest": path, "args": args, "host": host}


segment = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters="/"), max_size=6)
pairs = st.lists(st.tuples(st.sampled_from(["a", "b", "a[]", "%"]), st.text(max_size=3)), max_size=3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests=st.lists(st.tuples(segment, pairs, st.sampled_from(["a.example", "b.example"])), max_size=8))
def test_no_request_ever_receives_another_requests_response(
    make_app: MakeApp, requests: list[tuple[str, list[tuple[str, str]], str]]
) -> None:
    app, _ = front_app(make_app)
    client = app.test_client()
    for _ in range(2):
        for name, query, host in requests:
            path = "/echo/x" + quote(name, safe="")
            query_string = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query)
            response = client.get(path, query_string=query_string, headers={"Host": host})
            if response.status_code == 200:
                assert response.json == _expected("x" + name, query, host)
    get_state(app).shutdown()


# -- another process -----------------------------------------------------------------


def front_worker_app(redis_url: str, prefix: str) -> Flask:
    app = Flask("front-worker")
    app.config.update(
        RESILIENCE_REDIS_URL=redis_url, RESILIENCE_KEY_PREFIX=prefix, RESILIENCE_AUDIT_ENABLED=False
    )
    Resilience(app)
    raw = redis.Redis.from_url(redis_url)

    @app.get("/flights")
    @cached(ttl=300, tags=["flights"], prefix="api", front=True)
    def flights() -> ResponseReturnValue:
        return jsonify(runs=raw.incr(f"{prefix}test-front-runs"))

    return app


@pytest.fixture
def worker(redis_url: str, key_prefix: str) -> Iterator[Worker]:
    process = Worker(functools.partial(front_worker_app, redis_url, key_prefix))
    yield process
    process.stop()


def test_invalidation_reaches_front_entries_in_another_process(
    worker: Worker, redis_url: str, key_prefix: str
) -> None:
    app = front_worker_app(redis_url, key_prefix)
    store = get_state(app).redis
    assert store is not None and store.subscriber.wait_until_listening(10)
    try:
        assert worker.get("/flights")[2] == {"runs": 1}
        cache, status, body = worker.get("/flights")
        assert (cache, status.endswith("detail=front"), body) == ("HIT", True, {"runs": 1})
        with app.app_context():
            invalidate_cache_by_tag("flights")
        assert worker.received(1)
        assert worker.get("/flights")[2] == {"runs": 2}
        assert worker.get("/flights")[1].endswith("detail=front")
    finally:
        get_state(app).shutdown()


def test_the_front_tier_is_skipped_until_the_listener_confirms(make_app: MakeApp, redis_url: str) -> None:
    app, counts = front_app(make_app, RESILIENCE_REDIS_URL=redis_url)
    store = get_state(app).redis
    assert store is not None and store.subscriber.wait_until_listening(10)
    client = app.test_client()
    client.get("/front")
    assert detail(client.get("/front")) == "front"
    assert counts.runs == 1


def test_checking_the_session_does_not_add_vary_cookie(make_app: MakeApp) -> None:
    """Storing checks whether the view modified the session; that check must
    not mark the session accessed (Flask then adds ``Vary: Cookie``)."""
    app, _ = front_app(make_app)
    assert "Vary" not in app.test_client().get("/plain").headers


def test_an_undecodable_query_string_is_not_a_server_error(make_app: MakeApp) -> None:
    app, _ = front_app(make_app)
    client = app.test_client()
    first = client.get("/plain", environ_overrides={"QUERY_STRING": "q=\xe9"})
    assert first.status_code == 200
    assert client.get("/plain", environ_overrides={"QUERY_STRING": "q=\xe9"}).headers["X-Cache"] == "HIT"
    assert client.get("/plain", environ_overrides={"QUERY_STRING": "q=%C3%A9"}).headers["X-Cache"] == "MISS"


def test_an_app_without_front_views_never_notes_identities(make_app: MakeApp) -> None:
    front_app(make_app)  # another app in this process opted in
    app, _ = make_app()

    @app.get("/view")
    @cached(ttl=300)
    def view() -> ResponseReturnValue:
        return jsonify(ok=True)

    client = app.test_client()
    for _ in range(3):
        client.get("/view")
    tier = AppCache.of(app).front
    assert not tier.armed and not tier.routes


def test_a_stored_header_with_a_line_break_reads_as_a_miss() -> None:
    from flask_resilience.cache.entry import CacheEntry, Stamp, UnreadableEntry, decode
    from flask_resilience.responses import StoredResponse

    stored = StoredResponse(200, (("X-Evil", "a\r\nSet-Cookie: s=1"),), b"{}", 1.0)
    data = CacheEntry("response", b"{}", 1.0, 2.0, Stamp("e"), stored).encode()
    with pytest.raises(UnreadableEntry):
        decode(data)


def test_front_hits_keep_no_entry_alive_after_l1_lets_it_go(make_app: MakeApp) -> None:
    """What the tier builds per entry for its hits lives and dies with the
    entry: L1's byte bound holds, however many entries were served and evicted."""
    app, _ = make_app(RESILIENCE_CACHE_L1_MAX_BYTES=4_000_000)
    big = b"x" * 1_000_000

    @app.get("/big/<int:number>")
    @cached(ttl=300, front=True)
    def large(number: int) -> ResponseReturnValue:
        return big + str(number).encode(), 200, {"Content-Type": "application/octet-stream"}

    client = app.test_client()
    tracemalloc.start()
    try:
        for number in range(40):
            assert client.get(f"/big/{number}").status_code == 200  # stored, offered, kept
            hit = client.get(f"/big/{number}")
            assert detail(hit) == "front", hit.headers
        del hit
        gc.collect()
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # L1 holds at most 4 MB (view entries and front entries alike), plus what the
    # test client keeps of the last response; 40 MB went through.
    assert held < 8_000_000, held
