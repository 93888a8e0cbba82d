"""Process-local background workers: lazy start, stop with flush, restart, fork."""

from __future__ import annotations

import multiprocessing
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, make_url, text

from flask_resilience.audit.service import AppAudit
from flask_resilience.lifecycle import ProcessLocalWorker, fork_generation
from flask_resilience.state import get_state
from tests.conftest import MakeApp


class Collector(ProcessLocalWorker):
    def __init__(self) -> None:
        super().__init__("test-collector")
        self.pending: list[int] = []
        self.done: list[int] = []
        self.lock = threading.Lock()
        self.resets = 0

    def reset_process(self) -> None:
        self.resets += 1

    def submit(self, item: int) -> None:
        self.in_this_process()
        with self.lock:
            self.pending.append(item)
        self.ensure_running()
        self.wake()

    def run(self) -> None:
        while not self.wait(None):
            self.flush()

    def flush(self) -> None:
        with self.lock:
            items, self.pending = self.pending, []
        self.done.extend(items)


@pytest.fixture
def worker() -> Iterator[Collector]:
    collector = Collector()
    yield collector
    collector.stop()


def test_thread_starts_on_first_use_only(worker: Collector) -> None:
    assert not worker.is_running()
    worker.submit(1)
    assert worker.is_running()


def test_stop_flushes_and_is_idempotent_and_a_later_use_starts_again(worker: Collector) -> None:
    worker.submit(1)
    worker.stop()
    assert not worker.is_running()
    worker.stop()
    with worker.lock:
        worker.pending.append(2)  # arrived without waking anyone
    worker.stop()
    assert 2 in worker.done
    worker.submit(3)
    assert worker.is_running()
    worker.stop()
    assert sorted(worker.done) == [1, 2, 3]


class Crashing(Collector):
    """Its thread dies on the first item it sees."""

    def run(self) -> None:
        while not self.wait(None):
            if self.pending:
                raise RuntimeError("the worker's own bug")


def test_a_thread_that_died_reads_as_not_running_and_is_started_again() -> None:
    crashing = Crashing()
    try:
        crashing.submit(1)
        thread = crashing._thread
        assert thread is not None
        thread.join(10)  # it raised (and logged): the middleware must see it gone
        assert not crashing.is_running()
        crashing.ensure_running()
        assert crashing.is_running() and crashing._thread is not thread
    finally:
        crashing.stop(flush=False)


def _child(worker: Collector, queue: multiprocessing.queues.Queue[tuple[int, bool, int]]) -> None:
    running_before = worker.is_running()
    worker.submit(7)
    worker.stop()
    queue.put((worker.resets, running_before, len(worker.done)))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_forked_child_starts_its_own_thread(worker: Collector) -> None:
    worker.submit(1)
    generation = fork_generation()
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.queues.Queue[tuple[int, bool, int]] = context.Queue()
    child = context.Process(target=_child, args=(worker, queue))
    child.start()
    resets, running_before, done = queue.get(timeout=10)
    child.join(10)
    assert child.exitcode == 0
    assert resets == worker.resets + 1  # the child reset once
    assert not running_before  # the parent's thread is not the child's
    assert done >= 1
    assert fork_generation() == generation


@pytest.fixture
def own_schema(postgres_url: str) -> Iterator[str]:
    name = f"rt_fork_{uuid.uuid4().hex[:8]}"
    admin = create_engine(postgres_url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{name}"'))
    yield (
        make_url(postgres_url)
        .update_query_dict({"options": f"-csearch_path={name}"})
        .render_as_string(hide_password=False)
    )
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
    admin.dispose()


def _engine_of(app: Any) -> Engine:
    audit = AppAudit.of(app)
    checkpoints = audit.writer.checkpoints
    if checkpoints is not None and checkpoints.database_uri is not None:
        return checkpoints.engine(audit.engine())
    engine = get_state(app).database.engine()
    assert engine is not None
    return engine


def _backend_pid(app: Any, queue: multiprocessing.queues.Queue[int]) -> None:
    with app.app_context():
        engine = _engine_of(app)
        with engine.connect() as connection:
            queue.put(int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one()))


@pytest.mark.parametrize("engine_owner", ["flask_sqlalchemy", "ours", "checkpoints"])
def test_a_forked_child_never_reuses_the_parents_database_connections(
    make_app: MakeApp, postgres_url: str, own_schema: str, engine_owner: str
) -> None:
    """gunicorn --preload: a master that touched the database (create_all,
    an audit flush) must not hand its pooled sockets to every worker."""
    from flask_sqlalchemy import SQLAlchemy

    db = None
    if engine_owner == "ours":
        app, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=postgres_url)
    elif engine_owner == "checkpoints":  # a database of their own: a schema of this test's
        app, _ = make_app(RESILIENCE_AUDIT_CHECKPOINT_DATABASE_URI=own_schema)
    else:
        app, _ = make_app(SQLALCHEMY_DATABASE_URI=postgres_url)
        db = SQLAlchemy(app)
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.queues.Queue[int] = context.Queue()
    _backend_pid(app, queue)  # the parent's connection, back in the pool
    parent_pid = queue.get(timeout=10)
    child = context.Process(target=_backend_pid, args=(app, queue))
    child.start()
    child_pid = queue.get(timeout=10)
    child.join(10)
    assert child.exitcode == 0
    assert child_pid != parent_pid
    _backend_pid(app, queue)
    assert queue.get(timeout=10) == parent_pid  # the parent keeps its own
    if db is not None:
        with app.app_context():
            db.engine.dispose()
