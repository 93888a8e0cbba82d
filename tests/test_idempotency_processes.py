"""Idempotency across real processes through real Redis."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from typing import Any

import redis
from flask import Flask, jsonify
from flask.typing import ResponseReturnValue

from flask_resilience import Resilience, idempotent
from flask_resilience.state import get_state
from tests.clock import eventually


def worker_app(redis_url: str, prefix: str, counter: str, lease: float = 60.0) -> Flask:
    app = Flask("idempotency-worker")
    app.config.update(
        RESILIENCE_REDIS_URL=redis_url,
        RESILIENCE_KEY_PREFIX=prefix,
        RESILIENCE_IDEMPOTENCY_LEASE=lease,
        RESILIENCE_AUDIT_ENABLED=False,  # not under test here; it would write to ./instance
    )
    Resilience(app)
    client = redis.Redis.from_url(redis_url)

    @app.post("/charge")
    @idempotent()
    def charge() -> ResponseReturnValue:
        runs = client.incr(counter)
        client.set(f"{counter}:inside", 1)
        # Hold the claim until every request has been sent (or the test gives up).
        eventually(
            lambda: int(client.get(f"{counter}:arrived") or 0) >= int(client.get(f"{counter}:expected") or 0)
        )
        return jsonify(runs=runs), 201

    @app.post("/charge-then-crash")
    @idempotent()
    def charge_then_crash() -> ResponseReturnValue:
        client.incr(counter)  # the charge happened
        eventually(
            lambda: int(client.get(f"{counter}:arrived") or 0) >= int(client.get(f"{counter}:expected") or 0)
        )
        raise TimeoutError("the payment provider timed out after charging")

    return app


def _sender(  # noqa: PLR0917 (a spawned process takes its arguments positionally)
    redis_url: str, prefix: str, counter: str, start: Any, results: Any, path: str = "/charge"
) -> None:
    app = worker_app(redis_url, prefix, counter)
    client = redis.Redis.from_url(redis_url)
    start.wait(30)
    statuses: list[tuple[int, str | None]] = []
    lock = threading.Lock()

    def post() -> None:
        client.incr(f"{counter}:arrived")
        response = app.test_client().post(path, headers={"Idempotency-Key": "pay-once"})
        with lock:
            statuses.append((response.status_code, response.headers.get("X-Idempotency-Replayed")))

    threads = [threading.Thread(target=post) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    if path != "/charge":  # and one more retry once every first round is over
        client.incr(f"{counter}:finished")
        eventually(lambda: int(client.get(f"{counter}:finished") or 0) >= 4)
        post()
    results.put(statuses)
    get_state(app).shutdown()


def _four_senders(redis_url: str, prefix: str, counter: str, path: str) -> list[tuple[int, str | None]]:
    """Four spawned processes posting one key to ``path`` at once; every status."""
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    results: Any = context.Queue()
    senders = [
        context.Process(target=_sender, args=(redis_url, prefix, counter, start, results, path))
        for _ in range(4)
    ]
    for sender in senders:
        sender.start()
    try:
        start.set()
        return [status for _ in senders for status in results.get(timeout=60)]
    finally:
        for sender in senders:
            sender.join(30)


def test_twenty_requests_from_four_processes_run_the_view_once(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> None:
    counter = f"{key_prefix}charge-runs"
    raw_redis.set(f"{counter}:expected", 20)
    statuses = _four_senders(redis_url, key_prefix, counter, "/charge")
    assert int(raw_redis.get(counter) or 0) == 1
    assert len(statuses) == 20
    assert statuses.count((201, "false")) == 1  # the one execution
    assert all(status in ((409, None), (201, "true")) for status in statuses if status != (201, "false"))
    raw_redis.delete(counter, f"{counter}:inside", f"{counter}:arrived", f"{counter}:expected")


def _holder(redis_url: str, prefix: str, counter: str, lease: float = 30.0, key: str = "crashy") -> None:
    app = worker_app(redis_url, prefix, counter, lease=lease)
    app.test_client().post("/charge", headers={"Idempotency-Key": key})  # blocks inside the view
    get_state(app).shutdown()


def test_a_killed_worker_frees_the_key_when_its_lease_ends(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> None:
    counter = f"{key_prefix}crash-runs"
    raw_redis.set(f"{counter}:expected", 10**6)  # the holder never finishes by itself
    context = multiprocessing.get_context("spawn")
    holder = context.Process(target=_holder, args=(redis_url, key_prefix, counter))
    holder.start()
    try:
        assert eventually(lambda: raw_redis.get(f"{counter}:inside") is not None)
        os.kill(holder.pid or 0, signal.SIGKILL)
        holder.join(10)
    finally:
        if holder.is_alive():
            holder.kill()

    app = worker_app(redis_url, key_prefix, counter, lease=30.0)
    client = app.test_client()
    assert client.post("/charge", headers={"Idempotency-Key": "crashy"}).status_code == 409  # still leased
    (record,) = list(raw_redis.scan_iter(match=f"{key_prefix}idem:*"))
    lease_left = int(raw_redis.pttl(record))
    assert 0 < lease_left <= 30_000
    raw_redis.pexpire(record, 1)  # the lease running out, without waiting 30 s for it
    assert eventually(lambda: raw_redis.exists(record) == 0)
    raw_redis.set(f"{counter}:expected", 0)
    response = client.post("/charge", headers={"Idempotency-Key": "crashy"})
    assert response.status_code == 201
    assert response.json == {"runs": 2}
    get_state(app).shutdown()
    raw_redis.delete(counter, f"{counter}:inside", f"{counter}:arrived", f"{counter}:expected")


def test_a_view_that_raises_after_its_side_effect_never_runs_again_across_processes(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> None:
    counter = f"{key_prefix}crash-charge-runs"
    raw_redis.set(f"{counter}:expected", 20)
    statuses = _four_senders(redis_url, key_prefix, counter, "/charge-then-crash")
    assert int(raw_redis.get(counter) or 0) == 1
    assert len(statuses) == 24
    assert statuses.count((500, None)) == 1  # the one execution: the app's own 500 page
    others = [status for status in statuses if status != (500, None)]
    assert all(status in ((409, None), (500, "true")) for status in others)
    assert others.count((500, "true")) >= 4  # every retry after the crash gets the crash back
    raw_redis.delete(counter, f"{counter}:arrived", f"{counter}:expected", f"{counter}:finished")


def test_a_live_worker_keeps_its_key_for_longer_than_three_leases(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> None:
    counter = f"{key_prefix}long-runs"
    raw_redis.set(f"{counter}:expected", 10**6)  # the holder's view runs until told to finish
    context = multiprocessing.get_context("spawn")
    holder = context.Process(target=_holder, args=(redis_url, key_prefix, counter, 0.3, "long"))
    holder.start()
    try:
        assert eventually(lambda: raw_redis.get(f"{counter}:inside") is not None)
        (record,) = list(raw_redis.scan_iter(match=f"{key_prefix}idem:*"))
        last, renewals = [int(raw_redis.pttl(record))], [0]

        def renewed_four_times() -> bool:
            left = int(raw_redis.pttl(record))
            renewals[0] += left > last[0]
            last[0] = left
            return renewals[0] >= 4  # more than three 0.3 s leases have passed

        assert eventually(renewed_four_times, timeout=5)
        app = worker_app(redis_url, key_prefix, counter, lease=0.3)
        client = app.test_client()
        assert client.post("/charge", headers={"Idempotency-Key": "long"}).status_code == 409
        raw_redis.set(f"{counter}:expected", 0)
        holder.join(10)
        replay = client.post("/charge", headers={"Idempotency-Key": "long"})
        assert (replay.status_code, replay.headers["X-Idempotency-Replayed"]) == (201, "true")
        assert int(raw_redis.get(counter) or 0) == 1
        get_state(app).shutdown()
    finally:
        if holder.is_alive():
            holder.kill()
    raw_redis.delete(counter, f"{counter}:inside", f"{counter}:arrived", f"{counter}:expected")
