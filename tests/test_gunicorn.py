"""The example app under gunicorn: pre-forked workers sharing Redis.

``--preload`` creates the app (and its Redis client and pub/sub state) in the
master before forking, which is what makes fork-safety matter.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy

from example_app.demo import run_demo
from flask_resilience.audit.migrate import upgrade
from tests.clock import eventually
from tests.gunicorn_server import Server, gunicorn
from tests.test_audit_migrations import scratch_schema


@pytest.fixture
def audit_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    upgrade(sqlalchemy.create_engine(url))
    return url


@pytest.fixture
def server(redis_url: str, key_prefix: str, tmp_path: Path, audit_url: str) -> Iterator[Server]:
    env = {
        "RESILIENCE_REDIS_URL": redis_url,
        "RESILIENCE_KEY_PREFIX": key_prefix,
        "RESILIENCE_AUDIT_DATABASE_URI": audit_url,
        "RESILIENCE_AUDIT_SPILL_PATH": str(tmp_path / "spill.jsonl"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'example.db'}",
    }
    with gunicorn(env) as running:
        yield running


def login(session: requests.Session, base: str) -> None:
    answer = session.post(f"{base}/api/auth/login", json={"username": "alice", "password": "alice-password"})
    session.headers["Authorization"] = f"Bearer {answer.json()['token']}"


def test_workers_share_idempotency_and_cache_state(server: Server) -> None:
    base = server.url
    with requests.Session() as session:
        health = session.get(f"{base}/api/health").json()
        assert health["checks"]["redis"]["status"] == "up"
        login(session, base)

        booking = session.post(f"{base}/api/bookings", json={"flight": "LH401", "passenger": "A"}).json()
        order = {"booking_id": booking["id"], "amount_cents": 100, "card_number": "4111111111111111"}
        key = {"Idempotency-Key": "gunicorn-1"}
        first = session.post(f"{base}/api/payments", json=order, headers=key)
        assert (first.status_code, first.headers["X-Idempotency-Replayed"]) == (201, "false")
        # Whichever worker answers, the key is known: the record lives in Redis.
        for _ in range(12):
            again = session.post(f"{base}/api/payments", json=order, headers=key)
            assert (again.status_code, again.headers["X-Idempotency-Replayed"]) == (201, "true")
            assert again.content == first.content

        with requests.Session() as anonymous:  # searches with credentials are not shared-cached
            flights = f"{base}/api/flights?from=FRA"
            assert anonymous.get(flights).headers["X-Cache"] in ("MISS", "HIT")
            hits = [anonymous.get(flights).headers["X-Cache"] for _ in range(12)]
            assert set(hits) == {"HIT"}  # every worker finds it in Redis or in its own L1

            # A booking invalidates the flights tag: some worker recomputes and stores it again...
            assert session.post(f"{base}/api/bookings", json={"flight": "LH403", "passenger": "B"}).ok
            assert eventually(lambda: "stored" in anonymous.get(flights).headers["Cache-Status"])
            # ...and then every worker serves that copy.
            after = [anonymous.get(flights).headers["X-Cache"] for _ in range(12)]
            assert set(after) == {"HIT"}


def test_sigterm_leaves_every_audit_entry_stored(server: Server, audit_url: str) -> None:
    with requests.Session() as session:
        login(session, server.url)
        for number in range(6):
            response = session.post(
                f"{server.url}/api/bookings", json={"flight": "LH401", "passenger": f"seat {number}"}
            )
            assert response.status_code == 201
    server.stop()  # the entries sit in the workers' buffers (5 s interval); exiting must flush them
    assert server.process.returncode == 0
    engine = sqlalchemy.create_engine(audit_url)
    kinds = "SELECT event_type, count(*) FROM resilience_audit_log GROUP BY event_type"
    with engine.connect() as connection:
        counts: dict[str, int] = dict(connection.execute(sqlalchemy.text(kinds)).all())
    engine.dispose()
    assert counts["CREATE"] == 6
    assert counts["CHAIN_OPENED"] >= 1
    assert counts.get("CHAIN_CLOSED") == counts["CHAIN_OPENED"]  # every worker's chain closed cleanly


def test_demo_behaves_the_same_on_several_workers_with_redis_and_postgres(
    redis_url: str, key_prefix: str, postgres_url: str, tmp_path: Path
) -> None:
    lines: list[str] = []
    # A schema of its own: the demo verifies every audit chain it finds.
    with scratch_schema(postgres_url, "rt_demo") as database_url:
        env = {
            "RESILIENCE_REDIS_URL": redis_url,
            "RESILIENCE_KEY_PREFIX": key_prefix,
            "DATABASE_URL": database_url,
            "RESILIENCE_AUDIT_SPILL_PATH": str(tmp_path / "spill.jsonl"),
            "RESILIENCE_AUDIT_FLUSH_INTERVAL": "500",
            "EXAMPLE_BREAKER_OPEN_SECONDS": "1",
        }
        with gunicorn(env) as running:
            passed = run_demo(running.url, lines.append)
    assert passed, "\n".join(lines)
