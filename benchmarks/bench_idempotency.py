"""Idempotency cost, side by side with a bare Flask POST and a Redis round trip.

Run: ``python benchmarks/bench_idempotency.py`` (``--redis-url``).

Every contender is a POST through ``app.test_client()`` to the same small
view; contenders take turns in each round (best of the rounds):
bare Flask; a first protected request (a new key each time: claim, run,
store); a replay from the in-process memory layer; a replay from Redis (the
memory layer emptied before each); and a raw Redis round trip (PING).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import uuid

import redis
from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from harness import interleaved

from flask_resilience import Resilience, idempotent
from flask_resilience.state import get_state


def charge() -> ResponseReturnValue:
    return jsonify(charged=True, amount=42), 201


def bare_app() -> Flask:
    app = Flask("bare")
    app.post("/charge")(charge)
    return app


def ours_app(redis_url: str) -> Flask:
    app = Flask("ours")
    app.config.update(RESILIENCE_REDIS_URL=redis_url, RESILIENCE_KEY_PREFIX=f"bench-{uuid.uuid4().hex[:8]}:")
    Resilience(app)
    app.post("/charge")(idempotent()(charge))
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--number", type=int, default=1000)
    args = parser.parse_args()
    logging.disable(logging.WARNING)

    bare = bare_app().test_client()
    ours = ours_app(args.redis_url)
    client = ours.test_client()
    memory = get_state(ours).idempotency.memory
    numbers = itertools.count()
    client.post("/charge", headers={"Idempotency-Key": "replayed"})
    raw = redis.Redis.from_url(args.redis_url)

    def first() -> None:
        client.post("/charge", headers={"Idempotency-Key": f"k-{next(numbers)}"})

    def replay_memory() -> None:
        client.post("/charge", headers={"Idempotency-Key": "replayed"})

    def replay_redis() -> None:
        memory.clear()
        client.post("/charge", headers={"Idempotency-Key": "replayed"})

    timings = interleaved(
        {
            "bare Flask POST": lambda: bare.post("/charge"),
            "first protected POST": first,
            "replay from memory": replay_memory,
            "replay from Redis": replay_redis,
            "raw Redis round trip (PING)": raw.ping,
        },
        args.number,
    )
    store = get_state(ours).redis
    assert store is not None
    for key in list(store.scan("*")):
        store.delete(key)
    get_state(ours).extension.shutdown()

    print(f"{'per request (test client)':36} {'us':>8}")
    for name, value in timings.items():
        print(f"{name:36} {value:8.1f}")
    bare_us, rtt = timings["bare Flask POST"], timings["raw Redis round trip (PING)"]
    print("\nin Redis round trips above bare Flask (targets in brackets)")
    print(f"  first request:      {(timings['first protected POST'] - bare_us) / rtt:.2f} [<= 2.5]")
    print(f"  replay from Redis:  {(timings['replay from Redis'] - bare_us) / rtt:.2f} [<= 1.5]")
    print(f"  replay from memory / bare: {timings['replay from memory'] / bare_us:.2f} [<= 1.0]")


if __name__ == "__main__":
    main()
