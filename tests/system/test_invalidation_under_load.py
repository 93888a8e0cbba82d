"""Scenario 9: a writer changes a booking while readers hammer its cached copies.

The booking's passenger holds a version counter. Once a write has returned,
no read that starts afterwards, in any worker, may see an older version:
neither the per-user cached list (``@cached``, tag ``bookings``) nor the
booking itself (data cache, tag ``booking-<id>``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from tests.system.harness import Answer, Load, OwnPostgres, app_stack, call, report, statuses

pytestmark = pytest.mark.system

WRITES = 40


def version_seen(answer: Answer, booking_id: int) -> int:
    body = json.loads(answer.body)
    booking = next(b for b in body["bookings"] if b["id"] == booking_id) if "bookings" in body else body
    return int(booking["passenger"].removeprefix("v"))


def test_no_read_after_a_write_sees_the_old_version(own_postgres: OwnPostgres, tmp_path: Path) -> None:
    with app_stack(own_postgres, tmp_path) as stack:
        auth = {"Authorization": f"Bearer {stack.login('alice')}"}
        created = requests.post(
            f"{stack.url}/api/bookings", json={"flight": "LH401", "passenger": "v0"}, headers=auth, timeout=10
        )
        booking_id = created.json()["id"]
        paths = ["/api/bookings", f"/api/bookings/{booking_id}"]

        def read(session: requests.Session, number: int) -> Answer:
            return call(session, "GET", stack.url + paths[number % 2], headers=auth)

        written: list[tuple[float, int]] = []  # (when the write returned, its version)
        with Load(read, threads=6, limit=3000, seconds=40) as load, requests.Session() as writer:
            for version in range(1, WRITES + 1):
                change = writer.patch(
                    f"{stack.url}{paths[1]}", json={"passenger": f"v{version}"}, headers=auth, timeout=10
                )
                assert change.status_code == 200, change.text
                written.append((time.monotonic(), version))
            answers = load.stop()

    stale = []
    for answer in answers:
        assert answer.status == 200, answer.body
        required = max((version for returned, version in written if returned < answer.started), default=0)
        if version_seen(answer, booking_id) < required:
            stale.append(answer)
    hits = sum(answer.headers.get("X-Cache") == "HIT" for answer in answers)
    report(
        "9 invalidation under load",
        writes=WRITES,
        reads=len(answers),
        read_statuses=statuses(answers),
        list_hits=hits,
        stale_reads=len(stale),
    )
    assert not stale
