"""Defects found by a hostile review of the front tier, the request path,
cache keys and idempotency; each test states the promise it holds the code to."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import threading
from typing import Any

import pytest
import redis
from flask import Flask, jsonify, request, url_for
from flask.typing import ResponseReturnValue
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import Client, EnvironBuilder, run_wsgi_app

from flask_resilience import Resilience, cached, idempotent
from flask_resilience.audit.service import AppAudit
from flask_resilience.cache.keys import variant
from flask_resilience.cache.service import AppCache
from flask_resilience.idempotency.protocol import fingerprint
from flask_resilience.idempotency.records import RedisRecords
from flask_resilience.idempotency.service import AppIdempotency
from flask_resilience.state import get_state
from tests.clock import FakeClock
from tests.conftest import MakeApp


def _detail(response: Any) -> str:
    return str(response.headers.get("Cache-Status", "")).rsplit("detail=", 1)[-1]


def _raw(
    app: Flask, path: str, query_string: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[str, bytes]:
    """A request whose QUERY_STRING is exactly ``query_string`` (as a WSGI
    server passes raw bytes: latin-1 text), e.g. ``x=\\xff``."""
    environ = EnvironBuilder(path=path, method=method, headers=list((headers or {}).items())).get_environ()
    environ["QUERY_STRING"] = query_string
    body, status, _headers = run_wsgi_app(app, environ, buffered=True)
    return status, b"".join(body)


# -- the request path: URL-prefix auditing ---------------------------------------------


def test_prefix_auditing_survives_an_undecodable_query_string(make_app: MakeApp) -> None:
    """An attacker's ``?x=\\xff`` made the auditing hook raise after the admin
    view ran: a 500, and no audit entry for the action that happened."""
    app, extension = make_app()
    extension.audit_blueprint("/api/admin")
    ran: list[str] = []

    @app.post("/api/admin/delete")
    def delete() -> ResponseReturnValue:
        ran.append("deleted")
        return jsonify(ok=True)

    app.config["PROPAGATE_EXCEPTIONS"] = False  # as in production: an error is a 500
    audit = AppAudit.of(app)
    status, _ = _raw(app, "/api/admin/delete", "x=\xff&token=secret", method="POST")
    assert ran == ["deleted"]
    assert status.startswith("200")
    assert audit.stats()["total"] == 1


# -- cache keys ----------------------------------------------------------------------------


def test_the_mount_point_is_part_of_the_cache_key(make_app: MakeApp) -> None:
    """Scheme and host are keyed so that a view building URLs cannot be
    poisoned (docs/cache.rst); SCRIPT_NAME (``X-Forwarded-Prefix`` through
    ProxyFix, or a second mount) changes every URL a view builds too, yet
    a response made under ``/evil`` was served to the plain mount."""
    app, _ = make_app()

    @app.get("/item")
    @cached(ttl=300)
    def item() -> ResponseReturnValue:
        return jsonify(link=url_for("item"))

    client = Client(app)
    assert client.get("/item", environ_overrides={"SCRIPT_NAME": "/evil"}).json == {"link": "/evil/item"}
    assert client.get("/item").json == {"link": "/item"}


# -- the front tier -------------------------------------------------------------------------


def test_a_session_cookie_renamed_after_init_app_keeps_the_request_out_of_the_front_tier(
    make_app: MakeApp,
) -> None:
    """The view-level cache reads SESSION_COOKIE_NAME per request, the front
    tier once at init_app: a caller with the renamed session cookie was
    answered from the front tier (the view-level cache bypasses it)."""
    app, _ = make_app()
    app.config["SESSION_COOKIE_NAME"] = "sid"  # configured after init_app (app factories do)

    @app.get("/a")
    @cached(ttl=300, front=True)
    def page() -> ResponseReturnValue:
        return jsonify(sid=request.cookies.get("sid"))

    client = app.test_client()
    client.get("/a")
    assert _detail(client.get("/a")) == "front"
    with_session = Client(app, use_cookies=False).get("/a", headers={"Cookie": "sid=abc"})
    assert _detail(with_session) != "front"
    assert with_session.json == {"sid": "abc"}


def test_a_head_request_routed_to_another_view_is_not_answered_by_the_front_tier(
    make_app: MakeApp,
) -> None:
    """The identity has no method: HEAD of a URL whose GET view is opted in
    was answered from the front tier even where Flask routes HEAD to another
    view (registered first), whose hooks then never ran."""
    app, _ = make_app()
    hooks: list[str] = []

    @app.before_request
    def hook() -> None:
        hooks.append(request.method)

    @app.route("/h", methods=["HEAD"])
    def head_only() -> ResponseReturnValue:
        return "", 200, {"X-Head-View": "1"}

    @app.get("/h")
    @cached(ttl=300, front=True)
    def get_view() -> ResponseReturnValue:
        return jsonify(x=1)

    client = app.test_client()
    client.get("/h")
    assert _detail(client.get("/h")) == "front"
    hooks.clear()
    head = client.head("/h")
    assert head.headers.get("X-Head-View") == "1"
    assert hooks == ["HEAD"]


# -- idempotency fingerprints ---------------------------------------------------------------


def test_fingerprints_of_different_requests_differ_even_with_nul_in_the_path() -> None:
    """Parts are NUL-terminated, but a path may hold NUL (``%00``) and a body
    any byte: the fields can be shifted across the separator."""
    one = fingerprint("POST", "/pay/x\x00q", "", "application/json", b"{}")
    other = fingerprint("POST", "/pay/x", "q", "", b"application/json\x00{}")
    assert one != other


def test_a_changed_request_with_a_nul_in_its_path_gets_422(make_app: MakeApp) -> None:
    app, _ = make_app()

    @app.post("/pay/<ref>")
    @idempotent()
    def pay(ref: str) -> ResponseReturnValue:
        return jsonify(ref=ref, body=request.get_data(as_text=True))

    client = app.test_client()
    headers = {"Idempotency-Key": "k-nul"}
    first = client.post("/pay/x%00q", data=b"{}", headers=headers, content_type="application/json")
    assert first.status_code == 200
    second = client.post("/pay/x?q", data=b"application/json\x00{}", headers=headers, content_type="")
    assert second.status_code == 422


# -- what held up: kept as regression tests --------------------------------------------


def test_every_feature_keeps_working_after_script_flush(
    make_app: MakeApp, throwaway_redis: tuple[str, subprocess.Popen[bytes]]
) -> None:
    """Cache lookups/stores, shared breakers and idempotency claims (Lua and
    SET NX PX GET) all run by SHA: after SCRIPT FLUSH each loads its script again."""
    url, _server = throwaway_redis
    extension = Resilience()
    breaker = extension.circuit_breaker("flushed", failure_threshold=2, timeout=60)
    app, _ = make_app(extension, RESILIENCE_REDIS_URL=url, RESILIENCE_BREAKER_STORAGE="redis")
    store = get_state(app).redis
    assert store is not None and store.subscriber.wait_until_listening(10)
    raw = redis.Redis.from_url(url)
    runs: list[int] = []

    @app.get("/c")
    @cached(ttl=300, tags=["t"])
    def cached_view() -> ResponseReturnValue:
        runs.append(1)
        return jsonify(n=len(runs))

    @app.post("/pay")
    @idempotent()
    def pay() -> ResponseReturnValue:
        runs.append(2)
        return jsonify(n=len(runs))

    client = app.test_client()
    try:
        for round_ in range(3):
            raw.script_flush()
            AppCache.of(app).layered.l1.clear()
            assert client.get("/c").status_code == 200
            raw.script_flush()
            headers = {"Idempotency-Key": f"flush-{round_}"}
            first = client.post("/pay", json={"a": 1}, headers=headers)
            raw.script_flush()
            again = client.post("/pay", json={"a": 1}, headers=headers)
            assert first.status_code == 200 and again.get_data() == first.get_data()
            assert client.post("/pay", json={"a": 2}, headers=headers).status_code == 422
            raw.script_flush()
            assert breaker.call(lambda: "ok") == "ok"
        assert runs.count(1) == 1 and runs.count(2) == 3
        for flag in (False, True):  # the Lua claim and SET NX PX GET, both after a flush
            records = AppIdempotency.of(app).records
            if hasattr(records, "_set_get"):
                records._set_get = flag
            raw.script_flush()
            key = {"Idempotency-Key": f"claim-{flag}"}
            assert client.post("/pay", json={}, headers=key).status_code == 200
            assert client.post("/pay", json={}, headers=key).status_code == 200
        assert runs.count(2) == 5
    finally:
        raw.close()


@pytest.mark.parametrize("set_get", [False, True], ids=["lua-claim", "set-nx-px-get"])
@pytest.mark.parametrize(
    "unreadable",
    [b"FRI\x09a newer envelope version", b"FRI\x01\x00\x00\x00\x40truncated", b"not an envelope"],
    ids=["newer-version", "damaged", "foreign"],
)
def test_an_unreadable_idempotency_record_is_answered_503_not_run_and_counted(
    *,
    make_app: MakeApp,
    redis_url: str,
    raw_redis: redis.Redis,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
    set_get: bool,
    unreadable: bytes,
) -> None:
    """A record this version cannot read may be a newer version's (a rolling
    upgrade) that says the request ran: running it again could charge twice.
    It is not "still running" either (a 409 that would repeat for the
    record's whole TTL): the answer is a 503 saying what is wrong, counted
    and logged, and the request does not run."""
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url)
    records = AppIdempotency.of(app).records
    assert isinstance(records, RedisRecords)
    records._set_get = set_get
    runs: list[int] = []

    @app.post("/pay")
    @idempotent()
    def pay() -> ResponseReturnValue:
        runs.append(1)
        return jsonify(n=len(runs))

    client = app.test_client()
    headers = {"Idempotency-Key": "k-unreadable"}
    assert client.post("/pay", json={}, headers=headers).status_code == 200
    stored = list(raw_redis.scan_iter(match=key_prefix + "idem:*"))
    assert len(stored) == 1
    raw_redis.set(stored[0], unreadable, keepttl=True)
    AppIdempotency.of(app).memory.clear()
    with caplog.at_level("ERROR", logger="flask_resilience.idempotency"):
        answer = client.post("/pay", json={}, headers=headers)
    assert answer.status_code == 503
    assert answer.mimetype == "application/problem+json"
    assert answer.json is not None and answer.json["type"].endswith("idempotency-record-unreadable")
    assert answer.headers["Retry-After"] and answer.headers["Idempotency-Key"] == "k-unreadable"
    assert runs == [1]
    assert raw_redis.get(stored[0]) == unreadable  # left for the version that wrote it
    assert AppIdempotency.of(app).stats()["unreadable_records"] == 1
    assert any("unreadable" in record.getMessage() for record in caplog.records)
    assert "k-unreadable" not in caplog.text  # the client's key is not logged
    # Once the record is readable again (the newer workers answer, or an
    # operator forgets the key), the key behaves as usual.
    raw_redis.delete(stored[0])
    assert client.post("/pay", json={}, headers=headers).status_code == 200
    assert runs == [1, 1]


def test_query_args_hold_for_an_undecodable_query_string(make_app: MakeApp) -> None:
    """``query_args=[]`` is how a view says "no parameter is part of my key"
    (clients cannot inject key material); ``?buster=\\xff<n>`` injected it."""
    app, _ = make_app()
    runs: list[int] = []

    @app.get("/home")
    @cached(ttl=300, query_args=["page"])
    def home() -> ResponseReturnValue:
        runs.append(1)
        return jsonify(home=True)

    for query in ("page=1&buster=\xff1", "page=1&buster=\xff2", "buster=\xff3&page=1"):
        status, _ = _raw(app, "/home", query)
        assert status.startswith("200")
    assert len(runs) == 1
    _raw(app, "/home", "page=2&buster=\xff4")
    assert len(runs) == 2  # the parameter it keys on still counts


def test_a_raw_utf8_parameter_name_in_query_args_still_counts_in_an_undecodable_query(
    make_app: MakeApp,
) -> None:
    app, _ = make_app()

    @app.get("/cafe")
    @cached(ttl=300, query_args=["caf\u00e9"])
    def cafe() -> ResponseReturnValue:
        return jsonify(raw=request.query_string.decode("latin-1"))

    # UTF-8 bytes of the name as a WSGI server passes them (latin-1 text), and a byte that is not UTF-8.
    for value in ("1", "2"):
        status, body = _raw(app, "/cafe", f"caf\xc3\xa9={value}&x=\xff")
        assert status.startswith("200")
        assert json.loads(body)["raw"] == f"caf\xc3\xa9={value}&x=\xff"


@pytest.mark.parametrize("set_get", [False, True], ids=["lua-claim", "set-nx-px-get"])
def test_concurrent_retries_run_the_view_once_and_replay_byte_identical(
    make_app: MakeApp, redis_url: str, set_get: bool
) -> None:
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url)
    records = AppIdempotency.of(app).records
    if set_get and records.claims_with_set_get() is False:  # type: ignore[attr-defined]
        pytest.skip("SET NX PX GET needs Redis 7")
    records._set_get = set_get  # type: ignore[attr-defined]
    runs: list[int] = []
    gate = threading.Barrier(12)

    @app.post("/charge")
    @idempotent(wait=5000)
    def charge() -> ResponseReturnValue:
        runs.append(1)
        return jsonify(charged=len(runs), token=os.urandom(8).hex()), 201

    def attempt() -> tuple[int, bytes]:
        client = app.test_client()
        gate.wait()
        response = client.post("/charge", json={"amount": 5}, headers={"Idempotency-Key": "same"})
        return response.status_code, response.get_data()

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda _: attempt(), range(12)))
    assert len(runs) == 1
    bodies = {body for status, body in results if status == 201}
    assert len(bodies) == 1 and all(status in (201, 409) for status, _ in results)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    requests=st.lists(
        st.tuples(
            st.sampled_from(["", "/m", "/m/n", "/M"]),
            st.sampled_from(["/p/a", "/p/a%2Fb", "/p/%C3%A9", "/p/a%3Fb"]),
            st.sampled_from(["", "x=1", "x=1&x=2", "x=2&x=1", "x=\xff"]),
            st.sampled_from(["a.example", "A.example", "a.example:80"]),
        ),
        max_size=10,
    )
)
def test_through_both_tiers_no_request_receives_a_response_built_for_another(
    make_app: MakeApp, requests: list[tuple[str, str, str, str]]
) -> None:
    app, _ = make_app()

    @app.get("/p/<path:rest>")
    @cached(ttl=300, front=True)
    def page(rest: str) -> ResponseReturnValue:
        link = url_for("page", rest=rest, _external=True)
        return jsonify(link=link, query=request.query_string.decode("latin-1"))

    for _ in range(2):
        for root, path, query, host in requests:
            environ = EnvironBuilder(path=path, headers=[("Host", host)]).get_environ()
            environ["SCRIPT_NAME"], environ["QUERY_STRING"] = root, query
            body, status, _headers = run_wsgi_app(app, environ, buffered=True)
            assert status.startswith("200")
            got = json.loads(b"".join(body))
            assert got["link"].startswith(f"http://{host.lower().removesuffix(':80')}{root}/p/")
            assert got["query"] == query


@pytest.mark.parametrize("name", ["user_id", "event_type", "since", "limit"])
def test_raw_invalid_utf8_in_an_admin_query_is_400_not_500(make_app: MakeApp, name: str) -> None:
    token = "hostile-admin-token-0123456789"
    app, _ = make_app(RESILIENCE_ADMIN_TOKEN=token)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    status, _body = _raw(
        app, "/api/health/audit/entries", f"{name}=\xff", headers={"Authorization": f"Bearer {token}"}
    )
    assert status.startswith("400")
    assert "UTF-8" in json.loads(_body)["detail"]


_PART = st.none() | st.text(st.sampled_from("aA/|=%-h:s.r"), max_size=6)


@settings(max_examples=500, deadline=None)
@given(st.tuples(_PART, _PART, st.text(st.sampled_from("/|=%rh"), max_size=5), _PART), st.data())
def test_variants_with_a_mount_point_stay_injective(
    one: tuple[str | None, str | None, str, str | None], data: st.DataObject
) -> None:
    other = data.draw(st.tuples(_PART, _PART, st.text(st.sampled_from("/|=%rh"), max_size=5), _PART))
    scheme, host, root, principal = one
    first = variant(scheme=scheme, host=host, root=root, principal=principal)
    scheme, host, root, principal = other
    second = variant(scheme=scheme, host=host, root=root, principal=principal)
    assert (first == second) == (one == other)


def test_a_wall_clock_step_forward_does_not_run_a_running_request_twice(make_app: MakeApp) -> None:
    app, _ = make_app(RESILIENCE_IDEMPOTENCY_LEASE=60)
    started, release = threading.Event(), threading.Event()
    runs: list[int] = []

    @app.post("/slow")
    @idempotent()
    def slow() -> ResponseReturnValue:
        runs.append(1)
        if len(runs) == 1:
            started.set()
            release.wait(10)
        return jsonify(run=len(runs))

    clock = FakeClock(1_700_000_000)
    AppIdempotency.of(app).clock = clock
    headers = {"Idempotency-Key": "stepped"}
    first = threading.Thread(target=lambda: app.test_client().post("/slow", json={}, headers=headers))
    first.start()
    try:
        assert started.wait(10)
        clock.advance(3600)  # the wall clock jumps an hour; no time passed for the running request
        duplicate = app.test_client().post("/slow", json={}, headers=headers)
        assert duplicate.status_code == 409
        assert len(runs) == 1
    finally:
        release.set()
        first.join(10)


class _MethodOverride:
    """The method-override middleware of Flask's documentation."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        method = environ.get("HTTP_X_HTTP_METHOD_OVERRIDE", "").upper()
        if method in {"GET", "HEAD", "POST", "DELETE", "PUT", "PATCH", "OPTIONS"}:
            environ["REQUEST_METHOD"] = method
        return self.app(environ, start_response)


def test_a_middleware_inside_the_extension_that_rewrites_the_method_leaves_the_tier_idle() -> None:
    app = Flask("overridden")
    app.config.update(TESTING=True)
    app.wsgi_app = _MethodOverride(app.wsgi_app)  # type: ignore[method-assign]
    deleted: list[int] = []

    @app.get("/doc")
    @cached(ttl=300, front=True)
    def doc() -> ResponseReturnValue:
        return jsonify(doc=1)

    @app.delete("/doc")
    def delete_doc() -> ResponseReturnValue:
        deleted.append(1)
        return jsonify(deleted=True)

    extension = Resilience(app)
    try:
        client = app.test_client()
        client.get("/doc")
        client.get("/doc")
        response = client.get("/doc", headers={"X-HTTP-Method-Override": "DELETE"})
        assert response.json == {"deleted": True} and deleted == [1]
    finally:
        extension.shutdown()
