"""The example app under gunicorn: pre-forked workers sharing Redis.

``--preload`` creates the app (and its Redis client and pub/sub state) in the
master before forking, which is what makes fork-safety matter.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy

from flask_resilience.audit.migrate import upgrade
from tests.clock import eventually
from tests.services import free_port

ROOT = Path(__file__).parent.parent


class Server:
    def __init__(self, process: subprocess.Popen[bytes], url: str, audit_url: str) -> None:
        self.process = process
        self.url = url
        self.audit_url = audit_url

    def stop(self) -> None:
        """SIGTERM, as an orchestrator stops gunicorn; waits for it to exit."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def server(redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[Server]:
    gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent)) or shutil.which("gunicorn")
    if gunicorn is None:
        pytest.fail("gunicorn is not installed (it is in the test extra)", pytrace=False)
    port = free_port()
    audit_url = f"sqlite:///{tmp_path / 'audit.db'}"
    upgrade(sqlalchemy.create_engine(audit_url))
    env = {
        **os.environ,
        "RESILIENCE_REDIS_URL": redis_url,
        "RESILIENCE_KEY_PREFIX": key_prefix,
        "RESILIENCE_AUDIT_DATABASE_URI": audit_url,
        "RESILIENCE_AUDIT_SPILL_PATH": str(tmp_path / "spill.jsonl"),
    }
    process = subprocess.Popen(
        [gunicorn, "--preload", "--workers", "3", "--bind", f"127.0.0.1:{port}", "example_app:create_app()"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return requests.get(f"{base}/api/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    running = Server(process, base, audit_url)
    try:
        assert eventually(answers, timeout=30), "gunicorn did not start"
        yield running
    finally:
        running.stop()


def test_workers_share_idempotency_and_cache_state(server: Server) -> None:
    base = server.url
    with requests.Session() as session:
        health = session.get(f"{base}/api/health").json()
        assert health["checks"]["redis"]["status"] == "up"

        order = {"flight": "LH401"}
        first = session.post(f"{base}/api/bookings", json=order, headers={"Idempotency-Key": "gunicorn-1"})
        assert (first.status_code, first.headers["X-Idempotency-Replayed"]) == (201, "false")
        # Whichever worker answers, the key is known: the record lives in Redis.
        for _ in range(12):
            again = session.post(
                f"{base}/api/bookings", json=order, headers={"Idempotency-Key": "gunicorn-1"}
            )
            assert (again.status_code, again.headers["X-Idempotency-Replayed"]) == (201, "true")
            assert again.content == first.content

        assert session.get(f"{base}/api/flights").headers["X-Cache"] in ("MISS", "HIT")
        hits = [session.get(f"{base}/api/flights").headers["X-Cache"] for _ in range(12)]
        assert set(hits) == {"HIT"}  # every worker finds it in Redis or in its own L1

        assert session.post(f"{base}/api/flights/refresh").status_code == 200
        # The refresh bumped the tag: some worker recomputes and stores it again...
        assert eventually(lambda: "stored" in session.get(f"{base}/api/flights").headers["Cache-Status"])
        # ...and then every worker serves that copy.
        after = [session.get(f"{base}/api/flights").headers["X-Cache"] for _ in range(12)]
        assert set(after) == {"HIT"}


def test_sigterm_leaves_every_audit_entry_stored(server: Server) -> None:
    with requests.Session() as session:
        for number in range(6):
            response = session.post(
                f"{server.url}/api/bookings",
                json={"seat": number},
                headers={"Idempotency-Key": f"seat-{number}"},
            )
            assert response.status_code == 201
    server.stop()  # the entries sit in the workers' buffers (5 s interval); exiting must flush them
    assert server.process.returncode == 0
    engine = sqlalchemy.create_engine(server.audit_url)
    kinds = "SELECT event_type, count(*) FROM resilience_audit_log GROUP BY event_type"
    with engine.connect() as connection:
        counts: dict[str, int] = dict(connection.execute(sqlalchemy.text(kinds)).all())
    engine.dispose()
    opened = counts.pop("CHAIN_OPENED")
    assert counts.pop("CHAIN_CLOSED") == opened  # every worker's chain closed cleanly
    assert sum(counts.values()) == 6
