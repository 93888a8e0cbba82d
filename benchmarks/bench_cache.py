"""Response cache cost, side by side with bare Flask and Flask-Caching.

Run: ``pip install -e ".[test]" flask-caching && python benchmarks/bench_cache.py``
(``--redis-url``, default redis://127.0.0.1:6379/0; ``--quick`` for fewer rounds).

Every contender serves the same trivial view (a JSON list of 20 flights),
called as a raw WSGI callable (``app(environ, start_response)``, the body
read to the end: no test client, whose own cost would hide ours), one
request at a time, contenders taking turns in each round (best of the rounds).

Rows (targets from issue 15):

- the extension on, no decorator, vs bare Flask;
- an L1 hit (view-level) vs bare and vs a Flask-Caching SimpleCache hit;
- a front-tier hit (``@cached(front=True)``, answered before Flask) vs bare;
- an L2 hit (L1 emptied before each) vs a Flask-Caching RedisCache hit;
- a Redis miss (a new query string each request) vs a RedisCache miss;
- the Redis yardstick: a bare view doing one ``GET``, minus bare: the cost
  of one command inside a request, printed beside every Redis figure
  (a round trip is not a stable unit on a shared machine);
- tag invalidation with 1k and 100k tagged keys (not with ``--quick``).
"""

from __future__ import annotations

import argparse
import io
import itertools
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from flask_caching import Cache
from harness import Figure, interleaved, print_figures

from flask_resilience import Resilience, cached, invalidate_cache_by_tag
from flask_resilience.cache.backends import GENERATION_LENGTH, RedisBackend
from flask_resilience.cache.entry import CacheEntry
from flask_resilience.cache.keys import DATA_VARIANT, full_key
from flask_resilience.cache.service import AppCache
from flask_resilience.state import get_state
from flask_resilience.stores.redis import batched

REDIS_URL = "redis://127.0.0.1:6379/0"
FLIGHTS = [{"id": f"LH{i}", "from": "FRA", "to": "LIS", "price": 100 + i} for i in range(20)]


def trivial() -> ResponseReturnValue:
    return jsonify(flights=FLIGHTS)


def bare_app() -> Flask:
    app = Flask("bare")
    app.get("/flights")(trivial)
    return app


def one_get_app(redis_url: str) -> Flask:
    """Bare Flask whose view runs one Redis GET: the yardstick."""
    app = Flask("one-get")
    client = redis.Redis.from_url(redis_url)

    @app.get("/flights")
    def flights() -> ResponseReturnValue:
        client.get("bench-absent-key")
        return jsonify(flights=FLIGHTS)

    return app


def ours_app(redis_url: str | None, *, decorate: bool = True, front: bool = False, **config: Any) -> Flask:
    app = Flask("ours")
    app.config.update(
        RESILIENCE_KEY_PREFIX=f"bench-{uuid.uuid4().hex[:8]}:", RESILIENCE_AUDIT_ENABLED=False, **config
    )
    if redis_url:
        app.config["RESILIENCE_REDIS_URL"] = redis_url
    Resilience(app)
    app.get("/flights")(cached(ttl=300, tags=["flights"], front=front)(trivial) if decorate else trivial)
    store = get_state(app).redis
    if store is not None:  # L1 is used once the process listens for invalidations
        assert store.subscriber.wait_until_listening(10)
    return app


def lookup_script_app(cached_app: Flask) -> Flask:
    """Bare Flask whose view runs the L2 lookup script once, on ``cached_app``'s
    stored ``/flights`` entry (a hit), and nothing else of ours: the floor of
    an L2 hit answered through that script."""
    layered = AppCache.of(cached_app).layered
    backend = layered.l2
    assert isinstance(backend, RedisBackend)
    call(cached_app, dict(BASE_ENVIRON))  # stored
    resource = "cache:/flights"
    stored = layered.l1.keys()  # a MemoryStore, not a dict: no iteration of its own
    entry_key = next(key for key in stored if key.endswith(resource))
    app = Flask("lookup-script")

    @app.get("/flights")
    def flights() -> ResponseReturnValue:
        value, _, _ = backend.lookup(entry_key, resource, "", None)
        assert value is not None
        return jsonify(flights=FLIGHTS)

    return app


def miss_scripts_app(cached_app: Flask) -> Flask:
    """Bare Flask whose view, for a new URL each time, runs the two scripts a
    Redis miss needs on ``cached_app``'s backend (the lookup that takes the
    stampede lock, then the store that releases it), with an entry encoded
    once, and nothing else of ours: the floor of a miss through them."""
    layered = AppCache.of(cached_app).layered
    backend = layered.l2
    assert isinstance(backend, RedisBackend)
    with cached_app.app_context():
        stamp = layered.stamp([], layered.trusted_since())
    now = time.time()
    value = CacheEntry("data", b'{"flights": []}', now, now + 600, stamp).encode()
    numbers = itertools.count()
    run = uuid.uuid4().hex[:6]
    app = Flask("miss-scripts")

    @app.get("/flights")
    def flights() -> ResponseReturnValue:
        resource = f"cache:/flights?r={run}&n={next(numbers)}"
        key = full_key("u=-", resource)
        _value, generation, locked = backend.lookup(key, resource, "token", 5.0)
        assert locked
        backend.put(key, resource, value, 300, generation=generation, token="token")
        return jsonify(flights=FLIGHTS)

    return app


def flask_caching_app(config: dict[str, Any]) -> Flask:
    app = Flask("flask-caching")
    cache = Cache(app, config=config)
    app.get("/flights")(cache.cached(timeout=300, query_string=True)(trivial))
    return app


def _ignore(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
    return lambda _data: None


BASE_ENVIRON = {
    "REQUEST_METHOD": "GET",
    "SCRIPT_NAME": "",
    "PATH_INFO": "/flights",
    "QUERY_STRING": "",
    "SERVER_NAME": "localhost",
    "SERVER_PORT": "80",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "HTTP_HOST": "localhost",
    "wsgi.url_scheme": "http",
    "wsgi.input": io.BytesIO(b""),
    "wsgi.errors": io.StringIO(),
    "wsgi.multithread": False,
    "wsgi.multiprocess": False,
    "wsgi.run_once": False,
    "wsgi.version": (1, 0),
}


def call(app: Flask, environ: dict[str, Any]) -> bytes:
    """One request through ``app`` as a WSGI server calls it; the body read to the end."""
    body = app(environ, _ignore)
    try:
        return b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()


def requester(app: Flask) -> Callable[[], None]:
    def request() -> None:
        call(app, dict(BASE_ENVIRON))

    request()  # warm: the first requests fill the caches
    request()
    return request


def missing(app: Flask) -> Callable[[], None]:
    numbers = itertools.count()
    run = uuid.uuid4().hex[:6]

    def request() -> None:
        call(app, dict(BASE_ENVIRON, QUERY_STRING=f"r={run}&n={next(numbers)}"))

    return request


def l2_only(app: Flask) -> Callable[[], None]:
    l1 = AppCache.of(app).layered.l1
    call(app, dict(BASE_ENVIRON))

    def request() -> None:
        l1.clear()  # O(1) on an almost empty L1; keeps every request an L2 hit
        call(app, dict(BASE_ENVIRON))

    return request


def tag_invalidation_ms(redis_url: str, keys: int) -> float:
    app = ours_app(redis_url)
    cache = AppCache.of(app)
    layered = cache.layered
    backend = layered.l2
    assert isinstance(backend, RedisBackend)
    with app.app_context():
        stamp = layered.stamp(["flights"], layered.trusted_since())
        now = time.time()
        value = CacheEntry("data", b'{"flights": []}', now, now + 600, stamp).encode()
        generation = b"0" * GENERATION_LENGTH
        pipe = backend.store.client.pipeline(transaction=False)
        for index in range(keys):
            resource = f"flight:{index}"
            entry_name, _, generation_name = backend.names(full_key(DATA_VARIANT, resource), resource)
            pipe.set(generation_name, generation, px=600_000)
            pipe.set(entry_name, generation + value, px=600_000)
            if index % 5000 == 4999:
                pipe.execute()
        pipe.execute()
        assert cache.data.get("flight:0") == {"flights": []}
        timings = []
        for _ in range(5):
            started = time.perf_counter()
            invalidate_cache_by_tag("flights")
            timings.append((time.perf_counter() - started) * 1000)
        assert cache.data.get("flight:0") is None  # every entry is stale now
    backend.store.delete_matching("{*}:cache:*")
    get_state(app).shutdown()
    return min(timings)


def _check(apps: dict[str, Flask]) -> None:
    """Each contender answers as it claims to (a hit is a hit, from the layer named)."""
    for detail, app in apps.items():
        headers: list[tuple[str, str]] = []

        def keep(
            status: str, sent: list[tuple[str, str]], exc_info: Any = None, into: list[Any] = headers
        ) -> Any:
            into.extend(sent)
            return lambda _data: None

        body = app(dict(BASE_ENVIRON), keep)
        b"".join(body)
        status = dict(headers).get("Cache-Status", "")
        assert status.endswith(f"detail={detail}"), (detail, status)


def figures(quick: bool = False, redis_url: str = REDIS_URL) -> list[Figure]:
    number, rounds = (300, 3) if quick else (2000, 7)
    logging.disable(logging.WARNING)
    fc_prefix = f"bench-fc-{uuid.uuid4().hex[:8]}:"
    bare = bare_app()
    plain = ours_app(redis_url, decorate=False)
    view_level = ours_app(redis_url)
    front = ours_app(redis_url, front=True)
    l2 = ours_app(redis_url, RESILIENCE_CACHE_L1_MAX_ENTRIES=10)
    miss = ours_app(redis_url)
    simple = flask_caching_app({"CACHE_TYPE": "SimpleCache"})
    redis_cache = flask_caching_app(
        {"CACHE_TYPE": "RedisCache", "CACHE_REDIS_URL": redis_url, "CACHE_KEY_PREFIX": fc_prefix}
    )
    one_get = one_get_app(redis_url)
    contenders = {
        "bare": requester(bare),
        "bare twin": requester(bare_app()),
        "no decorators": requester(plain),
        "L1 hit": requester(view_level),
        "front hit": requester(front),
        "SimpleCache hit": requester(simple),
        "L2 hit": l2_only(l2),
        "RedisCache hit": requester(redis_cache),
        "one GET": requester(one_get),
        "lookup script": requester(lookup_script_app(l2)),
        "miss scripts": requester(miss_scripts_app(miss)),
        "Redis miss": missing(miss),
        "RedisCache miss": missing(redis_cache),
    }
    _check({"l1": view_level, "front": front})
    t = interleaved(contenders, number, rounds)
    tags = {} if quick else {keys: tag_invalidation_ms(redis_url, keys) for keys in (1_000, 100_000)}

    client = redis.Redis.from_url(redis_url)
    for batch in batched(client.scan_iter(match=f"{fc_prefix}*"), 1000):
        client.delete(*batch)
    for app in (plain, view_level, front, l2, miss):
        state = get_state(app)
        if state.redis is not None:
            state.redis.delete_matching("*")
        state.shutdown()

    yardstick = t["one GET"] - t["bare"]
    note = f"1 Redis GET in a request = {yardstick:.1f} us"

    def row(
        figure: str, ours: str, peer: str, limit: float, *, note: str = "", at_most: bool = True
    ) -> Figure:
        ratio = t[ours] / t[peer]
        met = ratio <= limit if at_most else ratio >= limit
        target = f"{'<=' if at_most else '>='} {limit}x"
        return Figure(figure, t[ours], t[peer], ratio, target, met, note=note)

    rows = [
        row("cache: extension on, no decorators / bare (raw WSGI)", "no decorators", "bare", 1.05),
        Figure(
            "noise: a second bare app / bare (raw WSGI)",
            t["bare twin"],
            t["bare"],
            t["bare twin"] / t["bare"],
            "-",
            None,
            note="two identical apps measured alike in this run: how far apart the same cost lands",
        ),
        row("cache: L1 hit (view-level) / bare", "L1 hit", "bare", 0.9),
        row("cache: L1 hit / Flask-Caching SimpleCache hit", "L1 hit", "SimpleCache hit", 0.9),
        row("cache: front-tier hit / bare", "front hit", "bare", 0.2),
        row("cache: L2 hit / Flask-Caching RedisCache hit", "L2 hit", "RedisCache hit", 1.0, note=note),
        row(
            "cache: Redis miss / Flask-Caching RedisCache miss",
            "Redis miss",
            "RedisCache miss",
            1.0,
            note=note,
        ),
        Figure("cache: Redis yardstick (view with 1 GET - bare)", yardstick, None, None, "-", None),
        Figure(
            "floor: bare view + our L2 lookup script / RedisCache hit",
            t["lookup script"],
            t["RedisCache hit"],
            t["lookup script"] / t["RedisCache hit"],
            "-",
            None,
            note="the one EVALSHA an L2 hit needs (generation check, stampede lock), nothing else of ours",
        ),
        Figure(
            "floor: bare view + our lookup and store scripts / RedisCache miss",
            t["miss scripts"],
            t["RedisCache miss"],
            t["miss scripts"] / t["RedisCache miss"],
            "-",
            None,
            note="the two EVALSHAs a Redis miss needs (lock taken, entry stored, lock released), no more",
        ),
    ]
    if tags:
        ratio = tags[100_000] / tags[1_000]
        rows.append(
            Figure(
                "cache: tag invalidation, 100k / 1k tagged keys",
                tags[100_000],
                tags[1_000],
                ratio,
                "<= 2.0x",
                ratio <= 2.0,
                unit="ms",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows = figures(args.quick, args.redis_url)
    print("per request, raw WSGI, best of interleaved rounds")
    print_figures(rows)
    for row in rows:
        if row.note:
            print(f"  {row.figure}: {row.note}")
            break


if __name__ == "__main__":
    main()
