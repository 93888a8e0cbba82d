"""Hostile review of the last two commits (c8da2b3, 36a8098): redaction next
to words, the unredacted purge record, the front tier's reply cache, the
request id, sampled L1 timings and the acquire/release locks."""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, Response, request
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import update

from flask_resilience import AuditEventType, cached, invalidate_cache_by_tag, log_data_change
from flask_resilience.audit.redact import Redactor, luhn_valid
from flask_resilience.audit.service import AppAudit
from flask_resilience.audit.table import audit_log
from flask_resilience.cache.layered import SAMPLE
from flask_resilience.cache.service import AppCache
from flask_resilience.stats import Counters
from flask_resilience.stores.memory import MemoryStore
from tests.audit_support import database, stored, verify_ok  # noqa: F401 - a fixture
from tests.clock import FakeClock, eventually
from tests.conftest import MakeApp

# -- 1. redaction --------------------------------------------------------------------------


def _luhn_tail(prefix: str) -> str:
    """``prefix`` plus the one check digit that makes it pass Luhn."""
    return next(prefix + str(d) for d in range(10) if luhn_valid(prefix + str(d)))


def test_a_uuid_hex_id_is_never_altered() -> None:
    tail = _luhn_tail("912345678901234")  # group 4 (variant 9) + group 5, 16 decimal digits
    hex_id = f"a1b2c3d4-e5f6-4abc-{tail[:4]}-{tail[4:]}"
    assert uuid.UUID(hex_id).version == 4
    redactor = Redactor()
    assert redactor.text(hex_id) == hex_id
    fields = redactor.fields({"event_type": "UPDATE", "request_id": hex_id, "details": {"order": hex_id}})
    assert fields["request_id"] == hex_id
    assert fields["details"] == {"order": hex_id}


@given(st.uuids(version=4))
@settings(max_examples=300)
def test_random_uuids_are_kept(value: uuid.UUID) -> None:
    """Most UUIDs hold no decimal run long enough: kept (the defect above is the rare one)."""
    text = str(value)
    groups = text.split("-")
    if not (groups[3] + groups[4]).isdigit():
        assert Redactor().text(text) == text


def test_a_card_after_a_quantity_is_masked() -> None:
    redactor = Redactor()
    for note in (
        "qty 2 4111 1111 1111 1111",
        "order 12 4111-1111-1111-1111 paid",
        "4111 1111 1111 1111 2 items",
    ):
        assert "[CARD ****1111]" in redactor.text(note), note


def test_a_card_inside_a_non_ascii_word_is_left_alone() -> None:
    for word in ("é4111111111111111", "4111111111111111ñ", "ß4111111111111111"):
        assert Redactor().text(word) == word


@given(
    st.sampled_from([" ", "-"]),
    st.sampled_from(["", "card ", "x: ", "(", "_"]),
    st.sampled_from(["", " ok", ".", ")", "_"]),
)
def test_a_spaced_card_with_non_word_neighbours_is_masked(sep: str, before: str, after: str) -> None:
    card = sep.join(["4111", "1111", "1111", "1111"])
    assert Redactor().text(f"{before}{card}{after}") == f"{before}[CARD ****1111]{after}"


def test_secrets_are_still_masked_next_to_words() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlMTIz"
    redactor = Redactor()
    assert redactor.value({"Password": "p", "x-api-key": "k"}) == {
        "Password": "[REDACTED]",
        "x-api-key": "[REDACTED]",
    }
    assert "[REDACTED]" in redactor.text(f"Authorization: Bearer abc{jwt}")
    assert redactor.text(f"token={jwt};") == "token=[REDACTED];"


# -- 2. purge and verify --------------------------------------------------------------------


def _aged_app(make_app: MakeApp, url: str, **config: Any) -> Flask:
    app, _ = make_app(RESILIENCE_AUDIT_HMAC_KEY="chain-key", RESILIENCE_AUDIT_DATABASE_URI=url, **config)
    with app.app_context():
        for index in range(6):
            log_data_change(AuditEventType.UPDATE, "fare", index, {"price": index})
        audit = AppAudit.of(app)
        audit.writer.flush()
        with audit.engine().begin() as connection:
            old = datetime(2020, 1, 1)
            connection.execute(
                update(audit_log).where(audit_log.c.seq <= 4).values(occurred_at=old, logged_at=old)
            )
    return app


def _purge_rows(url: str) -> list[dict[str, Any]]:
    return [row for row in stored(url) if row["event_type"] == AuditEventType.ADMIN]


def test_purge_then_verify_with_a_hook_that_rewrites_everything(make_app: MakeApp, database: str) -> None:  # noqa: F811
    def hook(fields: dict[str, Any]) -> dict[str, Any]:
        return {**fields, "message": "hooked", "details": {"hooked": True}}

    app = _aged_app(make_app, database, RESILIENCE_AUDIT_REDACTOR=hook)
    result = app.test_cli_runner().invoke(
        args=["resilience", "audit", "purge", "--older-than", "90d", "--yes"]
    )
    assert result.exit_code == 0, result.output
    verify_ok(app)
    (purge_row,) = _purge_rows(database)
    assert purge_row["message"] == "audit purge of entries older than 90d"


def test_the_purge_record_escapes_what_the_operator_typed(make_app: MakeApp, database: str) -> None:  # noqa: F811
    app = _aged_app(make_app, database)
    older_than = "90d\r\n"  # accepted: parse_age strips it
    result = app.test_cli_runner().invoke(
        args=["resilience", "audit", "purge", "--older-than", older_than, "--yes"]
    )
    assert result.exit_code == 0, result.output
    (purge_row,) = _purge_rows(database)
    assert "\r" not in purge_row["message"] and "\n" not in purge_row["message"]


# -- 3. front tier ---------------------------------------------------------------------------


def test_front_replies_do_not_pin_bodies_l1_evicted(make_app: MakeApp) -> None:
    max_bytes = 1024 * 1024
    app, _ = make_app(RESILIENCE_CACHE_L1_MAX_BYTES=max_bytes)
    size = 256 * 1024

    @app.get("/big/<int:n>")
    @cached(ttl=300, front=True)
    def big(n: int) -> Response:
        return Response(bytes([n % 256]) * size, mimetype="application/octet-stream")

    client = app.test_client()
    client.get("/big/0")  # warm imports before measuring
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for n in range(1, 41):
            assert client.get(f"/big/{n}").status_code == 200
            hit = client.get(f"/big/{n}")
            assert hit.headers["Cache-Status"].endswith("detail=front")
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert retained < 4 * max_bytes, retained


def test_front_hit_after_change_never_serves_old_reply(make_app: MakeApp) -> None:
    app, _ = make_app()
    version = {"n": 0}

    @app.get("/v")
    @cached(ttl=300, tags=["v"], front=True)
    def v() -> Response:
        version["n"] += 1
        n = version["n"]
        return Response("x" * n, status=200, headers={"X-Version": str(n), "ETag": f'"e{n}"'})

    client = app.test_client()
    for round_ in range(1, 4):
        client.get("/v")
        hit = client.get("/v")
        assert hit.headers["Cache-Status"].endswith("detail=front")
        assert hit.headers["X-Version"] == str(round_)
        assert hit.headers["Content-Length"] == str(round_)
        assert hit.data == b"x" * round_
        not_modified = client.get("/v", headers={"If-None-Match": f'"e{round_}"'})
        assert not_modified.status_code == 304
        assert "Content-Length" not in not_modified.headers and "Content-Type" not in not_modified.headers
        head = client.head("/v")
        assert head.data == b"" and head.headers["Content-Length"] == str(round_)
        ids = {client.get("/v").headers["X-Request-ID"] for _ in range(3)}
        assert len(ids) == 3
        with app.app_context():
            invalidate_cache_by_tag("v")


# -- 4. request id ---------------------------------------------------------------------------


def test_app_set_request_id_is_replaced_in_any_case(make_app: MakeApp) -> None:
    app, _ = make_app(PROPAGATE_EXCEPTIONS=False)

    @app.get("/own")
    def own() -> Response:
        return Response("x", headers=[("x-REQUEST-id", "app"), ("X-Request-Id", "app2")])

    @app.get("/boom")
    def boom() -> Response:
        raise RuntimeError("boom")

    client = app.test_client()
    response = client.get("/own", headers={"X-Request-ID": "abc:1.2-3_"})
    values = [v for k, v in response.headers.items() if k.lower() == "x-request-id"]
    assert values == ["abc:1.2-3_"]
    assert client.get("/own", headers={"X-Request-ID": "a" * 128}).headers["X-Request-ID"] == "a" * 128
    assert len(client.get("/own", headers={"X-Request-ID": "a" * 129}).headers["X-Request-ID"]) == 32
    failing = client.get("/boom", headers={"X-Request-ID": "err-1"})
    assert failing.status_code == 500 and failing.headers["X-Request-ID"] == "err-1"
    missing = client.get("/nope", headers={"X-Request-ID": "bad id"})
    assert missing.status_code == 404
    (new,) = [v for k, v in missing.headers.items() if k.lower() == "x-request-id"]
    assert len(new) == 32 and int(new, 16) >= 0


def test_request_ids_unique_across_forks_and_threads(make_app: MakeApp) -> None:
    app, _ = make_app()

    @app.get("/id")
    def ident() -> str:
        return "ok"

    def ids(count: int) -> list[str]:
        client = app.test_client()
        return [client.get("/id").headers["X-Request-ID"] for _ in range(count)]

    app.test_client().get("/id")  # the parent drew from its generator before forking
    readers = []
    for _ in range(3):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(read)
            os.write(write, ",".join(ids(20)).encode())
            os._exit(0)
        os.close(write)
        readers.append((pid, read))
    seen: list[str] = []
    for pid, read in readers:
        with os.fdopen(read) as pipe:
            seen += pipe.read().split(",")
        os.waitpid(pid, 0)
    results: list[list[str]] = []
    threads = [threading.Thread(target=lambda: results.append(ids(50))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seen += [i for chunk in results for i in chunk]
    assert len(seen) == 3 * 20 + 4 * 50
    assert len(set(seen)) == len(seen)


# -- 5/6. counters, sampled timings, the L1 store ---------------------------------------------


def _hammer(threads: int, work: Callable[[int], None]) -> None:
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        barrier.wait()
        try:
            work(index)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=60)
        assert not thread.is_alive(), "deadlock"
    assert not errors, errors


def test_counters_lose_nothing_under_threads() -> None:
    counters = Counters("reasons")

    def work(index: int) -> None:
        for _ in range(20_000):
            counters.count("hits", f"ep{index % 3}")
            counters.count("hits")

    _hammer(8, work)
    snap = counters.snapshot()
    assert snap["hits"] == 8 * 40_000
    assert sum(values["hits"] for values in snap["endpoints"].values()) == 8 * 20_000
    assert not counters._lock.locked()


def test_counters_release_the_lock_on_an_exception() -> None:
    counters = Counters()
    with pytest.raises(TypeError):
        counters.count(["unhashable"], None)  # type: ignore[arg-type]
    assert not counters._lock.locked()
    counters.count("after")
    assert counters.snapshot()["after"] == 1


def test_memory_store_under_threads_and_expiry() -> None:
    now = [0.0]
    store: MemoryStore[bytes] = MemoryStore(max_entries=64, max_bytes=4096, clock=lambda: now[0])

    def work(index: int) -> None:
        for step in range(5000):
            key = f"k{(index * 7 + step) % 100}"
            if step % 3 == 0:
                store.set(key, b"v" * (step % 50), ttl=1.0)
            elif step % 7 == 0:
                store.delete(key)
            else:
                value = store.get(key)
                assert value is None or value == b"v" * len(value)
            if index == 0 and step % 100 == 0:
                now[0] += 0.5

    _hammer(8, work)
    assert not store._lock.locked()
    now[0] += 10
    assert all(store.get(f"k{i}") is None for i in range(100))


def test_memory_store_get_releases_the_lock_when_the_clock_raises() -> None:
    def clock() -> float:
        raise RuntimeError("clock")

    store: MemoryStore[str] = MemoryStore(clock=lambda: 0.0)
    store.set("a", "x", ttl=5)
    store._clock = clock
    with pytest.raises(RuntimeError):
        store.get("a")
    assert not store._lock.locked()


def test_l1_timings_sampled_with_weight_and_lookups_exact(make_app: MakeApp) -> None:
    app, _ = make_app()
    layered = AppCache.of(app).layered
    before = layered.stats.lookup_seconds["l1"].count()
    since = layered.trusted_since()
    lookups = SAMPLE * 10
    for _ in range(lookups):
        layered.get_l1("nothing-here", since)
    counted = layered.stats.lookup_seconds["l1"].count() - before
    assert counted == lookups
    assert layered.stats.lookup_seconds["l1"].snapshot().count % SAMPLE == 0


def test_repeated_purges_of_whole_chains_keep_verify_green(make_app: MakeApp, database: str) -> None:  # noqa: F811
    """Everything old, the previous purge's own record included, purged twice over."""
    app = _aged_app(make_app, database)
    runner = app.test_cli_runner()
    engine = AppAudit.of(app).engine()
    for _ in range(3):
        with engine.begin() as connection:
            old = datetime(2020, 1, 1)
            connection.execute(update(audit_log).values(occurred_at=old, logged_at=old))
        result = runner.invoke(args=["resilience", "audit", "purge", "--older-than", "90d", "--yes"])
        assert result.exit_code == 0, result.output
        verify_ok(app)
        with app.app_context():
            log_data_change(AuditEventType.UPDATE, "fare", 99, {"price": 1})
            AppAudit.of(app).writer.flush()
        verify_ok(app)


def test_front_hits_follow_clock_invalidation_and_encoding_with_redis(
    make_app: MakeApp, redis_url: str
) -> None:
    version = {"n": 0}

    def build() -> Flask:
        app, _ = make_app(RESILIENCE_REDIS_URL=redis_url)

        @app.get("/r")
        @cached(ttl=300, tags=["r"], front=True)
        def r() -> Response:
            version["n"] += 1
            encoding = request.headers.get("Accept-Encoding", "none")
            return Response(
                f"v{version['n']}-{encoding}", headers={"Vary": "Accept-Encoding", "X-V": encoding}
            )

        return app

    first, other = build(), build()
    clock = FakeClock(time.time())
    AppCache.of(first).layered.clock = clock
    client = first.test_client()
    for encoding in ("gzip", "br"):  # once L1 is trusted (subscribed), a hit is kept as front

        def front_hit(encoding: str = encoding) -> bool:
            status = str(client.get("/r", headers={"Accept-Encoding": encoding}).headers.get("Cache-Status"))
            return status.endswith("detail=front")

        assert eventually(front_hit)
    for encoding in ("gzip", "br", "gzip"):
        hit = client.get("/r", headers={"Accept-Encoding": encoding})
        assert hit.headers["Cache-Status"].endswith("detail=front"), hit.headers
        assert hit.headers["X-V"] == encoding and hit.data.decode().endswith(encoding)
        assert hit.headers["Content-Length"] == str(len(hit.data))
        assert [k.lower() for k, _v in hit.headers.items()].count("x-request-id") == 1
    clock.advance(30)
    aged = client.get("/r", headers={"Accept-Encoding": "gzip"})
    assert aged.headers["Age"] == "30" and "ttl=270;" in aged.headers["Cache-Status"]
    old: bytes = aged.data
    with other.app_context():
        invalidate_cache_by_tag("r")

    def changed() -> bool:
        data: bytes = client.get("/r", headers={"Accept-Encoding": "gzip"}).data
        return data != old

    assert eventually(changed)
    fresh = client.get("/r", headers={"Accept-Encoding": "gzip"})
    assert fresh.data != old and fresh.headers["Content-Length"] == str(len(fresh.data))


def test_purge_run_with_auditing_off_keeps_verify_green(make_app: MakeApp, database: str) -> None:  # noqa: F811
    recording = _aged_app(make_app, database)
    maintenance, _ = make_app(
        RESILIENCE_AUDIT_HMAC_KEY="chain-key",
        RESILIENCE_AUDIT_DATABASE_URI=database,
        RESILIENCE_AUDIT_ENABLED=False,
    )
    result = maintenance.test_cli_runner().invoke(
        args=["resilience", "audit", "purge", "--older-than", "90d", "--yes"]
    )
    assert result.exit_code == 0, result.output
    assert "deleted 4 entries" in result.output
    verify_ok(recording)


class _Tick(Exception):
    """Raised by a SIGALRM handler, as request-timeout handlers and Ctrl-C do."""


def _interrupted(lock: Any, op: Callable[[], object], rounds: int = 3000) -> bool:
    """Interrupt ``op`` with signal-handler exceptions (every 100 us); whether
    one of them left ``lock`` held. ``with lock:`` code holds up for all rounds."""
    armed = [False]

    def handler(signum: int, frame: object) -> None:
        if armed[0]:
            raise _Tick

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.0001)
    try:
        for _ in range(rounds):
            try:
                armed[0] = True
                for _ in range(200):
                    op()
                armed[0] = False
            except _Tick:
                armed[0] = False
                if lock.locked():
                    return True
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)
    return False


def test_counters_lock_survives_signal_handler_exceptions() -> None:
    counters = Counters()
    assert not _interrupted(counters._lock, lambda: counters.count("hits", "ep"))


def test_memory_store_lock_survives_signal_handler_exceptions() -> None:
    store: MemoryStore[int] = MemoryStore()
    store.set("a", 1)
    assert not _interrupted(store._lock, lambda: store.get("a"))


def test_front_route_setting_its_own_request_id_is_overridden(make_app: MakeApp) -> None:
    app, _ = make_app()

    @app.get("/fid")
    @cached(ttl=300, front=True)
    def fid() -> Response:
        return Response("x", headers=[("x-request-ID", "app-set"), ("X-REQUEST-ID", "again")])

    client = app.test_client()
    details = []
    for index in range(3):
        response = client.get("/fid", headers={"X-Request-ID": f"mine-{index}"})
        values = [v for k, v in response.headers.items() if k.lower() == "x-request-id"]
        assert values == [f"mine-{index}"]
        details.append(str(response.headers.get("Cache-Status")).rsplit("detail=", 1)[-1])
    assert details[-1] == "front"


def test_request_ids_unique_across_gunicorn_workers(key_prefix: str, tmp_path: Path) -> None:
    import requests

    from tests.gunicorn_server import gunicorn

    env = {
        "RESILIENCE_KEY_PREFIX": key_prefix,
        "RESILIENCE_AUDIT_DATABASE_URI": f"sqlite:///{tmp_path / 'audit.db'}",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'example.db'}",
    }
    with gunicorn(env, workers=3) as server:

        def fetch(_: int) -> str:
            with requests.Session() as session:  # a new connection each, six at once: every worker answers
                return str(session.get(f"{server.url}/api/health", timeout=5).headers["X-Request-ID"])

        with ThreadPoolExecutor(6) as pool:
            ids = list(pool.map(fetch, range(240)))
    assert all(len(i) == 32 for i in ids)
    assert len(set(ids)) == len(ids)


def test_front_replies_consistent_under_threads_with_invalidations(make_app: MakeApp) -> None:
    """Hits on ten keys from six threads while a seventh invalidates: every
    answer's headers, length and body belong to one and the same entry."""
    app, _ = make_app(RESILIENCE_CACHE_L1_MAX_ENTRIES=8)  # fewer than the keys: replies are cleared too
    lock = threading.Lock()
    made = [0]

    @app.get("/k/<int:n>")
    @cached(ttl=300, tags=["k"], front=True)
    def k(n: int) -> Response:
        with lock:
            made[0] += 1
            version = made[0]
        return Response(f"{n}:{version}" + "." * (version % 7), headers={"X-N": str(n), "X-V": str(version)})

    stop = threading.Event()
    bad: list[str] = []
    fronts = [0]

    def reader(index: int) -> None:
        client = app.test_client()
        for step in range(400):
            n = (index + step) % 10
            response = client.get(f"/k/{n}")
            text = response.get_data(as_text=True)
            expected = f"{n}:{response.headers['X-V']}"
            if (
                response.headers["X-N"] != str(n)
                or not text.startswith(expected)
                or response.headers["Content-Length"] != str(len(response.data))
            ):
                bad.append(f"{n}: {text!r} {dict(response.headers)}")
            if str(response.headers.get("Cache-Status")).endswith("detail=front"):
                fronts[0] += 1

    def invalidator() -> None:
        while not stop.is_set():
            with app.app_context():
                invalidate_cache_by_tag("k")

    side = threading.Thread(target=invalidator)
    side.start()
    try:
        _hammer(6, reader)
    finally:
        stop.set()
        side.join()
    assert not bad, bad[:3]
    assert fronts[0] > 0


def test_l2_lookups_each_timed(make_app: MakeApp, redis_url: str) -> None:
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url)
    layered = AppCache.of(app).layered
    before = layered.stats.lookup_seconds["l2"].count()
    for index in range(37):
        layered.lookup_l2(f"absent-{index}", "res", layered.trusted_since())
    assert layered.stats.lookup_seconds["l2"].count() - before == 37
