"""Response cache cost, side by side with bare Flask and Flask-Caching.

Run: ``pip install -e ".[test]" flask-caching && python benchmarks/bench_cache.py``
(``--redis-url``, default redis://127.0.0.1:6379/0).

Every contender serves the same trivial view (a JSON list of 20 flights)
through ``app.test_client()``, one request at a time, contenders taking turns
in each round (best of the rounds). Measured:

1. L1 hit (ours) vs a bare-Flask request and a Flask-Caching SimpleCache hit;
2. L2 hit (ours, L1 kept empty) vs a Flask-Caching RedisCache hit;
3. a miss (a new query string every request) vs bare Flask, ours with Redis
   and ours in memory only;
4. tag invalidation time with 1k, 10k and 100k keys carrying the tag.
"""

from __future__ import annotations

import argparse
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
from harness import interleaved

from flask_resilience import Resilience, cached, invalidate_cache_by_tag
from flask_resilience.cache.backends import GENERATION_LENGTH, RedisBackend
from flask_resilience.cache.entry import CacheEntry
from flask_resilience.cache.keys import DATA_VARIANT, full_key
from flask_resilience.cache.service import AppCache
from flask_resilience.state import get_state
from flask_resilience.stores.redis import batched

FLIGHTS = [{"id": f"LH{i}", "from": "FRA", "to": "LIS", "price": 100 + i} for i in range(20)]


def trivial() -> ResponseReturnValue:
    return jsonify(flights=FLIGHTS)


MANY_FLIGHTS = [{"id": f"LH{i}", "from": "FRA", "to": "LIS", "price": 100 + i} for i in range(500)]


def heavier() -> ResponseReturnValue:
    """A view with some work in it: 500 flights serialized (about 1 ms)."""
    return jsonify(flights=MANY_FLIGHTS)


def bare_app() -> Flask:
    app = Flask("bare")
    app.get("/flights")(trivial)
    app.get("/heavier")(heavier)
    return app


def ours_app(redis_url: str | None, **config: Any) -> Flask:
    app = Flask("ours")
    app.config.update(RESILIENCE_KEY_PREFIX=f"bench-{uuid.uuid4().hex[:8]}:", **config)
    if redis_url:
        app.config["RESILIENCE_REDIS_URL"] = redis_url
    Resilience(app)
    app.get("/flights")(cached(ttl=300, tags=["flights"])(trivial))
    app.get("/heavier")(cached(ttl=300, tags=["flights"])(heavier))
    store = get_state(app).redis
    if store is not None:  # L1 is used once the process listens for invalidations
        assert store.subscriber.wait_until_listening(10)
    return app


def flask_caching_app(config: dict[str, Any]) -> Flask:
    app = Flask("flask-caching")
    cache = Cache(app, config=config)
    app.get("/flights")(cache.cached(timeout=300, query_string=True)(trivial))
    app.get("/heavier")(cache.cached(timeout=300, query_string=True)(heavier))
    return app


def requester(app: Flask, path: str = "/flights") -> Callable[[], None]:
    client = app.test_client()

    def request() -> None:
        response = client.get(path)
        assert response.status_code == 200

    request()  # warm: the first request fills the cache
    return request


def missing(app: Flask) -> Callable[[], None]:
    client = app.test_client()
    numbers = itertools.count()

    def request() -> None:
        client.get(f"/flights?n={next(numbers)}")

    return request


def l2_only(app: Flask) -> Callable[[], None]:
    client = app.test_client()
    l1 = AppCache.of(app).layered.l1
    client.get("/flights")

    def request() -> None:
        l1.clear()  # O(1) on an almost empty L1; keeps every request an L2 hit
        response = client.get("/flights")
        assert response.headers["Cache-Status"].endswith("detail=l2")

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
        # every entry is stale now
        assert cache.data.get("flight:0") is None
    backend.store.delete_matching("{*}:cache:*")
    get_state(app).shutdown()
    return min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--number", type=int, default=2000)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    fc_prefix = f"bench-fc-{uuid.uuid4().hex[:8]}:"

    ours_redis = ours_app(args.redis_url)
    ours_l2 = ours_app(args.redis_url, RESILIENCE_CACHE_L1_MAX_ENTRIES=10)
    ours_memory = ours_app(None)
    simple = flask_caching_app({"CACHE_TYPE": "SimpleCache"})
    redis_cache = flask_caching_app(
        {"CACHE_TYPE": "RedisCache", "CACHE_REDIS_URL": args.redis_url, "CACHE_KEY_PREFIX": fc_prefix}
    )
    bare = bare_app()

    hits = interleaved(
        {
            "bare Flask (view runs)": requester(bare),
            "flask-resilience L1 hit": requester(ours_redis),
            "flask-resilience L2 hit": l2_only(ours_l2),
            "Flask-Caching SimpleCache hit": requester(simple),
            "Flask-Caching RedisCache hit": requester(redis_cache),
            "bare Flask, heavier view": requester(bare, "/heavier"),
            "flask-resilience L1 hit, heavier view": requester(ours_redis, "/heavier"),
            "Flask-Caching SimpleCache hit, heavier": requester(simple, "/heavier"),
        },
        args.number,
    )
    misses = interleaved(
        {
            "bare Flask (view runs)": missing(bare),
            "flask-resilience miss (Redis L2)": missing(ours_redis),
            "flask-resilience miss (memory only)": missing(ours_memory),
            "Flask-Caching RedisCache miss": missing(redis_cache),
        },
        args.number // 2,
    )
    tags = {keys: tag_invalidation_ms(args.redis_url, keys) for keys in (1_000, 10_000, 100_000)}

    client = redis.Redis.from_url(args.redis_url)
    for batch in batched(client.scan_iter(match=f"{fc_prefix}*"), 1000):
        client.delete(*batch)
    for app in (ours_redis, ours_l2, ours_memory):
        get_state(app).shutdown()

    print(f"{'per request (test client)':40} {'us':>9}")
    for name, value in {**hits, **misses}.items():
        print(f"{name:40} {value:9.1f}")
    print(f"\n{'tag invalidation':40} {'ms':>9}")
    for keys, value in tags.items():
        print(f"{f'{keys:,} tagged keys':40} {value:9.3f}")

    bare_us = hits["bare Flask (view runs)"]
    print("\nratios (targets in brackets)")
    print(f"  L1 hit / bare Flask:                 {hits['flask-resilience L1 hit'] / bare_us:.2f} [<= 0.85]")
    print(
        "  L1 hit / Flask-Caching SimpleCache:  "
        f"{hits['flask-resilience L1 hit'] / hits['Flask-Caching SimpleCache hit']:.2f} [<= 0.70]"
    )
    print(
        "  L2 hit / Flask-Caching RedisCache:   "
        f"{hits['flask-resilience L2 hit'] / hits['Flask-Caching RedisCache hit']:.2f} [<= 0.60]"
    )
    heavy = hits["flask-resilience L1 hit, heavier view"]
    print(f"  L1 hit / bare Flask, heavier view:   {heavy / hits['bare Flask, heavier view']:.2f}")
    print(
        f"  same, / SimpleCache hit:             {heavy / hits['Flask-Caching SimpleCache hit, heavier']:.2f}"
    )
    bare_miss = misses["bare Flask (view runs)"]
    redis_miss = misses["flask-resilience miss (Redis L2)"] / bare_miss
    memory_miss = misses["flask-resilience miss (memory only)"] / bare_miss
    print(f"  miss (Redis L2) / bare Flask:        {redis_miss:.2f} [<= 1.15]")
    print(f"  miss (memory only) / bare Flask:     {memory_miss:.2f}")
    print(f"  tag invalidation 100k / 1k keys:     {tags[100_000] / tags[1_000]:.2f} [<= 2.00]")


if __name__ == "__main__":
    main()
