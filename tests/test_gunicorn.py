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

from tests.clock import eventually
from tests.services import free_port

ROOT = Path(__file__).parent.parent


@pytest.fixture
def server(redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[str]:
    gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent)) or shutil.which("gunicorn")
    if gunicorn is None:
        pytest.fail("gunicorn is not installed (it is in the test extra)", pytrace=False)
    port = free_port()
    env = {
        **os.environ,
        "RESILIENCE_REDIS_URL": redis_url,
        "RESILIENCE_KEY_PREFIX": key_prefix,
        "RESILIENCE_AUDIT_DATABASE_URI": f"sqlite:///{tmp_path / 'audit.db'}",
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

    try:
        assert eventually(answers, timeout=30), "gunicorn did not start"
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def test_workers_share_idempotency_and_cache_state(server: str) -> None:
    with requests.Session() as session:
        health = session.get(f"{server}/api/health").json()
        assert health["checks"]["redis"]["status"] == "up"

        order = {"flight": "LH401"}
        first = session.post(f"{server}/api/bookings", json=order, headers={"Idempotency-Key": "gunicorn-1"})
        assert (first.status_code, first.headers["X-Idempotency-Replayed"]) == (201, "false")
        # Whichever worker answers, the key is known: the record lives in Redis.
        for _ in range(12):
            again = session.post(
                f"{server}/api/bookings", json=order, headers={"Idempotency-Key": "gunicorn-1"}
            )
            assert (again.status_code, again.headers["X-Idempotency-Replayed"]) == (201, "true")
            assert again.content == first.content

        assert session.get(f"{server}/api/flights").headers["X-Cache"] in ("MISS", "HIT")
        hits = [session.get(f"{server}/api/flights").headers["X-Cache"] for _ in range(12)]
        assert set(hits) == {"HIT"}  # every worker finds it in Redis or in its own L1

        assert session.post(f"{server}/api/flights/refresh").status_code == 200
        # The refresh bumped the tag: some worker recomputes and stores it again...
        assert eventually(lambda: "stored" in session.get(f"{server}/api/flights").headers["Cache-Status"])
        # ...and then every worker serves that copy.
        after = [session.get(f"{server}/api/flights").headers["X-Cache"] for _ in range(12)]
        assert set(after) == {"HIT"}
