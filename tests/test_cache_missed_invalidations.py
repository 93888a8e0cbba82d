"""Invalidations that Redis missed are kept and applied once it answers again.

A write that invalidates while Redis does not answer (stopped, a cluster
master lost, a timeout) must not leave the old entry in Redis and in the
other processes' L1 for their whole TTL: the process that could not tell
Redis keeps the invalidation, drops its own copies at once, and applies and
publishes it on its first use of Redis after the outage.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.typing import ResponseReturnValue

from flask_resilience import (
    clear_all_caches,
    invalidate_cache,
    invalidate_cache_by_pattern,
    invalidate_cache_by_tag,
)
from flask_resilience.cache.owed import Debt
from flask_resilience.cache.service import AppCache
from flask_resilience.stores.redis import StoreUnavailableError
from tests.cache_outage import Server, stopped, version_of
from tests.cache_outage import outage_app as _app
from tests.clock import FakeClock, eventually
from tests.conftest import MakeApp


def _writer_and_reader(make_app: MakeApp, url: str) -> tuple[dict[str, int], tuple[Flask, FakeClock], Flask]:
    """Two "processes" showing one source (version 1): the writer (and its
    cool-down clock) invalidates, the reader must hear of it."""
    source = {"version": 1}
    writer = _app(make_app, url, source)
    reader, _ = _app(make_app, url, source)
    return source, writer, reader


INVALIDATIONS: dict[str, Callable[[], Any]] = {
    "tag": lambda: invalidate_cache_by_tag("items"),
    "key": lambda: invalidate_cache("api:/item"),
    "glob": lambda: invalidate_cache_by_pattern("api:/it*"),
    "regex": lambda: invalidate_cache_by_pattern(re.compile(r"/item$")),
    "clear": clear_all_caches,
}


@pytest.mark.parametrize("invalidate", INVALIDATIONS.values(), ids=INVALIDATIONS.keys())
def test_an_invalidation_redis_missed_reaches_every_process_once_it_answers(
    make_app: MakeApp, throwaway_redis: Server, invalidate: Callable[[], Any]
) -> None:
    url, server = throwaway_redis
    source, (writer, writer_clock), reader = _writer_and_reader(make_app, url)
    assert version_of(reader) == (1, "MISS")
    assert version_of(reader) == (1, "HIT")  # in the reader's L1 now
    assert version_of(writer)[0] == 1
    with stopped(server):
        source["version"] = 2
        with writer.app_context(), pytest.raises(StoreUnavailableError):
            invalidate()  # the caller still learns Redis was not told
        # The writer itself never serves what it invalidated, even from its own L1.
        assert version_of(writer)[0] == 2
        assert AppCache.of(writer).stats()["l2"]["pending_invalidations"] == 1
    writer_clock.advance(1.5)  # past the cool-down: the writer's next request uses Redis again
    assert version_of(writer)[0] == 2
    assert AppCache.of(writer).stats()["l2"]["pending_invalidations"] == 0
    assert eventually(lambda: version_of(reader)[0] == 2), "the reader's L1 kept the old entry"
    fresh, _ = _app(make_app, url, source)  # a new process: L2 only
    assert version_of(fresh)[0] == 2


def test_missed_invalidations_are_applied_in_order_and_counted(
    make_app: MakeApp, throwaway_redis: Server
) -> None:
    url, server = throwaway_redis
    source, (writer, writer_clock), reader = _writer_and_reader(make_app, url)
    version_of(reader)
    with stopped(server), writer.app_context():
        for _ in range(3):  # the same invalidation thrice is owed once
            with pytest.raises(StoreUnavailableError):
                invalidate_cache_by_tag("items")
        with pytest.raises(StoreUnavailableError):
            invalidate_cache("api:/item")
        assert AppCache.of(writer).stats()["l2"]["pending_invalidations"] == 2
    source["version"] = 2
    writer_clock.advance(1.5)
    version_of(writer)
    stats = AppCache.of(writer).stats()
    assert stats["l2"]["pending_invalidations"] == 0
    assert stats["errors"]["invalidation_deferred"] == 4
    assert eventually(lambda: version_of(reader)[0] == 2)


def test_too_many_missed_invalidations_become_one_clear(make_app: MakeApp, throwaway_redis: Server) -> None:
    url, server = throwaway_redis
    source, (writer, writer_clock), reader = _writer_and_reader(make_app, url)
    version_of(reader)
    AppCache.of(writer).coherence.owed.max_owed = 3
    with stopped(server), writer.app_context():
        for number in range(4):  # each tries Redis, and times out
            with pytest.raises(StoreUnavailableError):
                invalidate_cache(f"api:/other/{number}")
        assert AppCache.of(writer).stats()["l2"]["pending_invalidations"] == 1
    source["version"] = 2
    writer_clock.advance(1.5)
    version_of(writer)
    assert AppCache.of(writer).stats()["l2"]["pending_invalidations"] == 0
    assert eventually(lambda: version_of(reader)[0] == 2), "the clear that replaced them did not reach"


def test_after_one_invalidation_fails_the_rest_of_the_write_are_owed_without_waiting(
    make_app: MakeApp, throwaway_redis: Server
) -> None:
    url, server = throwaway_redis
    source, (writer, writer_clock), reader = _writer_and_reader(make_app, url)
    version_of(reader)
    with stopped(server), writer.app_context(), pytest.raises(StoreUnavailableError):
        # one timeout, not three: the tags after the first failure are not tried
        invalidate_cache_by_tag("flights", "bookings", "items")
    stats = AppCache.of(writer).stats()
    assert stats["l2"]["pending_invalidations"] == 3
    assert stats["tag_invalidations"] == 3
    assert stats["errors"]["l2_invalidate"] == 1
    source["version"] = 2
    assert version_of(writer)[0] == 2  # "items", the last, is not trusted here either
    writer_clock.advance(1.5)
    version_of(writer)
    assert AppCache.of(writer).stats()["l2"]["pending_invalidations"] == 0
    assert eventually(lambda: version_of(reader)[0] == 2)


def test_a_write_view_whose_invalidation_redis_missed_still_answers_and_owes_it(
    make_app: MakeApp, throwaway_redis: Server
) -> None:
    from flask_resilience import invalidates

    url, server = throwaway_redis
    source, (writer, writer_clock), reader = _writer_and_reader(make_app, url)

    @writer.post("/item")
    @invalidates(tags=["items"], keys=["api:/item"])
    def change() -> ResponseReturnValue:
        source["version"] += 1
        return "", 204

    version_of(reader)
    with stopped(server):
        assert writer.test_client().post("/item").status_code == 204
    assert AppCache.of(writer).stats()["l2"]["pending_invalidations"] == 2
    writer_clock.advance(1.5)
    assert version_of(writer)[0] == 2
    assert eventually(lambda: version_of(reader)[0] == 2)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_child_forked_while_a_thread_settles_still_settles(make_app: MakeApp, redis_url: str) -> None:
    """The settling lock (and the debts' lock) may be held by a thread of the
    parent at fork time; that thread does not exist in the child."""
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url, RESILIENCE_AUDIT_ENABLED=False)
    coherence = AppCache.of(app).coherence
    coherence.owed.owe(Debt(("key", "api:/owed-before-fork", 0)))
    with coherence._settling:  # a settling thread of the parent, frozen by the fork
        pid = os.fork()
        if pid == 0:  # the child: report through the exit status, never return into pytest
            code = 1
            try:
                coherence.settle()
                code = 0 if coherence.pending() == 0 else 2
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child never settled what it inherited"
