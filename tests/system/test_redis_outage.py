"""Scenario 1: Redis SIGKILLed under load and restarted (empty) a few seconds later.

Cached routes keep answering 200 (L1, else the view), idempotent routes answer
503 and run nothing while Redis is gone, the shared breaker decides locally
and is closed everywhere afterwards, and within 5 s of Redis returning every
worker has dropped its L1 (a booking made during the outage shows in every
worker's cached list) and shared state works again, without a restart.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.system.harness import (
    ADMIN_TOKEN,
    Answer,
    Load,
    OwnPostgres,
    Stack,
    app_stack,
    call,
    pause,
    report,
    scalar,
    statuses,
)

pytestmark = pytest.mark.system

OUTAGE_SECONDS = 6.0  # the 10 s, shortened: every property below is decided within 1 s of the kill
RESYNC_SECONDS = 5.0  # the bound: L1 emptied and shared state working this long after Redis returns
BREAKER = "flights-provider"
BREAKER_OPEN_SECONDS = 2.0  # EXAMPLE_BREAKER_OPEN_SECONDS in the harness


def breaker_states(stack: Stack, samples: int = 16) -> Counter[str]:
    """The provider breaker's state as ``samples`` requests (spread over the workers) see it."""
    seen: Counter[str] = Counter()
    with requests.Session() as session:
        for _ in range(samples):
            answer = session.get(
                f"{stack.url}/api/health/circuit-breakers",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                timeout=10,
            )
            breakers: Any = answer.json()["circuit_breakers"]
            seen[str(breakers[BREAKER]["state"])] += 1
    return seen


def trip_breaker(stack: Stack) -> None:
    """Open the provider breaker (shared through Redis), then let the provider recover."""
    stack.provider_mode("fail")
    with requests.Session() as session:
        for _ in range(6):
            session.get(f"{stack.url}/api/flights", params={"date": uuid.uuid4().hex}, timeout=10)
    stack.provider_mode("ok")


def _loads(stack: Stack, token: str, booking_id: int) -> dict[str, Load]:
    auth = {"Authorization": f"Bearer {token}"}

    def cached(session: requests.Session, number: int) -> Answer:
        return call(session, "GET", f"{stack.url}/api/bookings", headers=auth)

    def flights(session: requests.Session, number: int) -> Answer:
        # Half a cached search, half a new one: each new one calls the provider through the breaker.
        query = "from=FRA&to=JFK" if number % 2 else f"date={uuid.uuid4().hex}"
        return call(session, "GET", f"{stack.url}/api/flights?{query}")

    def pay(session: requests.Session, number: int) -> list[Answer]:
        order = {"booking_id": booking_id, "amount_cents": 100, "card_number": "4111111111111111"}
        key = f"outage-{number}-{uuid.uuid4().hex[:6]}"
        headers = {**auth, "Idempotency-Key": key}
        first = call(session, "POST", f"{stack.url}/api/payments", tag=key, json=order, headers=headers)
        again = call(session, "POST", f"{stack.url}/api/payments", tag=key, json=order, headers=headers)
        return [first, again]

    seconds = OUTAGE_SECONDS + RESYNC_SECONDS + 20
    return {
        "cached": Load(cached, threads=2, limit=3000, seconds=seconds),
        "flights": Load(flights, threads=2, limit=3000, seconds=seconds),
        "payments": Load(pay, threads=1, limit=1000, seconds=seconds),
    }


def check_redis_outage(
    stack: Stack,
    kill: Callable[[], None],
    restart: Callable[[], None],
    scenario: str,
    outage_statuses: frozenset[int] = frozenset({503}),
) -> None:
    """``outage_statuses``: what payments may answer while Redis is down ({503}; on a cluster
    that lost one master, keys on the other masters may still be claimed)."""
    token = stack.login("alice")
    auth = {"Authorization": f"Bearer {token}"}
    bookings = f"{stack.url}/api/bookings"
    booked = requests.post(bookings, json={"flight": "LH401", "passenger": "P"}, headers=auth, timeout=10)
    with requests.Session() as session:
        for _ in range(16):  # alice's list cached in L2 and in every worker's L1
            assert session.get(bookings, headers=auth, timeout=10).status_code == 200
    trip_breaker(stack)
    loads = _loads(stack, token, booked.json()["id"])
    for load in loads.values():
        load.__enter__()
    try:
        pause(1.5)
        killed = time.monotonic()
        kill()
        pause(0.5)
        during = requests.post(
            bookings, json={"flight": "KL1001", "passenger": "Q"}, headers=auth, timeout=10
        )
        pause(OUTAGE_SECONDS - 0.5)
        returning = time.monotonic()
        restart()
        restarted = time.monotonic()  # Redis is back (a cluster: every slot served again)
        pause(RESYNC_SECONDS)
        after = _after_resync(stack, auth, during)
    finally:
        answers = {name: load.stop() for name, load in loads.items()}

    # While Redis is down a worker may still replay a key it completed itself (its memory copy):
    # a replay runs nothing. Every other payment must be refused.
    outage_all = [a for a in answers["payments"] if killed + 0.3 < a.started and a.finished < returning]
    outage = [a for a in outage_all if a.headers.get("X-Idempotency-Replayed") != "true"]
    charges = scalar(stack.database_url, "SELECT count(*) FROM example_charges")
    ran = [
        a
        for a in answers["payments"]
        if a.status == 201 and a.headers.get("X-Idempotency-Replayed") == "false"
    ]
    report(
        scenario,
        cached=statuses(answers["cached"]),
        flights=statuses(answers["flights"]),
        payments=statuses(answers["payments"]),
        payments_during_outage=statuses(outage),
        replays_from_memory_during_outage=len(outage_all) - len(outage),
        payment_runs=len(ran),
        charges=charges,
        booking_during_outage=during.status_code,
        **after,
    )
    assert during.status_code == 201
    assert set(statuses(answers["cached"])) == {200}
    # The breaker, open at the kill, decides alone and closes after its timeout; 503s only until then.
    assert set(statuses(answers["flights"])) <= {200, 503}
    # Back on Redis, a worker adopts the shared state: a breaker stored OPEN before the kill (on a
    # cluster master that survived) lets one trial through at a time for a moment, then closes.
    settled = restarted + RESYNC_SECONDS - 1.5
    late = [
        a
        for a in answers["flights"]
        if killed + BREAKER_OPEN_SECONDS + 1 < a.started and (a.finished < returning or a.started > settled)
    ]
    assert late and set(statuses(late)) == {200}, [
        (round(a.started - killed, 2), a.body[:70]) for a in late if a.status != 200
    ][:10]
    assert outage and 503 in statuses(outage) and set(statuses(outage)) <= outage_statuses
    runs_per_key = Counter(a.tag for a in ran)
    assert set(runs_per_key.values()) == {1}, "a key ran twice"
    assert charges == len(ran) + after["payments_after"]
    assert after["stale_lists"] == 0
    assert after["breaker_states"] == {"CLOSED": 16}
    assert after["replays_after"] == 8


def _after_resync(stack: Stack, auth: dict[str, str], during: requests.Response) -> dict[str, Any]:
    booking_id = during.json()["id"] if during.status_code == 201 else -1
    stale = 0
    with requests.Session() as session:
        for _ in range(16):
            listed = session.get(f"{stack.url}/api/bookings", headers=auth, timeout=10).json()["bookings"]
            stale += booking_id not in [booking["id"] for booking in listed]
        order = {"booking_id": booking_id, "amount_cents": 5, "card_number": "4111111111111111"}
        headers = {**auth, "Idempotency-Key": f"after-{uuid.uuid4().hex}"}
        url = f"{stack.url}/api/payments"
        first = session.post(url, json=order, headers=headers, timeout=10)
        replays = sum(
            session.post(url, json=order, headers=headers, timeout=10).headers.get("X-Idempotency-Replayed")
            == "true"
            for _ in range(8)
        )
    # The status page reads the shared state: a breaker adopted OPEN from before the kill is
    # HALF_OPEN there until a trial call closes it. Once in 1 of 3 full CI runs that took past
    # the reads above (7 of 16 reads HALF_OPEN, then CLOSED), so the page is read again for up
    # to RESYNC_SECONDS: a breaker stuck HALF_OPEN (a worker that never closes) still fails.
    first_read = dict(breaker_states(stack))
    settled_states = first_read
    began = time.monotonic()
    while settled_states != {"CLOSED": 16} and time.monotonic() - began < RESYNC_SECONDS:
        pause(0.25)
        settled_states = dict(breaker_states(stack))
    return {
        "stale_lists": stale,
        "breaker_states_first_read": first_read,
        "breaker_states_settled_after_s": round(time.monotonic() - began, 2),
        "breaker_states": settled_states,
        "payments_after": int(first.status_code == 201),
        "replays_after": replays,
    }


def test_redis_killed_under_load_and_restarted(own_postgres: OwnPostgres, tmp_path: Path) -> None:
    with app_stack(own_postgres, tmp_path) as stack:
        assert stack.redis is not None
        check_redis_outage(stack, stack.redis.kill, stack.redis.restart, "1 Redis SIGKILL + restart")
