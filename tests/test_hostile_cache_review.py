"""Hostile review of the cache's new hit path: the per-view key memo, the hit
response built without re-checking its headers, stored-record validation and
the principal kept in the WSGI environ. Each test states the promise it holds
the code to; a strict xfail is a defect found."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from io import BytesIO
from itertools import count
from typing import Any

import pytest
import redis
from flask import Blueprint, Flask, Response, g, jsonify, request
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.test import EnvironBuilder, run_wsgi_app

from flask_resilience import Resilience, cached, current_principal, invalidate_cache_by_tag
from flask_resilience.cache.service import AppCache
from flask_resilience.responses import pack, unpack
from flask_resilience.state import get_state
from tests.clock import eventually
from tests.conftest import MakeApp

RUNS = count(1)  # every computed body is unique


def tagged_app(make_app: MakeApp, redis_url: str) -> tuple[Flask, Any]:
    """An app caching ``/fares`` (a new body each run) under the tag ``fares``,
    listening for invalidations; with its test client."""
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url)

    @app.get("/fares")
    @cached(60, tags=["fares"])
    def fares() -> Response:
        return Response(f"fares-{next(RUNS)}")

    store = get_state(app).redis
    assert store is not None and store.subscriber.wait_until_listening(10)
    return app, app.test_client()


def _raw(
    app: Flask,
    path: str,
    query_string: str = "",
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    environ: dict[str, Any] | None = None,
) -> tuple[str, list[tuple[str, str]], bytes]:
    """A raw WSGI request: ``QUERY_STRING`` exactly as given; ``environ`` overrides."""
    built = EnvironBuilder(path=path, method=method, headers=list((headers or {}).items())).get_environ()
    built["QUERY_STRING"] = query_string
    built.update(environ or {})
    body, status, response_headers = run_wsgi_app(app, built, buffered=True)
    return status, list(response_headers.items()), b"".join(body)


def _entry_keys(raw_redis: redis.Redis, key_prefix: str) -> list[bytes]:
    """The Redis keys of the stored cache entries (vary markers included)."""
    return list(raw_redis.scan_iter(match=f"{key_prefix}*:cache:e:*", count=1000))


def _rewrite(raw_redis: redis.Redis, key: bytes, header_json: str | None = None, /, **changes: Any) -> None:
    """Rewrite a stored entry in place (its generation and TTL kept): its
    JSON header with ``changes`` applied, or exactly ``header_json``."""
    value = raw_redis.get(key)
    assert isinstance(value, bytes)
    generation, record = value[:16], value[16:]
    header, body = unpack(b"C", record)
    header.update(changes)
    if header_json is None:
        data = pack(b"C", header, body)
    else:
        raw = header_json.encode()
        data = b"FRC\x01" + len(raw).to_bytes(4, "big") + raw + body
    raw_redis.set(key, generation + data, keepttl=True)


def _redis_app(make_app: MakeApp, redis_url: str, **config: Any) -> Flask:
    """One 'process': an app on the shared Redis, errors answered as 500s."""
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url, **config)
    app.config["PROPAGATE_EXCEPTIONS"] = False  # as in production

    @app.get("/page")
    @cached(60)
    def page() -> Response:
        return Response(f"page-{next(RUNS)}", headers={"X-Made": "yes"})

    return app


def _stored_page(make_app: MakeApp, redis_url: str, raw_redis: redis.Redis, key_prefix: str) -> bytes:
    """Store /page in Redis through one app; the key of its entry."""
    writer = _redis_app(make_app, redis_url)
    assert writer.test_client().get("/page").headers["X-Cache"] == "MISS"
    (key,) = _entry_keys(raw_redis, key_prefix)
    return key


# -- 3. stored-record validation: whatever sits in Redis, a miss or a correct hit ----------


def _header_of(raw_redis: redis.Redis, key: bytes) -> dict[str, Any]:
    value = raw_redis.get(key)
    assert isinstance(value, bytes)
    return unpack(b"C", value[16:])[0]


DAMAGED_JSON: dict[str, Callable[[str], str]] = {
    # json.loads reads Infinity and long integers; int()/float() of them raise
    # OverflowError, which is not among the errors entry.decode catches.
    "status-infinity": lambda header: header.replace('"s":200', '"s":Infinity'),
    "created-at-huge-integer": lambda header: _replace_number(header, "c", "1" + "0" * 400),
    "response-time-huge-integer": lambda header: _replace_number(header, "t", "1" + "0" * 400),
    "tag-version-infinity": lambda header: header.replace('"g":{', '"g":{"t":Infinity,', 1),
}


def _replace_number(header: str, field: str, number: str) -> str:
    decoded = json.loads(header)
    decoded[field] = "@@"
    return json.dumps(decoded, separators=(",", ":"), ensure_ascii=False).replace('"@@"', number)


@pytest.mark.parametrize("damage", sorted(DAMAGED_JSON))
def test_a_record_with_numbers_out_of_range_reads_as_a_miss(
    make_app: MakeApp, redis_url: str, raw_redis: redis.Redis, key_prefix: str, damage: str
) -> None:
    key = _stored_page(make_app, redis_url, raw_redis, key_prefix)
    header = json.dumps(_header_of(raw_redis, key), separators=(",", ":"), ensure_ascii=False)
    damaged = DAMAGED_JSON[damage](header)
    assert damaged != header
    _rewrite(raw_redis, key, damaged)
    reader = _redis_app(make_app, redis_url)  # another process: empty L1, reads Redis
    client = reader.test_client()
    first = client.get("/page")
    assert first.status_code == 200 and first.headers["X-Cache"] == "MISS"
    assert client.get("/page").get_data() == first.get_data()  # stored again: not wedged


@pytest.mark.parametrize("times", [{"c": -1e300}, {"x": 1e300}])
def test_a_record_with_times_out_of_range_never_serves_an_absurd_age_or_ttl(
    make_app: MakeApp, redis_url: str, raw_redis: redis.Redis, key_prefix: str, times: dict[str, float]
) -> None:
    """from_fields refuses a response time outside 1970..9999; the entry's own
    times get no such check, and the hit computes Age and ttl from them."""
    key = _stored_page(make_app, redis_url, raw_redis, key_prefix)
    _rewrite(raw_redis, key, **times)
    answer = _redis_app(make_app, redis_url).test_client().get("/page")
    assert answer.status_code == 200
    ttl = answer.headers["Cache-Status"].partition("ttl=")[2].partition(";")[0] or "0"
    assert int(answer.headers.get("Age", "0")) <= 2**31 and int(ttl) <= 2**31, answer.headers


@pytest.mark.parametrize("etag", ['"a"\r\nSet-Cookie: session=attacker', 7])
def test_a_damaged_etag_never_makes_a_conditional_request_fail(
    make_app: MakeApp, redis_url: str, raw_redis: redis.Redis, key_prefix: str, etag: object
) -> None:
    key = _stored_page(make_app, redis_url, raw_redis, key_prefix)
    _rewrite(raw_redis, key, e=etag)
    reader = _redis_app(make_app, redis_url)
    answer = reader.test_client().get("/page", headers={"If-None-Match": "*"})
    assert answer.status_code in (200, 304)
    assert "Set-Cookie" not in answer.headers


def test_a_record_cannot_give_a_hit_a_second_content_length(
    make_app: MakeApp, redis_url: str, raw_redis: redis.Redis, key_prefix: str
) -> None:
    """A hit's framing is the cache's own: a length or transfer coding read
    from Redis would desynchronise a proxy in front (response smuggling); and
    what the cache never stores (Set-Cookie, hop-by-hop) it never serves."""
    key = _stored_page(make_app, redis_url, raw_redis, key_prefix)
    header = _header_of(raw_redis, key)
    hostile = [
        ["Content-Length", "0"],
        ["Transfer-Encoding", "chunked"],
        ["Connection", "close"],
        ["Set-Cookie", "session=attacker"],
    ]
    _rewrite(raw_redis, key, h=header["h"] + hostile)
    reader = _redis_app(make_app, redis_url)
    status, headers, body = _raw(reader, "/page")
    assert status.startswith("200")
    names = [name.lower() for name, _value in headers]
    lengths = [value for name, value in headers if name.lower() == "content-length"]
    assert lengths == [str(len(body))], headers
    assert not {"transfer-encoding", "connection", "set-cookie"} & set(names), headers


def _redis_app_with_other(make_app: MakeApp, redis_url: str, **config: Any) -> Flask:
    app = _redis_app(make_app, redis_url, **config)

    @app.get("/other")
    @cached(60)
    def other() -> Response:
        return Response(f"other-{next(RUNS)}")

    return app


@pytest.mark.parametrize("part", ["e", "g", "l"])
def test_a_cache_key_of_another_redis_type_is_a_miss_not_an_outage(
    make_app: MakeApp, redis_url: str, raw_redis: redis.Redis, key_prefix: str, part: str
) -> None:
    """Whatever sits under an entry's, generation's or lock's key (here a hash:
    a bug elsewhere, or anyone with write access), the request is a miss, the
    next store replaces it, and the other resources keep their L2 hits."""
    writer = _redis_app_with_other(make_app, redis_url)
    client = writer.test_client()
    client.get("/page")
    client.get("/other")
    page_entry = next(
        key for key in _entry_keys(raw_redis, key_prefix) if _header_of(raw_redis, key)["h"][0][0] == "X-Made"
    )
    damaged = page_entry.replace(b":cache:e:", b":cache:" + part.encode() + b":", 1)
    if part == "g":
        (damaged,) = [key for key in raw_redis.scan_iter(match=f"{key_prefix}*:cache:g:*page") if key]
    raw_redis.delete(damaged)
    if part == "l":
        raw_redis.delete(page_entry)  # a miss that finds its lock key taken by a hash
    raw_redis.hset(damaged, "field", "value")
    raw_redis.expire(damaged, 60)
    reader = _redis_app_with_other(make_app, redis_url)
    answers = reader.test_client()
    assert answers.get("/page").status_code == 200
    other = answers.get("/other")
    assert other.headers["X-Cache"] == "HIT" and "detail=l2" in other.headers["Cache-Status"]
    again = _redis_app_with_other(make_app, redis_url).test_client()
    again.get("/page")
    assert again.get("/page").headers["X-Cache"] == "HIT"  # stored again: not wedged


def test_an_epoch_key_of_another_redis_type_does_not_take_l2_down_for_good(
    make_app: MakeApp, redis_url: str, raw_redis: redis.Redis, key_prefix: str
) -> None:
    """The epoch is one key for every view: a hash there (WRONGTYPE) must cost
    at most the entries made under it (a lost epoch makes every entry a
    miss), not every process's L2 for as long as it stays."""
    _redis_app_with_other(make_app, redis_url).test_client().get("/page")
    (epoch,) = raw_redis.scan_iter(match=f"{key_prefix}*:cache:epoch")
    raw_redis.delete(epoch)
    raw_redis.hset(epoch, "field", "value")
    raw_redis.expire(epoch, 60)
    # (The first process's stampede lock is left behind: the second waits for it.)
    quick = {"RESILIENCE_CACHE_LOCK_TIMEOUT": 0.5}
    _redis_app_with_other(make_app, redis_url, **quick).test_client().get("/page")  # a miss, stored again
    shared = _redis_app_with_other(make_app, redis_url, **quick).test_client().get("/page")
    assert shared.headers["X-Cache"] == "HIT" and "detail=l2" in shared.headers["Cache-Status"], (
        shared.headers
    )


@pytest.mark.parametrize("counter", [b"not-a-number", b"1.5", b""])
def test_a_damaged_tag_counter_never_makes_a_cached_view_fail(
    make_app: MakeApp, redis_url: str, raw_redis: redis.Redis, key_prefix: str, counter: bytes
) -> None:
    """Every entry carries the '*' tag: its counter is read for every miss
    and every L2 hit of every cached view, in every process."""
    _redis_app_with_other(make_app, redis_url).test_client().get("/page")
    (tag,) = raw_redis.scan_iter(match=f"{key_prefix}*:cache:t:*")
    raw_redis.set(tag, counter)
    client = _redis_app_with_other(make_app, redis_url, RESILIENCE_CACHE_LOCK_TIMEOUT=0.5).test_client()
    statuses = [client.get(path).status_code for path in ("/page", "/other", "/page", "/other")]
    assert statuses == [200, 200, 200, 200]


@pytest.mark.parametrize("generation", [b"short", b"x" * 40])
def test_a_damaged_generation_does_not_wedge_its_resource(
    make_app: MakeApp, redis_url: str, raw_redis: redis.Redis, key_prefix: str, generation: bytes
) -> None:
    """Stores under a generation the lookups can never match: every process
    misses and stores again, and each store keeps the damaged key alive."""
    _redis_app_with_other(make_app, redis_url).test_client().get("/page")
    (generation_key,) = raw_redis.scan_iter(match=f"{key_prefix}*:cache:g:*/page")
    raw_redis.set(generation_key, generation)
    answers = []
    for _process in range(3):
        answer = _redis_app_with_other(make_app, redis_url).test_client().get("/page")
        answers.append((answer.status_code, answer.headers["X-Cache"]))
    assert answers[0][0] == 200
    assert answers[-1] == (200, "HIT"), answers  # the first store replaced the damaged generation


@pytest.mark.parametrize("status", [203, 204, 301, 404, 599])
def test_legitimate_unusual_headers_are_stored_and_served_from_redis(
    make_app: MakeApp, redis_url: str, status: int
) -> None:
    """Validation must not make valid responses unreadable: non-ASCII
    (latin-1) values, a Link with commas, an empty value, repeated names,
    many headers, a status other than 200 that the view lets the cache store."""
    extra = [
        ("X-Name", "café crème"),
        ("Link", '</a>; rel="preload", </b>; rel="next"'),
        ("Link", "</c>; rel=prev"),
        ("X-Empty", ""),
        ("X-Tab", "a\tb"),
        ("Content-Language", "de-DE, en"),
        ("X-Token!#$%&'*+-.^_`|~", "v"),
        *((f"X-Many-{index}", "v" * 50) for index in range(60)),
    ]

    def app_with_view() -> Flask:
        app, _ = make_app(RESILIENCE_REDIS_URL=redis_url)

        @app.get("/odd")
        @cached(60, statuses=(status,))
        def odd() -> Response:
            body = "" if status == 204 else f"odd-{next(RUNS)}"
            return Response(body, status=status, headers=[*extra, ("Location", "/elsewhere?a=1,2")])

        return app

    first = app_with_view().test_client().get("/odd")
    assert first.headers["X-Cache"] == "MISS" and "stored" in first.headers["Cache-Status"]
    again = app_with_view().test_client().get("/odd")  # another process: from Redis
    assert again.headers["X-Cache"] == "HIT", again.headers["Cache-Status"]
    assert again.status_code == status and again.get_data() == first.get_data()
    for name, _value in extra:
        assert again.headers.getlist(name) == first.headers.getlist(name)
    assert again.headers.getlist("Location") == first.headers.getlist("Location")
    lengths = [] if status == 204 else [str(len(first.get_data()))]
    assert again.headers.getlist("Content-Length") == lengths


# -- 2. the hit response -------------------------------------------------------------------


def _page_app(make_app: MakeApp, **config: Any) -> Flask:
    app, _ = make_app(**config)
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.get("/page")
    @cached(60)
    def page() -> Response:
        return Response(f"page-{next(RUNS)}-é".encode(), headers={"X-Made": "yes"})

    return app


def test_a_hit_has_one_correct_content_length_through_hooks_head_and_raw_wsgi(make_app: MakeApp) -> None:
    app = _page_app(make_app)
    closed: list[str] = []

    @app.after_request
    def rewrite(response: Response) -> Response:
        if request.args.get("shout"):
            response.set_data(response.get_data().upper() + b"!!")
        if request.args.get("wrap"):
            response.response = [b"<", response.get_data(), b">"]
            response.headers["Content-Length"] = str(len(response.get_data()))
        response.call_on_close(lambda: closed.append("closed"))
        return response

    status, headers, stored = _raw(app, "/page")
    assert dict(headers)["X-Cache"] == "MISS"
    for query, looks_right in (("", b"page-"), ("shout=1", b"PAGE-"), ("wrap=1", b"<page-")):
        # The hooks run on the miss and on the hit alike: the same bytes.
        _status, _headers, missed = _raw(app, "/page", query)
        status, headers, body = _raw(app, "/page", query)
        assert status.startswith("200") and dict(headers)["X-Cache"] == "HIT"
        assert body == missed and body.startswith(looks_right)
        assert [value for name, value in headers if name == "Content-Length"] == [str(len(body))]
        assert len([name for name, _ in headers if name == "X-Cache"]) == 1
    status, headers, body = _raw(app, "/page", method="HEAD")
    assert status.startswith("200") and body == b"" and dict(headers)["X-Cache"] == "HIT"
    assert [value for name, value in headers if name == "Content-Length"] == [str(len(stored))]
    assert closed and all(entry == "closed" for entry in closed)


def test_a_hit_answers_if_none_match_with_a_304_without_a_length(make_app: MakeApp) -> None:
    app = _page_app(make_app)
    client = app.test_client()
    etag = client.get("/page").headers["ETag"]
    not_modified = client.get("/page", headers={"If-None-Match": etag})
    assert not_modified.status_code == 304 and not_modified.get_data() == b""
    assert "Content-Length" not in not_modified.headers
    assert not_modified.headers["ETag"] == etag and not_modified.headers["X-Made"] == "yes"


def test_a_304_keeps_every_line_of_a_repeated_header(make_app: MakeApp) -> None:
    """RFC 9110 §15.4.5: a 304 carries the Cache-Control and Vary a 200 would;
    a cache in front updates its stored headers from it."""
    app, _ = make_app()

    @app.get("/multi")
    @cached(60)
    def multi() -> Response:
        return Response(
            f"multi-{next(RUNS)}",
            headers=[("Cache-Control", "public"), ("Cache-Control", "max-age=60"), ("X-Made", "yes")],
        )

    client = app.test_client()
    full = client.get("/multi")
    hit = client.get("/multi")
    assert hit.headers["X-Cache"] == "HIT"
    assert hit.headers.getlist("Cache-Control") == ["public", "max-age=60"]
    not_modified = client.get("/multi", headers={"If-None-Match": full.headers["ETag"]})
    assert not_modified.status_code == 304
    assert not_modified.headers.getlist("Cache-Control") == ["public", "max-age=60"]


class _AppResponse(Response):
    """An app's own response class, whose after_request hook relies on it."""

    def tag(self) -> None:
        self.headers["X-Tagged"] = "1"


def test_a_hit_is_an_instance_of_the_apps_response_class(make_app: MakeApp) -> None:
    app, _ = make_app()
    app.config["PROPAGATE_EXCEPTIONS"] = False
    app.response_class = _AppResponse

    @app.after_request
    def tag(response: Response) -> Response:
        assert isinstance(response, _AppResponse)
        response.tag()
        return response

    @app.get("/page")
    @cached(60)
    def page() -> str:
        return f"page-{next(RUNS)}"

    client = app.test_client()
    assert client.get("/page").headers["X-Tagged"] == "1"
    hit = client.get("/page")
    assert hit.status_code == 200 and hit.headers["X-Tagged"] == "1"


# -- 1. the per-view key memo --------------------------------------------------------------


def _memo_sizes(app: Flask) -> list[int]:
    """Characters each view's memo holds in its keys."""
    sizes = []
    for view in app.view_functions.values():
        closure = getattr(view, "__closure__", None) or ()
        for cell in closure:
            policy = cell.cell_contents
            keys = getattr(policy, "keys", None)
            if isinstance(keys, dict):
                sizes.append(sum(len(part) for memo in keys for part in memo if part))
    return sizes


def test_the_memo_stays_small_under_a_flood_of_long_host_headers(make_app: MakeApp) -> None:
    """A flood of random ``Host`` headers (vary_host, the default) keys each
    one afresh; what the memo keeps must stay within its stated size, about
    1024 URLs of 256 characters, not 1024 client-chosen headers."""
    app = _page_app(make_app)
    for number in range(1024):
        host = f"h{number}." + ".".join(["x" * 60] * 260) + ".test"  # 15,000+ characters
        status, _headers, _body = _raw(app, "/page", environ={"HTTP_HOST": host})
        assert status.startswith("200")
    (held,) = _memo_sizes(app)
    assert held <= 1024 * 512, f"the memo holds {held:,} characters"
    status, headers, _body = _raw(app, "/page")  # hits keep working
    _status, headers, _body = _raw(app, "/page")
    assert dict(headers)["X-Cache"] == "HIT"


def test_remembered_keys_match_fresh_ones_across_mounts_hosts_and_raw_queries(make_app: MakeApp) -> None:
    """The memo never joins two requests a fresh key would keep apart: mount
    points, hosts with vary_host, encoded '#', '?', NUL, undecodable bytes,
    repeated parameters; and it is cleared (never grows) past 1024 URLs."""
    app, _ = make_app(RESILIENCE_CACHE_L1_MAX_ENTRIES=5000)  # L1 keeps every entry: only the memo forgets

    @app.get("/p/<path:rest>")
    @cached(60)
    def page(rest: str) -> Response:
        return Response(
            json.dumps(
                [rest, request.script_root, request.host, request.query_string.decode("latin-1")],
                ensure_ascii=True,
            )
        )

    requests = [
        ("/p/a", "", {}),
        ("/p/a", "", {"SCRIPT_NAME": "/mount"}),
        ("/p/a", "", {"HTTP_HOST": "other.test"}),
        ("/p/a%23b", "", {}),
        ("/p/a#b", "", {}),
        ("/p/a%3Fb", "", {}),
        ("/p/a%00", "", {}),
        ("/p/a", "x=%23", {}),
        ("/p/a", "x=%3F", {}),
        ("/p/a", "x=\xff", {}),
        ("/p/a", "x=\xfe", {}),
        ("/p/a", "x=1&x=2", {}),
        ("/p/a", "x=2&x=1", {}),
        ("/p/a", "x=%00", {}),
    ]
    first = {}
    for path, query, environ in requests:
        status, _headers, body = _raw(app, path, query, environ=environ)
        assert status.startswith("200")
        first[(path, query, tuple(environ.items()))] = body
    for round_ in range(2):
        for filler in range(1100 * round_):  # past the memo's limit: it is cleared
            _raw(app, f"/p/filler-{filler}")
        for path, query, environ in requests:
            status, headers, body = _raw(app, path, query, environ=environ)
            assert dict(headers)["X-Cache"] == "HIT", (path, query, environ)
            assert body == first[(path, query, tuple(environ.items()))], (path, query, environ)
    assert len(set(first.values())) == len(requests) - 1  # '/p/a#b' is '/p/a' (no fragment reaches WSGI)
    assert max(_memo_sizes(app)) <= 1024 * 300


def test_one_view_on_two_rules_two_blueprints_and_two_apps_behind_proxyfix(make_app: MakeApp) -> None:
    """One decorated view shares one memo wherever it is registered: every
    rule, blueprint, app, forwarded prefix and forwarded host keeps its own
    entry, and each one's hit is its own response."""

    @cached(60)
    def shared() -> Response:
        return Response(json.dumps([request.path, request.script_root, request.host, next(RUNS)]))

    first_app, _ = make_app()
    second_app, _ = make_app()
    first_app.add_url_rule("/a", "a", shared)
    first_app.add_url_rule("/b", "b", shared)
    for name in ("one", "two"):
        blueprint = Blueprint(name, __name__)
        blueprint.add_url_rule("/x", "x", shared)
        first_app.register_blueprint(blueprint, url_prefix=f"/{name}")
    second_app.add_url_rule("/a", "a", shared)
    first_app.wsgi_app = ProxyFix(first_app.wsgi_app, x_prefix=1, x_host=1)  # type: ignore[method-assign]
    calls: list[tuple[Flask, str, dict[str, str]]] = [
        (first_app, "/a", {}),
        (first_app, "/b", {}),
        (first_app, "/one/x", {}),
        (first_app, "/two/x", {}),
        (first_app, "/a", {"X-Forwarded-Prefix": "/p1"}),
        (first_app, "/a", {"X-Forwarded-Prefix": "/p2"}),
        (first_app, "/a", {"X-Forwarded-Host": "other.test"}),
        (second_app, "/a", {}),
    ]
    first = []
    for app, path, headers in calls:
        status, response_headers, body = _raw(app, path, headers=headers)
        assert status.startswith("200") and dict(response_headers)["X-Cache"] == "MISS", (path, headers)
        first.append(body)
    assert len(set(first)) == len(calls)
    for (app, path, headers), expected in zip(calls, first, strict=True):
        status, response_headers, body = _raw(app, path, headers=headers)
        assert dict(response_headers)["X-Cache"] == "HIT" and body == expected, (path, headers)


def test_vary_responses_keep_one_entry_per_header_value_through_the_memo(make_app: MakeApp) -> None:
    app, _ = make_app()

    @app.get("/greeting")
    @cached(60)
    def greeting() -> Response:
        language = request.headers.get("Accept-Language", "none")
        return Response(f"{language}-{next(RUNS)}", headers={"Vary": "Accept-Language"})

    client = app.test_client()
    languages = ["en", "de", "fr", None]
    first = {}
    for language in languages:
        headers = {} if language is None else {"Accept-Language": language}
        first[language] = client.get("/greeting", headers=headers).get_data()
    for language in languages * 2:
        headers = {} if language is None else {"Accept-Language": language}
        hit = client.get("/greeting", headers=headers)
        assert hit.headers["X-Cache"] == "HIT" and hit.get_data() == first[language]


def test_threads_racing_on_the_memo_never_cross_users(make_app: MakeApp) -> None:
    extension = Resilience()

    @extension.principal_loader
    def loader() -> str | None:
        return request.headers.get("X-User")

    app, _ = make_app(extension)

    @app.get("/me/<int:item>")
    @cached(60, per_user=True)
    def me(item: int) -> Response:
        return Response(f"{request.headers['X-User']}:{item}")

    errors: list[str] = []
    start = threading.Barrier(8)

    def worker(number: int) -> None:
        start.wait()
        user = f"user{number % 4}"
        for item in range(300):
            status, _headers, body = _raw(app, f"/me/{item % 40}", headers={"X-User": user})
            if not status.startswith("200") or body != f"{user}:{item % 40}".encode():
                errors.append(f"{user} item {item % 40} got {status} {body!r}")

    threads = [threading.Thread(target=worker, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# -- 4. the principal kept in the WSGI environ ---------------------------------------------


def test_an_early_hook_in_a_shared_app_context_does_not_freeze_the_last_callers_principal(
    make_app: MakeApp,
) -> None:
    """The loader reads what the app's auth hook sets on ``g``. Requests made
    inside one pushed app context share ``g``: an earlier hook (logging,
    auditing) that asks for the principal before the auth hook gets the
    previous caller, and the cache keeps that answer for the whole request."""
    extension = Resilience()

    @extension.principal_loader
    def loader() -> str | None:
        user: str | None = g.get("user")
        return user

    app, _ = make_app(extension)
    seen: list[str | None] = []

    @app.before_request
    def log_caller() -> None:  # registered first: runs before authentication
        principal = current_principal()
        seen.append(None if principal is None else principal.key)

    @app.before_request
    def authenticate() -> None:
        g.user = request.headers.get("X-User")

    @app.get("/me/trips")
    @cached(60, per_user=True)
    def trips() -> Response:
        return jsonify(user=g.user, run=next(RUNS))

    client = app.test_client()
    with app.app_context():
        alice = client.get("/me/trips", headers={"X-User": "alice"})
        bob = client.get("/me/trips", headers={"X-User": "bob"})
    assert alice.json is not None and alice.json["user"] == "alice"
    assert bob.json is not None and bob.json["user"] == "bob", (
        f"bob got {bob.json} ({bob.headers['X-Cache']})"
    )


def test_a_sub_request_built_from_a_copy_of_the_environ_has_its_own_principal(make_app: MakeApp) -> None:
    """Batch endpoints run sub-requests from a copy of the outer environ with
    each item's own credentials; the kept principal must not travel along."""
    extension = Resilience()

    @extension.principal_loader
    def loader() -> str | None:
        return request.headers.get("X-User")

    app, _ = make_app(extension)

    @app.get("/me/trips")
    @cached(60, per_user=True)
    def trips() -> Response:
        return jsonify(user=request.headers.get("X-User"), run=next(RUNS))

    @app.post("/batch")
    def batch() -> Response:
        current_principal()  # e.g. an audit entry for the batch itself
        answers = []
        for user in request.get_json()["users"]:
            environ = dict(request.environ)
            environ.update(
                REQUEST_METHOD="GET",
                PATH_INFO="/me/trips",
                QUERY_STRING="",
                CONTENT_LENGTH="0",
                HTTP_X_USER=user,
            )
            environ["wsgi.input"] = BytesIO()
            body, _status, _headers = run_wsgi_app(app.wsgi_app, environ, buffered=True)
            answers.append(json.loads(b"".join(body))["user"])
        return jsonify(answers)

    client = app.test_client()
    answer = client.post("/batch", json={"users": ["alice", "bob"]}, headers={"X-User": "admin"})
    assert answer.json == ["alice", "bob"]


def test_per_user_entries_never_cross_users_in_one_app_context_or_with_credentials(
    make_app: MakeApp,
) -> None:
    extension = Resilience()

    @extension.principal_loader
    def loader() -> str | None:
        return request.headers.get("X-User")

    app, _ = make_app(extension)

    @app.get("/me")
    @cached(60, per_user=True)
    def me() -> Response:
        return jsonify(user=request.headers.get("X-User"), auth=request.headers.get("Authorization"))

    client = app.test_client()
    callers: list[dict[str, str]] = [
        {"X-User": "alice"},
        {"X-User": "bob"},
        {"Authorization": "Bearer a"},
        {"Authorization": "Bearer b"},
    ]
    with app.app_context():
        for _round in range(2):
            for headers in callers:
                answer = client.get("/me", headers=headers)
                assert answer.json == {"user": headers.get("X-User"), "auth": headers.get("Authorization")}


@pytest.mark.parametrize("damage", ["hash", "not-a-number"])
def test_invalidating_a_tag_whose_counter_is_damaged_invalidates_and_keeps_l2_up(
    make_app: MakeApp, redis_url: str, raw_redis: redis.Redis, key_prefix: str, damage: str
) -> None:
    """The invalidation itself meets the damaged counter (INCR refuses a hash
    or a non-integer): it must still make the tag's entries stale, without
    owing the invalidation for ever or taking L2 down."""
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url)

    @app.get("/fares")
    @cached(60, tags=["fares"])
    def fares() -> Response:
        return Response(f"fares-{next(RUNS)}")

    client = app.test_client()
    client.get("/fares")
    (tag,) = raw_redis.scan_iter(match=f"{key_prefix}*:cache:t:fares")
    raw_redis.delete(tag)
    if damage == "hash":
        raw_redis.hset(tag, "field", "value")
    else:
        raw_redis.set(tag, b"not-a-number")
    with app.app_context():
        invalidate_cache_by_tag("fares")
    cache = AppCache.of(app)
    assert cache.stats()["l2"]["available"] and cache.stats()["l2"]["pending_invalidations"] == 0
    again = client.get("/fares")
    assert again.status_code == 200 and again.headers["X-Cache"] == "MISS"  # stale: computed again


def test_an_invalidation_after_the_tag_counter_was_lost_reaches_every_l1(
    make_app: MakeApp, redis_url: str, raw_redis: redis.Redis, key_prefix: str
) -> None:
    """The counter may vanish (evicted under an allkeys policy, a FLUSHDB)
    while processes keep entries in L1 under its old version. The next
    invalidation must still make them stale, here and in every process:
    a counter recreated below the version they knew was taken for a late,
    older message and ignored."""
    writer, writer_client = tagged_app(make_app, redis_url)
    _reader, reader_client = tagged_app(make_app, redis_url)
    for client in (writer_client, reader_client, writer_client, reader_client):
        client.get("/fares")
    assert writer_client.get("/fares").headers["Cache-Status"].endswith("detail=l1")
    before = reader_client.get("/fares")
    assert before.headers["Cache-Status"].endswith("detail=l1")
    (counter,) = raw_redis.scan_iter(match=f"{key_prefix}*:cache:t:fares")
    raw_redis.delete(counter)
    with writer.app_context():
        invalidate_cache_by_tag("fares")
    fresh = writer_client.get("/fares")
    assert fresh.headers["X-Cache"] == "MISS"
    # The reader drops its L1 copy: it serves what the writer stored after the invalidation.
    assert eventually(lambda: reader_client.get("/fares").get_data() == fresh.get_data())
    assert fresh.get_data() != before.get_data()
