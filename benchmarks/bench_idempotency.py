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
- a replay from the in-process memory layer;
- the floor of any replay served inside Flask: the extension on, a view
  returning a response built once.
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
from flask import Flask, Response, jsonify
from flask.typing import ResponseReturnValue
from harness import Figure, interleaved, print_figures

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


def floor_app(redis_url: str) -> Flask:
    """The extension on (as in ``ours_app``), a view answering a response built
    once: what no replay served inside Flask can go below."""
    app = Flask("floor")
    app.config.update(
        RESILIENCE_REDIS_URL=redis_url,
        RESILIENCE_KEY_PREFIX=f"bench-{uuid.uuid4().hex[:8]}:",
        RESILIENCE_AUDIT_ENABLED=False,
    )
    Resilience(app)
    with app.app_context():
        body = jsonify(charged=True, amount=42).get_data()

    @app.post("/charge")
    def prebuilt() -> ResponseReturnValue:
        return Response(body, status=201, mimetype="application/json")

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


REDIS_URL = "redis://127.0.0.1:6379/0"


def measure(redis_url: str, number: int, rounds: int = 7) -> dict[str, float]:
    """Microseconds per request of each contender, one interleaved run."""
    ours = ours_app(redis_url)
    state = get_state(ours)
    numbers = itertools.count()
    replayed = poster(ours, lambda: "replayed")
    replayed()
    assert state.redis is not None
    state.redis.subscriber.wait_until_listening()
    replayed()  # now kept in this process's memory layer
    memory = AppIdempotency.of(ours).memory
    first = poster(ours, lambda: f"k-{next(numbers)}")
    floor = floor_app(redis_url)

    def replay_redis() -> None:
        memory.clear()
        replayed()

    try:
        return interleaved(
            {
                "bare Flask POST": poster(bare_app()),
                "bare + one Redis GET": poster(one_get_app(redis_url)),
                "first protected POST": first,
                "replay from Redis": replay_redis,
                "replay from memory": replayed,
                "floor: extension, pre-built response": poster(floor),
            },
            number,
            rounds=rounds,
        )
    finally:
        state.redis.delete_matching("*")
        state.shutdown()
        get_state(floor).shutdown()


def rows(timings: dict[str, float]) -> list[Figure]:
    """The targets: above bare, in in-request Redis commands plus an allowance."""
    bare = timings["bare Flask POST"]
    unit = timings["bare + one Redis GET"] - bare
    command = f"1 cmd = {unit:.1f} us (a view doing one GET, minus bare, same run)"

    def budgeted(name: str, figure: str, commands: int, allowance: float) -> Figure:
        ours = timings[name]
        budget = bare + commands * unit + allowance
        return Figure(
            figure,
            ours,
            bare,
            (ours - bare) / unit,
            f"<= bare + {commands} cmd + {allowance:.0f} us = {budget:.1f} us",
            ours <= budget,
            note=f"ratio = (ours - bare) in commands; {command}",
        )

    memory = timings["replay from memory"]
    return [
        Figure("one Redis command inside a request (the unit)", unit, None, None, "-", None, note=command),
        budgeted("first protected POST", "idempotency first request (raw WSGI)", 2, 20),
        budgeted("replay from Redis", "idempotency replay from Redis (raw WSGI)", 1, 15),
        Figure(
            "idempotency replay from memory vs bare POST (raw WSGI)",
            memory,
            bare,
            memory / bare,
            "<= 1.05",
            memory / bare <= 1.05,
        ),
        Figure(
            "floor: extension on, view returning a pre-built response",
            timings["floor: extension, pre-built response"],
            bare,
            timings["floor: extension, pre-built response"] / bare,
            "-",
            None,
            note="no replay answered inside Flask can cost less than this",
        ),
    ]


def figures(quick: bool = False) -> list[Figure]:
    logging.disable(logging.WARNING)
    return rows(measure(REDIS_URL, 200 if quick else 2000, rounds=3 if quick else 7))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--number", type=int, default=2000)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    timings = measure(args.redis_url, args.number)
    print(f"{'per request (raw WSGI)':36} {'us':>8}")
    for name, value in timings.items():
        print(f"{name:36} {value:8.1f}")
    print()
    print_figures(rows(timings))


if __name__ == "__main__":
    main()
