"""Starting the example app under gunicorn for a test, and stopping it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.clock import eventually
from tests.services import free_port

ROOT = Path(__file__).parent.parent


class Server:
    def __init__(self, process: subprocess.Popen[bytes], url: str) -> None:
        self.process = process
        self.url = url

    def worker_pids(self) -> list[int]:
        """The master's current children (its workers)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()]

    def stop(self) -> None:
        """SIGTERM, as an orchestrator stops gunicorn; waits for it to exit."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@contextmanager
def gunicorn(env: dict[str, str], *options: str, workers: int = 3) -> Iterator[Server]:
    """``gunicorn --preload`` serving ``example_app:create_app()`` with ``env``
    added to this process's environment; yields once ``/api/health`` answers."""
    executable = shutil.which("gunicorn", path=str(Path(sys.executable).parent)) or shutil.which("gunicorn")
    if executable is None:
        pytest.fail("gunicorn is not installed (it is in the test extra)", pytrace=False)
    port = free_port()
    process = subprocess.Popen(
        [
            executable,
            "--preload",
            "--workers",
            str(workers),
            "--bind",
            f"127.0.0.1:{port}",
            *options,
            "example_app:create_app()",
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return requests.get(f"{base}/api/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    running = Server(process, base)
    try:
        assert eventually(answers, timeout=30), "gunicorn did not start"
        yield running
    finally:
        running.stop()
