"""Scenario 6: the flights provider fails for a while under load.

The shared breaker opens in every worker: once it is open the provider sees
at most ``half_open_max_calls`` trial calls per breaker timeout from the whole
fleet (the provider logs when each call arrived), and the breaker closes
everywhere after the provider recovers.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.system.harness import Answer, Load, OwnPostgres, Stack, app_stack, call, pause, report, statuses
from tests.system.test_redis_outage import BREAKER_OPEN_SECONDS, breaker_states

pytestmark = pytest.mark.system

OUTAGE_SECONDS = 8.0  # the 20 s, shortened: it still spans four breaker timeouts of 2 s
HALF_OPEN_MAX_CALLS = 1  # the breaker's default; the example app does not change it
IN_FLIGHT_GRACE = 0.3  # seconds after the first rejection during which calls already let through may land
PAUSED = b"flight search is paused"


def provider_calls(stack: Stack) -> list[float]:
    answer = stack.admin("GET", "/api/admin/provider")
    assert answer.status_code == 200, answer.text
    calls: list[float] = answer.json()["recent_calls"]
    return calls


def most_calls_within(times: list[float], window: float) -> int:
    """The largest number of ``times`` inside any interval of length ``window``."""
    ordered, most, start = sorted(times), 0, 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] > window:
            start += 1
        most = max(most, end - start + 1)
    return most


def test_breaker_limits_trials_across_the_fleet(own_postgres: OwnPostgres, tmp_path: Path) -> None:
    with app_stack(own_postgres, tmp_path) as stack:

        def search(session: requests.Session, number: int) -> Answer:
            return call(session, "GET", f"{stack.url}/api/flights?date={uuid.uuid4().hex}")

        with Load(search, threads=4, limit=5000, seconds=OUTAGE_SECONDS + 20) as load:
            pause(1.0)
            failing = time.monotonic()
            stack.provider_mode("fail")
            pause(OUTAGE_SECONDS)
            calls = provider_calls(stack)
            recovered = time.monotonic()
            stack.provider_mode("ok")
            pause(BREAKER_OPEN_SECONDS + 3.0)
            answers = load.stop()
        states = breaker_states(stack)

    rejected = [a for a in answers if a.status == 503 and PAUSED in a.body and a.started > failing]
    assert rejected, "the breaker never opened"
    opened = rejected[0].started
    while_open = [moment for moment in calls if opened + IN_FLIGHT_GRACE < moment < recovered]
    during = [a for a in answers if failing < a.started and a.finished < recovered]
    late = [a for a in answers if a.started > recovered + BREAKER_OPEN_SECONDS + 1.5]
    most = most_calls_within(while_open, 0.9 * BREAKER_OPEN_SECONDS)
    report(
        "6 upstream outage",
        requests_during_outage=len(during),
        answers_during_outage=statuses(during),
        opened_after_s=round(opened - failing, 2),
        provider_calls_while_open=len(while_open),
        most_calls_per_timeout=most,
        answers_after_recovery=statuses(late),
        breaker_states_after=dict(states),
    )
    assert most <= HALF_OPEN_MAX_CALLS
    assert len(while_open) <= (OUTAGE_SECONDS / BREAKER_OPEN_SECONDS + 1) * HALF_OPEN_MAX_CALLS
    assert late and set(statuses(late)) == {200}
    assert states == {"CLOSED": 16}
