"""Idempotency cost, side by side with a bare Flask POST and one Redis command.

Run: ``python benchmarks/bench_idempotency.py`` (``--redis-url``).

Every contender is a POST to the same small view, calling the app as a raw
WSGI callable (no test client); contenders take turns in each round (best of
the rounds):

- bare Flask (no extension);
- a bare Flask view that runs one Redis ``GET``: minus bare, this is the
  in-request cost of one Redis command, the unit the others are measured in;
- a first protected request (a new key each time: claim, run, store);
- a replay from Redis (the process's memory layer emptied before each);
- a replay from the in-process memory layer.
"""

from __future__ import annotations

import argparse
import io
import itertools
import logging
import uuid
from collections.abc import Callable
from typing import Any

import redis
from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from harness import interleaved

from flask_resilience import Resilience, idempotent
from flask_resilience.idempotency.service import AppIdempotency
from flask_resilience.state import get_state


def charge() -> ResponseReturnValue:
    return jsonify(charged=True, amount=42), 201


def bare_app() -> Flask:
    app = Flask("bare")
    app.post("/charge")(charge)
    return app


def one_get_app(redis_url: str) -> Flask:
    app = Flask("one-get")
    client = redis.Redis.from_url(redis_url)

    @app.post("/charge")
    def charge_after_get() -> ResponseReturnValue:
        client.get("bench-absent-key")
        return jsonify(charged=True, amount=42), 201

    return app


def ours_app(redis_url: str) -> Flask:
    app = Flask("ours")
    app.config.update(
        RESILIENCE_REDIS_URL=redis_url,
        RESILIENCE_KEY_PREFIX=f"bench-{uuid.uuid4().hex[:8]}:",
        RESILIENCE_AUDIT_ENABLED=False,
    )
    Resilience(app)
    app.post("/charge")(idempotent()(charge))
    return app


def _ignore(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
    return lambda _data: None


def poster(app: Flask, key: Callable[[], str | None] = lambda: None) -> Callable[[], None]:
    """One POST /charge through ``app.wsgi_app``, the body read to the end."""
    base = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/charge",
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_LENGTH": "0",
        "wsgi.url_scheme": "http",
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }
    wsgi = app.wsgi_app

    def post() -> None:
        environ = dict(base, **{"wsgi.input": io.BytesIO(b"")})
        value = key()
        if value is not None:
            environ["HTTP_IDEMPOTENCY_KEY"] = value
        body = wsgi(environ, _ignore)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()

    return post


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--number", type=int, default=1000)
    args = parser.parse_args()
    logging.disable(logging.WARNING)

    ours = ours_app(args.redis_url)
    state = get_state(ours)
    numbers = itertools.count()
    replayed = poster(ours, lambda: "replayed")
    replayed()
    assert state.redis is not None
    state.redis.subscriber.wait_until_listening()
    replayed()  # now kept in this process's memory layer
    memory = AppIdempotency.of(ours).memory
    first = poster(ours, lambda: f"k-{next(numbers)}")

    def replay_redis() -> None:
        memory.clear()
        replayed()

    timings = interleaved(
        {
            "bare Flask POST": poster(bare_app()),
            "bare + one Redis GET": poster(one_get_app(args.redis_url)),
            "first protected POST": first,
            "replay from Redis": replay_redis,
            "replay from memory": replayed,
        },
        args.number,
    )
    state.redis.delete_matching("*")
    state.shutdown()

    print(f"{'per request (raw WSGI)':36} {'us':>8}")
    for name, value in timings.items():
        print(f"{name:36} {value:8.1f}")
    bare_us = timings["bare Flask POST"]
    unit = timings["bare + one Redis GET"] - bare_us
    print(f"\nunit: one Redis command in a request = {unit:.1f} us")
    print("above bare Flask, in units (targets in brackets)")
    print(f"  first request:       {(timings['first protected POST'] - bare_us) / unit:.2f} [<= 2.5]")
    print(f"  replay from Redis:   {(timings['replay from Redis'] - bare_us) / unit:.2f} [<= 1.5]")
    print(f"  replay from memory:  {(timings['replay from memory'] - bare_us) / unit:.2f} [<= 0.5]")
    print(f"  replay from memory / bare: {timings['replay from memory'] / bare_us:.2f}")


if __name__ == "__main__":
    main()
