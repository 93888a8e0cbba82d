"""Audit entries under gunicorn: SIGTERM under durable load, SIGKILL of a worker."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tests.audit_support import ROOT, database, stored, verify_ok
from tests.conftest import MakeApp
from tests.services import free_port

__all__ = ["database"]  # the fixture, for pytest

GUNICORN_APP = """
import os
from flask import Flask
from flask_resilience import AuditEventType, Resilience, log_data_change, log_security_alert


def create_app():
    app = Flask("load", instance_path=os.environ["AUDIT_INSTANCE"])
    app.config["SECRET_KEY"] = "test-secret-key"  # the key the verifying test app derives
    app.config["RESILIENCE_AUDIT_DATABASE_URI"] = os.environ["AUDIT_URL"]
    Resilience(app)

    @app.post("/alert")
    def alert():
        log_security_alert("durable under load")
        return str(os.getpid())

    @app.post("/record")
    def record():
        log_data_change(AuditEventType.UPDATE, "fare", 1, {"price": 1})
        return str(os.getpid())

    return app
"""


class GunicornLoad:
    """gunicorn with 4 workers and 4 client threads POSTing to ``path``."""

    def __init__(self, database: str, tmp_path: Path, path: str) -> None:
        (tmp_path / "load_app.py").write_text(GUNICORN_APP)
        self.url = f"http://127.0.0.1:{free_port()}{path}"
        env = {**os.environ, "AUDIT_URL": database, "AUDIT_INSTANCE": str(tmp_path / "instance")}
        env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{ROOT}"
        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        self.server = subprocess.Popen(
            [
                gunicorn,
                "--workers",
                "4",
                "--graceful-timeout",
                "30",
                "--bind",
                self.url.split("/")[2],
                "load_app:create_app()",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.acknowledged = [0] * 4
        self.workers: set[int] = set()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._load, args=(slot,)) for slot in range(4)]
        for thread in self._threads:
            thread.start()

    def _load(self, slot: int) -> None:
        import requests

        with requests.Session() as session:
            while not self._stop.is_set():
                try:
                    response = session.post(self.url, timeout=5)
                except requests.RequestException:
                    if self.server.poll() is not None:
                        return
                    continue
                if response.status_code == 200:
                    self.acknowledged[slot] += 1
                    self.workers.add(int(response.text))

    def wait_for(self, acknowledged: int) -> None:
        deadline = time.monotonic() + 30
        while sum(self.acknowledged) < acknowledged and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sum(self.acknowledged) >= acknowledged, "gunicorn did not serve"

    def terminate(self) -> float:
        """SIGTERM the master under load; seconds until it exited."""
        self.server.send_signal(signal.SIGTERM)
        started = time.monotonic()
        self.server.wait(20)
        return time.monotonic() - started

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        if self.server.poll() is None:
            self.server.kill()
            self.server.wait()


def every_acknowledged_entry_is_stored(
    make_app: MakeApp, database: str, load: GunicornLoad, in_flight: int
) -> None:
    """Each acknowledged entry stored once, at most ``in_flight`` more (stored
    without an answer reaching the client), and every chain verifies."""
    rows = stored(database)
    acknowledged = sum(load.acknowledged)
    assert acknowledged <= len(rows) <= acknowledged + in_flight
    assert len({row["id"] for row in rows}) == len(rows)
    verify_ok(make_app(RESILIENCE_AUDIT_DATABASE_URI=database)[0])


def test_gunicorn_workers_under_durable_load_exit_promptly_on_sigterm(
    make_app: MakeApp, database: str, tmp_path: Path
) -> None:
    with gunicorn_load(database, tmp_path, "/alert") as load:
        load.wait_for(200)
        elapsed = load.terminate()
    assert elapsed < 8, f"workers took {elapsed:.1f} s to exit"
    every_acknowledged_entry_is_stored(make_app, database, load, in_flight=4)


def test_sigkill_of_a_gunicorn_worker_under_load_loses_nothing(
    make_app: MakeApp, database: str, tmp_path: Path
) -> None:
    with gunicorn_load(database, tmp_path, "/record") as load:
        load.wait_for(300)
        os.kill(min(load.workers), signal.SIGKILL)  # its entries sit in its buffer (5 s) and journal
        load.wait_for(sum(load.acknowledged) + 300)  # a new worker takes its place
        assert load.terminate() < 8
    # The victim's request in flight, and one per worker at SIGTERM, may be stored unanswered.
    every_acknowledged_entry_is_stored(make_app, database, load, in_flight=5)


@contextlib.contextmanager
def gunicorn_load(database: str, tmp_path: Path, path: str) -> Iterator[GunicornLoad]:
    load = GunicornLoad(database, tmp_path, path)
    try:
        yield load
    finally:
        load.close()
