"""Shared fixtures: an app factory and real Redis / PostgreSQL / MariaDB / SQLite.

Each test gets its own Redis key prefix and each run its own PostgreSQL
schema and MariaDB database, so two runs (or two tests) never see each
other's data. A service that cannot be found or started fails the tests
that need it; nothing is skipped.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import redis
import sqlalchemy
from flask import Flask
from sqlalchemy.engine import make_url

from flask_resilience import Resilience
from flask_resilience.config import SETTINGS
from tests.services import (
    Service,
    ServiceUnavailable,
    find_mysql,
    find_or_start_postgres,
    find_or_start_redis,
    free_port,
    redis_cluster,
    start_redis_server,
)

RUN_ID = uuid.uuid4().hex[:8]
_test_numbers = itertools.count()


def _service(start: Callable[[], Service]) -> Service:
    try:
        return start()
    except ServiceUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(autouse=True)
def _clean_seed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed's variables (and RESILIENCE_* ones) in the developer's shell must not change test results."""
    for setting in SETTINGS:
        monkeypatch.delenv(setting.key, raising=False)
        if setting.env:
            monkeypatch.delenv(setting.env, raising=False)


@pytest.fixture(scope="session")
def redis_service() -> Iterator[Service]:
    service = _service(lambda: find_or_start_redis(os.environ.get("RESILIENCE_TEST_REDIS_URL")))
    yield service
    client = redis.Redis.from_url(service.url)
    try:
        for key in client.scan_iter(match=f"rt-{RUN_ID}-*", count=1000):
            client.delete(key)
    finally:
        client.close()
        service.stop()


@pytest.fixture
def redis_url(redis_service: Service) -> str:
    return redis_service.url


@pytest.fixture
def key_prefix() -> str:
    return f"rt-{RUN_ID}-{next(_test_numbers)}:"


@pytest.fixture
def raw_redis(redis_url: str) -> Iterator[redis.Redis]:
    client: redis.Redis = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def cluster_nodes() -> Iterator[list[tuple[str, int]]]:
    try:
        with redis_cluster() as nodes:
            yield nodes
    except ServiceUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    service = _service(lambda: find_or_start_postgres(os.environ.get("RESILIENCE_TEST_DATABASE_URL")))
    schema = f"rt_{RUN_ID}"
    engine = sqlalchemy.create_engine(service.url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f'CREATE SCHEMA "{schema}"'))
    yield (
        make_url(service.url)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()
    service.stop()


@pytest.fixture(scope="session")
def mysql_url() -> Iterator[str]:
    service = _service(lambda: find_mysql(os.environ.get("RESILIENCE_TEST_MYSQL_URL")))
    database = f"rt_{RUN_ID}"
    engine = sqlalchemy.create_engine(service.url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE `{database}`"))
    yield make_url(service.url).set(database=database).render_as_string(hide_password=False)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f"DROP DATABASE `{database}`"))
    engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'resilience.db'}"


class MakeApp(Protocol):
    def __call__(self, extension: Resilience | None = None, /, **config: Any) -> tuple[Flask, Resilience]: ...


@pytest.fixture
def make_app(tmp_path: Path, key_prefix: str) -> Iterator[MakeApp]:
    """Build ``(app, extension)`` with ``config`` applied before ``init_app``."""
    extensions: list[Resilience] = []

    def factory(extension: Resilience | None = None, /, **config: Any) -> tuple[Flask, Resilience]:
        app = Flask("resilience_test", instance_path=str(tmp_path / "instance"))
        app.config.update(TESTING=True, SECRET_KEY="test-secret-key", RESILIENCE_KEY_PREFIX=key_prefix)
        app.config.update(config)
        extension = extension or Resilience()
        extension.init_app(app)
        extensions.append(extension)
        return app, extension

    yield factory
    for extension in extensions:
        extension.shutdown()


@pytest.fixture
def throwaway_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of the test's own, to stop (SIGSTOP), kill or fill: ``(url, process)``."""
    port = free_port()
    process = start_redis_server(str(tmp_path), port)
    try:
        yield f"redis://127.0.0.1:{port}/0", process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.wait(10)
