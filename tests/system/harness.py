"""The whole stack for one scenario: its own Redis and PostgreSQL, the example
app under gunicorn, a bounded load generator, and the scenario's counts.

Every server here is started by the test in a temporary folder and stopped
(or killed) by its process id: the shared servers are never touched.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import sqlalchemy

from tests.gunicorn_server import Server, gunicorn
from tests.services import ThrowawayPostgres, free_port, start_redis_server

ADMIN_TOKEN = "system-admin-" + uuid.uuid4().hex
COUNTS: list[tuple[str, dict[str, Any]]] = []
"""Each scenario's counts, printed in the terminal summary (see conftest.py)."""


def report(scenario: str, **counts: Any) -> None:
    COUNTS.append((scenario, counts))


# -- Redis -------------------------------------------------------------------


class OwnRedis:
    """A redis-server of this scenario's own, killed and restarted by pid on one port."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.directory = directory
        self.port = free_port()
        self.extra = extra
        self.process = start_redis_server(str(directory), self.port, *extra)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def restart(self) -> None:
        self.process = start_redis_server(str(self.directory), self.port, *self.extra)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


# -- PostgreSQL --------------------------------------------------------------


class OwnPostgres(ThrowawayPostgres):
    """A throwaway ``initdb`` cluster that hands each scenario a database of its own."""

    def database_url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        name = "s_" + uuid.uuid4().hex[:10]
        engine = sqlalchemy.create_engine(self.url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.database_url(name)


def scalar(database_url: str, query: str) -> Any:
    engine = sqlalchemy.create_engine(database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(sqlalchemy.text(query)).scalar_one()
    finally:
        engine.dispose()


def rows(database_url: str, query: str) -> list[Any]:
    engine = sqlalchemy.create_engine(database_url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(sqlalchemy.text(query)))
    finally:
        engine.dispose()


# -- the app -----------------------------------------------------------------


@dataclass
class Stack:
    server: Server
    redis: OwnRedis | None
    database_url: str
    folder: Path

    @property
    def url(self) -> str:
        return self.server.url

    def login(self, user: str) -> str:
        answer = requests.post(
            f"{self.url}/api/auth/login", json={"username": user, "password": f"{user}-password"}, timeout=10
        )
        assert answer.status_code == 200, answer.text
        token: str = answer.json()["token"]
        return token

    def admin(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        return requests.request(method, self.url + path, headers=headers, timeout=10, **kwargs)

    def provider_mode(self, mode: str) -> None:
        assert self.admin("POST", "/api/admin/provider", json={"mode": mode}).status_code == 200


def stack_env(redis_url: str, database_url: str, folder: Path, **extra: str) -> dict[str, str]:
    return {
        "RESILIENCE_REDIS_URL": redis_url,
        "RESILIENCE_KEY_PREFIX": f"sys-{uuid.uuid4().hex[:8]}:",  # two stacks on one cluster share nothing
        "RESILIENCE_ADMIN_TOKEN": ADMIN_TOKEN,
        "RESILIENCE_REDIS_SOCKET_TIMEOUT": "0.25",
        "RESILIENCE_REDIS_CONNECT_TIMEOUT": "0.25",
        "RESILIENCE_AUDIT_SPILL_PATH": str(folder / "spill.jsonl"),
        "DATABASE_URL": database_url,
        "EXAMPLE_BREAKER_OPEN_SECONDS": "2",
        **extra,
    }


@contextmanager
def app_stack(
    postgres: OwnPostgres,
    folder: Path,
    *,
    workers: int = 4,
    redis_url: str | None = None,
    database_url: str | None = None,
    extra: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """The example app under gunicorn on its own Redis (unless ``redis_url``) and a new
    database (unless ``database_url``); its audit journal and logs in ``folder``."""
    own = None if redis_url else OwnRedis(folder)
    database_url = database_url or postgres.create_database()
    env = stack_env(redis_url or (own.url if own else ""), database_url, folder, **(extra or {}))
    try:
        options = ("--error-logfile", str(folder / "gunicorn.log"), "--graceful-timeout", "5")
        with gunicorn(env, *options, workers=workers) as server:
            yield Stack(server, own, database_url, folder)
    finally:
        if own is not None:
            own.stop()


# -- load --------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One request's outcome; ``status`` 0 when the connection failed."""

    started: float
    finished: float
    status: int
    headers: dict[str, str]
    body: bytes
    tag: str = ""


def call(
    session: requests.Session, method: str, url: str, tag: str = "", timeout: float = 10, **kwargs: Any
) -> Answer:
    started = time.monotonic()
    try:
        response = session.request(method, url, timeout=timeout, **kwargs)
    except requests.RequestException:
        return Answer(started, time.monotonic(), 0, {}, b"", tag)
    return Answer(
        started, time.monotonic(), response.status_code, dict(response.headers), response.content, tag
    )


@dataclass
class Load:
    """``threads`` threads calling ``request(session, number)`` until ``stop()``,
    at most ``limit`` calls each and never past ``seconds``."""

    request: Callable[[requests.Session, int], Answer | list[Answer]]
    threads: int = 4
    limit: int = 2_000
    seconds: float = 30.0
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._workers = [threading.Thread(target=self._run, args=(index,)) for index in range(self.threads)]

    def _run(self, index: int) -> None:
        deadline = time.monotonic() + self.seconds
        with requests.Session() as session:
            for number in range(self.limit):
                if self._stopping.is_set() or time.monotonic() > deadline:
                    return
                answer = self.request(session, index * self.limit + number)
                with self._lock:
                    self.answers.extend(answer if isinstance(answer, list) else [answer])

    def __enter__(self) -> Load:
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Answer]:
        self._stopping.set()
        for worker in self._workers:
            worker.join(self.seconds + 15)
        with self._lock:
            return sorted(self.answers, key=lambda answer: answer.started)


def pause(seconds: float) -> None:
    """Let the load run for ``seconds`` of wall time (the scenario's outage, not a wait for time)."""
    threading.Event().wait(seconds)


def statuses(answers: list[Answer]) -> dict[int, int]:
    counted: dict[int, int] = {}
    for answer in answers:
        counted[answer.status] = counted.get(answer.status, 0) + 1
    return dict(sorted(counted.items()))
