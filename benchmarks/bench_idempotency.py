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
  returning a response built once;
- the floors of the Redis paths: a bare view sending exactly the commands a
  first request (claim, complete) or a replay (claim that reads the record)
  sends, with values built once, and nothing else of ours;
- memory mode (no Redis): a first request with the record store empty and
  with it full (``RESILIENCE_IDEMPOTENCY_MEMORY_ENTRIES`` records), whose
  ratio shows whether a write costs more as the store fills.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import redis
from flask import Flask, Response, jsonify, make_response
from flask.typing import ResponseReturnValue
from harness import Figure, interleaved, print_figures

from flask_resilience import Resilience, idempotent
from flask_resilience.idempotency import views
from flask_resilience.idempotency.protocol import Completed, fingerprint
from flask_resilience.idempotency.records import RedisRecords, completed_value, in_flight_value, new_owner
from flask_resilience.idempotency.service import AppIdempotency
from flask_resilience.responses import HeaderPolicy, StoredResponse
from flask_resilience.state import get_state
from flask_resilience.stats import Counters
from flask_resilience.stores.redis import RedisStore


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


def commands_floor_app(redis_url: str, *, replay: bool) -> Flask:
    """A bare view sending the commands of a first request (``SET NX PX GET``
    claim, then the completing script) or of a replay from Redis (the claim,
    which reads the stored record back), with values built once."""
    app = Flask("commands-floor")
    store = RedisStore(redis.Redis.from_url(redis_url), f"bench-{uuid.uuid4().hex[:8]}:")
    records = RedisRecords(store, set_get=True)
    owner = new_owner()
    print_ = fingerprint("POST", "/charge", "", None, b"")
    claimed = in_flight_value(print_, owner)
    with app.app_context():
        stored = StoredResponse.capture(
            make_response(charge()), HeaderPolicy.denying("X-Request-ID"), time.time()
        )
    done = completed_value(Completed(print_, time.time() + 86_400, stored))
    numbers = itertools.count()
    if replay:
        first = records.claim("s:replayed:r", print_, 30)
        assert first.owner is not None
        records.complete("s:replayed:r", first.claimed, done, 86_400)
    body = stored.to_response().get_data()

    @app.post("/charge")
    def commands() -> ResponseReturnValue:
        if replay:
            store.set_absent_or_get(store.key("idem", "s:replayed:r"), claimed, 30)
            return Response(body, status=201, mimetype="application/json")
        where = f"s:{next(numbers)}:r"
        store.set_absent_or_get(store.key("idem", where), claimed, 30)
        records.complete(where, claimed, done, 86_400)
        return charge()

    app.extensions["bench-store"] = store
    return app


def memory_app(*, full: bool) -> Flask:
    """The extension without Redis (records in this process), its store
    empty, or filled to ``RESILIENCE_IDEMPOTENCY_MEMORY_ENTRIES`` records."""
    app = Flask("memory-full" if full else "memory-empty")
    app.config.update(RESILIENCE_AUDIT_ENABLED=False, RESILIENCE_IDEMPOTENCY_MEMORY_ENTRIES=10_000)
    Resilience(app)
    app.post("/charge")(idempotent()(charge))
    if full:
        fill = poster(app, lambda: f"fill-{next(_fill_numbers)}")
        for _ in range(10_000):
            fill()
    return app


_fill_numbers = itertools.count()


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
    first_floor = commands_floor_app(redis_url, replay=False)
    replay_floor = commands_floor_app(redis_url, replay=True)
    numbers_memory = itertools.count()
    memory_empty = poster(memory_app(full=False), lambda: f"e-{next(numbers_memory)}")
    memory_full = poster(memory_app(full=True), lambda: f"f-{next(numbers_memory)}")

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
                "floor: bare + claim + complete": poster(first_floor),
                "floor: bare + claim reading the record": poster(replay_floor),
                "memory mode, first POST, store empty": memory_empty,
                "memory mode, first POST, store full": memory_full,
            },
            number,
            rounds=rounds,
        )
    finally:
        for app in (first_floor, replay_floor):
            app.extensions["bench-store"].delete_matching("*")
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
            "floor: bare view + the claim and complete commands (first request)",
            timings["floor: bare + claim + complete"],
            bare,
            (timings["floor: bare + claim + complete"] - bare) / unit,
            "-",
            None,
            note=f"the two commands a first request needs, values built once; ratio in commands, {command}",
        ),
        Figure(
            "floor: bare view + the claim command reading the record (replay from Redis)",
            timings["floor: bare + claim reading the record"],
            bare,
            (timings["floor: bare + claim reading the record"] - bare) / unit,
            "-",
            None,
            note=f"the one command a replay from Redis needs, nothing else; ratio in commands, {command}",
        ),
        Figure(
            "idempotency memory mode: first request, store full / store empty",
            timings["memory mode, first POST, store full"],
            timings["memory mode, first POST, store empty"],
            timings["memory mode, first POST, store full"] / timings["memory mode, first POST, store empty"],
            "-",
            None,
            note="no Redis; full = 10,000 records kept (a write must not scan them)",
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


_STRIPPED_KEY = ["replayed"]  # the key the stand-in for the key check answers with


@contextlib.contextmanager
def protocol_steps_removed() -> Iterator[None]:
    """The protocol's own per-request steps replaced by constants: resolving
    the principal, fingerprinting the request, checking the key and counting.
    What a replay costs without them is the plumbing no replay can skip."""
    print_ = fingerprint("POST", "/charge", "", None, b"")
    replaced: dict[tuple[Any, str], Any] = {
        (views, "dispatch_principal"): lambda: None,
        (views, "fingerprint"): lambda *_args, **_kwargs: print_,
        (views, "_key"): lambda *_args: _STRIPPED_KEY[0],
        (Counters, "count"): lambda *_args: None,
    }
    saved = {where: getattr(*where) for where in replaced}
    for (owner, name), stand_in in replaced.items():
        setattr(owner, name, stand_in)
    try:
        yield
    finally:
        for (owner, name), original in saved.items():
            setattr(owner, name, original)


def ablation(redis_url: str, number: int, rounds: int) -> dict[str, float]:
    """A memory replay with the protocol's steps removed, beside bare and the
    pre-built floor (its own interleaved run: the steps are module functions)."""
    ours = ours_app(redis_url)
    state = get_state(ours)
    replayed = poster(ours, lambda: "replayed")
    replayed()
    assert state.redis is not None
    state.redis.subscriber.wait_until_listening()
    replayed()
    floor = floor_app(redis_url)
    memory = AppIdempotency.of(ours).memory

    def replay_redis() -> None:
        memory.clear()
        replayed()

    numbers = itertools.count()
    first_of = poster(ours, lambda: None)

    def first_request() -> None:
        _STRIPPED_KEY[0] = f"first-{next(numbers)}"  # a new key each time: claimed, run, completed
        try:
            first_of()
        finally:
            _STRIPPED_KEY[0] = "replayed"

    try:
        with protocol_steps_removed():
            return interleaved(
                {
                    "bare Flask POST": poster(bare_app()),
                    "bare + one Redis GET": poster(one_get_app(redis_url)),
                    "floor: extension, pre-built response": poster(floor),
                    "replay from memory, protocol steps removed": replayed,
                    "replay from Redis, protocol steps removed": replay_redis,
                    "first request, protocol steps removed": first_request,
                },
                number,
                rounds=rounds,
            )
    finally:
        state.redis.delete_matching("*")
        state.shutdown()
        get_state(floor).shutdown()


def ablation_rows(timings: dict[str, float]) -> list[Figure]:
    bare = timings["bare Flask POST"]
    stripped = timings["replay from memory, protocol steps removed"]
    unit = timings["bare + one Redis GET"] - bare
    from_redis = timings["replay from Redis, protocol steps removed"]
    first = timings["first request, protocol steps removed"]
    return [
        Figure(
            "floor: first request without principal, fingerprint, key check, counting",
            first,
            bare,
            (first - bare) / unit,
            f"(target: bare + 2 cmd + 20 us = {bare + 2 * unit + 20:.1f} us)",
            None,
            note=f"ratio = (ours - bare) in commands; 1 cmd = {unit:.1f} us in the same run",
        ),
        Figure(
            "floor: replay from Redis without principal, fingerprint, key check, counting",
            from_redis,
            bare,
            (from_redis - bare) / unit,
            f"(target: bare + 1 cmd + 15 us = {bare + unit + 15:.1f} us)",
            None,
            note=f"ratio = (ours - bare) in commands; 1 cmd = {unit:.1f} us in the same run",
        ),
        Figure(
            "floor: memory replay without principal, fingerprint, key check, counting / bare POST",
            stripped,
            bare,
            stripped / bare,
            "-",
            None,
            note="those four steps replaced by constants (bench_idempotency.protocol_steps_removed); "
            f"same run: pre-built response {timings['floor: extension, pre-built response']:.1f} us",
        ),
    ]


def figures(quick: bool = False) -> list[Figure]:
    logging.disable(logging.WARNING)
    number, rounds = (200, 3) if quick else (2000, 7)
    return rows(measure(REDIS_URL, number, rounds=rounds)) + ablation_rows(
        ablation(REDIS_URL, number, rounds)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--number", type=int, default=2000)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    timings = measure(args.redis_url, args.number)
    stripped = ablation(args.redis_url, args.number, 7)
    print(f"{'per request (raw WSGI)':36} {'us':>8}")
    for name, value in {**timings, **stripped}.items():
        print(f"{name:36} {value:8.1f}")
    print()
    print_figures(rows(timings) + ablation_rows(stripped))


if __name__ == "__main__":
    main()
