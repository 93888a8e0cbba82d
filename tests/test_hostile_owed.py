"""Hostile review of b3ee156 (owed invalidations): each test states the promise
it attacks. Tests marked HOLDS passed on b3ee156 and are kept as regressions;
the others failed on it (see each docstring for the mechanism).

Where a race must be forced, a gate is put on one of the library's own
methods (never on Redis): the thread that settles is held at a named point
while another thread acts, then released.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask, jsonify
from flask.typing import ResponseReturnValue

from flask_resilience import cached, clear_all_caches, invalidate_cache, invalidate_cache_by_tag
from flask_resilience.cache.service import AppCache
from flask_resilience.state import get_state
from flask_resilience.stores.redis import StoreUnavailableError
from tests.cache_outage import Server, stopped, version_of
from tests.cache_outage import outage_app as _app
from tests.clock import FakeClock, eventually
from tests.conftest import MakeApp


def _pending(app: Flask) -> int:
    return AppCache.of(app).stats()["l2"]["pending_invalidations"]


class _Gate:
    """Holds calls of one of the app's own methods whose argument matches,
    until released; ``reached`` tells the test the thread got there."""

    def __init__(self, owner: Any, name: str, when: Callable[..., bool]) -> None:
        self.reached = threading.Event()
        self.release = threading.Event()
        original = getattr(owner, name)

        def gated(*args: Any, **kwargs: Any) -> Any:
            if when(*args, **kwargs) and not self.release.is_set():
                self.reached.set()
                assert self.release.wait(30), "gate never released"
            return original(*args, **kwargs)

        setattr(owner, name, gated)


def _acl(raw: redis.Redis, rule: str) -> None:
    """Allow (``+cmd``) or refuse (``-cmd``) a command to the throwaway server's default user."""
    raw.execute_command("ACL", "SETUSER", "default", rule)  # type: ignore[no-untyped-call]


def _in_thread(action: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    return thread


# -- 1. "applies and publishes it on its first request after the cool-down" -------------------


def test_first_request_after_the_cooldown_settles_even_when_it_does_not_use_the_cache(
    make_app: MakeApp, throwaway_redis: Server
) -> None:
    """FAILS on b3ee156. docs/cache.rst promises the owed invalidation is
    applied "on its first request after the one-second cool-down". settle()
    runs only from LayeredCache.trusted_since() (cached views, data cache,
    front tier), l2_answered() and a later successful invalidation: a worker
    whose next requests are uncached (a write endpoint, /ping, health) keeps
    owing it while every other process serves the old entry for its TTL."""
    url, server = throwaway_redis
    source = {"version": 1}
    writer, writer_clock = _app(make_app, url, source)
    reader, _ = _app(make_app, url, source)
    assert version_of(reader) == (1, "MISS")
    assert version_of(reader) == (1, "HIT")
    with stopped(server):
        source["version"] = 2
        with writer.app_context(), pytest.raises(StoreUnavailableError):
            invalidate_cache_by_tag("items")
    writer_clock.advance(1.5)
    assert writer.test_client().get("/ping").status_code == 200  # its first request: Redis answers
    assert _pending(writer) == 0, "the owed invalidation waited for a cached request"
    assert eventually(lambda: version_of(reader)[0] == 2)


# -- 2. "after the first failure the rest are owed without trying" -----------------------------


def test_after_a_failed_publish_the_rest_of_the_write_is_owed_without_trying(
    make_app: MakeApp, throwaway_redis: Server
) -> None:
    """FAILS on b3ee156. A publish that Redis did not take is a failure
    (l2_failed, owed), but Coherence._apply (coherence.py ~158-164) returns
    normally on it: invalidate() then runs _perform for every remaining
    operation, and _perform's settle() immediately lands the owed one again,
    ignoring the cool-down. Where PUBLISH times out (the node serving pub/sub
    lost, Redis dying between INCR and PUBLISH) each of those waits for a
    timeout. Here PUBLISH is refused by an ACL so the attempts can be counted."""
    url, _server = throwaway_redis
    source = {"version": 1}
    writer, _ = _app(make_app, url, source)
    raw = redis.Redis.from_url(url)
    try:
        _acl(raw, "-publish")
        with writer.app_context(), pytest.raises(StoreUnavailableError):
            invalidate_cache_by_tag("a", "b", "c")  # L2 took the first; its publish failed
        errors = AppCache.of(writer).stats()["errors"]
    finally:
        _acl(raw, "+publish")
        raw.close()
    assert errors.get("l2_publish") == 1, f"Redis was tried again after the first failure: {errors}"
    assert AppCache.of(writer).stats()["l2"]["pending_invalidations"] == 3  # a's message; b and c whole


def test_an_invalidation_redis_took_is_not_applied_again_while_only_its_publish_fails(
    make_app: MakeApp, throwaway_redis: Server
) -> None:
    """FAILS on b3ee156. When L2 took the invalidation and only the publish
    failed, _apply owes the whole operation (coherence.py ~163-164) and
    settle() calls _land again: L2 is invalidated again (INCR of the tag, a
    SCAN for a glob, a bump of "*" for a clear) on every settle while PUBLISH
    keeps failing (a Redis 7 ACL user without channel permissions, the
    pub/sub node of a cluster lost). Each request after each 1 s cool-down
    re-bumps the tag, so its entries never live more than a second in any
    process; an owed clear does that to the whole cache. Only the publish
    is owed."""
    url, _server = throwaway_redis
    source = {"version": 1}
    writer, writer_clock = _app(make_app, url, source)
    raw = redis.Redis.from_url(url)
    try:
        _acl(raw, "-publish")
        with writer.app_context():
            invalidate_cache_by_tag("items")  # Redis took it; nobody heard of it
        (counter,) = raw.scan_iter(match="*cache:t:items")
        bumped = raw.get(counter)  # a bump moves the counter to the server's clock: never twice alike
        for _ in range(5):
            writer_clock.advance(1.5)
            version_of(writer)
        later = raw.get(counter)
    finally:
        _acl(raw, "+publish")
        raw.close()
    assert later == bumped, f"the tag was invalidated in Redis again and again: {bumped!r} -> {later!r}"


# -- 3. "never again serves what it invalidated (neither from its L1 nor from L2)" -------------


def test_a_request_while_another_thread_settles_does_not_serve_the_owed_keys_old_l2_entry(
    make_app: MakeApp, throwaway_redis: Server
) -> None:
    """FAILS on b3ee156. An owed key (or glob/regex) invalidation only drops
    this process's L1 (coherence.py _apply_here); nothing keeps this process
    from reading the old L2 entry but L2 being skipped. While one thread
    settles (lock held, _l2_down_until still set but past), another request's
    settle() returns at once (non-blocking acquire), trusted_since() returns,
    and lookup_l2 (layered.py usable_l2: the clock is past) reads and serves
    the old L2 entry of a key not landed yet. A slow settle (a long owed list,
    a glob's SCAN, a slow Redis) widens this; the gate holds the settling
    thread on its first publish."""
    url, server = throwaway_redis
    source = {"version": 1}
    writer, writer_clock = _app(make_app, url, source)
    assert version_of(writer) == (1, "MISS")  # in L2 (and the writer's L1)
    with stopped(server), writer.app_context():
        for key in ("api:/other", "api:/item"):
            with pytest.raises(StoreUnavailableError):
                invalidate_cache(key)
    source["version"] = 2
    coherence = AppCache.of(writer).coherence
    gate = _Gate(coherence, "_publish_all", lambda messages: messages[0].get("key") == "api:/other")
    writer_clock.advance(1.5)
    settling = _in_thread(lambda: version_of(writer))  # its lookup settles, held on the first publish
    assert gate.reached.wait(10)
    try:
        served = version_of(writer)
    finally:
        gate.release.set()
        settling.join(10)
    assert served[0] == 2, f"the invalidating process served the old L2 entry: {served}"


# -- 4. a clear racing owed tags ------------------------------------------------------------


def test_a_tag_invalidation_failing_while_an_owed_clear_lands_is_not_lost(
    make_app: MakeApp, throwaway_redis: Server
) -> None:
    """FAILS on b3ee156. _owe (coherence.py ~231-236) does not record an
    operation while CLEAR is owed ("a clear owed covers everything owed after
    it"). But settle() lands the CLEAR (bump "*", resume_all) and deletes it
    from _owed only after its publish: a tag invalidation that fails in between
    is suspended but not recorded, and the CLEAR it relied on is then deleted
    as landed. The tag's counter in Redis is never bumped (a fresh process
    serves the entry filled before the write), and the writer keeps the tag
    suspended for good: TagVersions.learn ignores other processes' versions
    while suspended, so its own entries carrying the tag (stamped -1) survive
    every later invalidation of it by another process. (Redis refuses the
    INCRBY by ACL here: a SIGSTOPped Redis runs a timed-out one once resumed.)"""
    url, server = throwaway_redis
    source = {"version": 1}
    writer, writer_clock = _app(make_app, url, source)
    other, _ = _app(make_app, url, source)
    with stopped(server), writer.app_context(), pytest.raises(StoreUnavailableError):
        clear_all_caches()
    assert _pending(writer) == 1
    coherence = AppCache.of(writer).coherence
    gate = _Gate(coherence, "_publish_all", lambda messages: messages[-1].get("op") == "clear")
    writer_clock.advance(1.5)
    # Its lookup settles: the clear lands in Redis, and is held before it counts as landed.
    settling = _in_thread(lambda: writer.test_client().get("/other"))
    assert gate.reached.wait(10)
    raw = redis.Redis.from_url(url)
    try:
        filler, _ = _app(make_app, url, source)
        assert version_of(filler) == (1, "MISS")  # filled after the clear: current in Redis
        source["version"] = 2
        _acl(raw, "-time")  # the tag bump cannot run (it reads the clock): as if its master did not answer
        with writer.app_context(), pytest.raises(StoreUnavailableError):
            invalidate_cache_by_tag("items")
    finally:
        _acl(raw, "+time")
        raw.close()
        gate.release.set()
        settling.join(10)
    writer_clock.advance(1.5)
    assert writer.test_client().get("/other").status_code == 200  # Redis answers: all owed lands
    assert _pending(writer) == 0
    fresh, _ = _app(make_app, url, source)
    seen_by_fresh = version_of(fresh)
    assert version_of(writer)[0] == 2  # computed after the write (here, or by the fresh process)
    source["version"] = 3

    def received() -> int:
        return int(AppCache.of(writer).stats().get("invalidations_received", 0))

    before = received()
    with other.app_context():
        invalidate_cache_by_tag("items")  # Redis healthy: lands and is published
    assert eventually(lambda: received() > before)
    writer_after = version_of(writer)
    assert (seen_by_fresh[0], writer_after[0]) == (2, 3), (
        f"lost 'items' invalidation: a fresh process got {seen_by_fresh}; after another "
        f"process invalidated 'items' the writer still answered {writer_after}"
    )


# -- 5. a Flask-Caching L2 backend -------------------------------------------------------------


def test_a_write_invalidating_tags_and_patterns_on_flask_caching_still_invalidates_the_tags(
    make_app: MakeApp, key_prefix: str
) -> None:
    """FAILS on b3ee156. Coherence.invalidate builds every operation first
    (coherence.py ~112-114): with a Flask-Caching L2, self._pattern raises
    PatternsNeedRedis before any tag or key is invalidated. Before the change
    @invalidates invalidated the tags and keys, then raised on the pattern;
    now the write leaves every entry in place (L1 and L2) for its TTL."""
    from flask_caching import Cache

    from flask_resilience import Resilience, invalidates
    from flask_resilience.cache.backends import PatternsNeedRedis

    config: dict[str, Any] = {"CACHE_TYPE": "SimpleCache", "CACHE_KEY_PREFIX": f"fc-{key_prefix}"}
    cache = Cache(config=config)
    app, _ = make_app(Resilience(cache_backend=cache), RESILIENCE_AUDIT_ENABLED=False)
    cache.init_app(app, config=config)
    source = {"version": 1}

    @app.get("/routes")
    @cached(ttl=60, tags=["routes"])
    def routes() -> ResponseReturnValue:
        return jsonify(version=source["version"])

    @app.post("/routes")
    @invalidates(tags=["routes"], patterns=["routes*"])
    def change() -> ResponseReturnValue:
        source["version"] = 2
        return "", 204

    client = app.test_client()
    assert client.get("/routes").json == {"version": 1}
    with pytest.raises(PatternsNeedRedis):
        client.post("/routes")  # as before the change: the pattern cannot be applied
    assert client.get("/routes").json == {"version": 2}, "the tag the write named was not invalidated"


# -- what held ---------------------------------------------------------------------------


def test_holds_owed_invalidations_in_one_write_land_after_a_flap(
    make_app: MakeApp, throwaway_redis: Server
) -> None:
    """HOLDS. Redis flaps twice: the settle of the first outage fails, the
    second outage's invalidations join, everything lands once Redis answers,
    counts go back to 0, and both another process and a fresh one see it."""
    url, server = throwaway_redis
    source = {"version": 1}
    writer, writer_clock = _app(make_app, url, source)
    reader, _ = _app(make_app, url, source)
    version_of(reader)
    with stopped(server):
        source["version"] = 2
        with writer.app_context(), pytest.raises(StoreUnavailableError):
            invalidate_cache_by_tag("items", "other")
        writer_clock.advance(1.5)
        assert version_of(writer)[0] == 2  # the settle times out; still not the old entry
        with writer.app_context(), pytest.raises(StoreUnavailableError):
            invalidate_cache("api:/item")
        assert _pending(writer) == 3
    writer_clock.advance(1.5)
    assert version_of(writer)[0] == 2
    assert _pending(writer) == 0
    assert eventually(lambda: version_of(reader)[0] == 2)
    fresh, _ = _app(make_app, url, source)
    assert version_of(fresh)[0] == 2


def test_holds_the_listener_reconnecting_settles_without_a_request(
    make_app: MakeApp, throwaway_redis: Server, tmp_path: Any
) -> None:
    """HOLDS. Redis dies and restarts on its port: the pub/sub listener's
    reconnection settles what was owed (listener thread, no request), and the
    metric shows it while owed."""
    from flask_resilience.metrics.families import read
    from tests.services import start_redis_server

    url, server = throwaway_redis
    source = {"version": 1}
    writer, _ = _app(make_app, url, source)
    with stopped(server), writer.app_context(), pytest.raises(StoreUnavailableError):
        invalidate_cache_by_tag("items", "other")
    with writer.app_context():
        figures = {family.name: family for family in read(get_state(writer))}
    assert list(figures["resilience_cache_pending_invalidations"].values.values()) == [2]
    assert figures["resilience_cache_pending_invalidations"].kind == "gauge"
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    server.kill()
    server.wait(10)
    restarted = start_redis_server(str(tmp_path), port)
    try:
        assert eventually(lambda: _pending(writer) == 0, 20), "the reconnected listener did not settle"
        raw = redis.Redis.from_url(url)
        try:
            # Nothing but the owed invalidation touches this tag after the restart.
            counters = list(raw.scan_iter(match="*cache:t:items"))
        finally:
            raw.close()
        assert counters, "the owed 'items' invalidation did not reach the restarted Redis"
    finally:
        restarted.kill()
        restarted.wait(10)


def test_holds_healthy_cache_under_concurrent_invalidations_reads_and_settles(
    make_app: MakeApp, throwaway_redis: Server
) -> None:
    """HOLDS. Healthy Redis: threads invalidating (tags, keys, several tags,
    clears) while others read and fill; nothing raises, nothing is owed, and
    after the last write every process answers the last version."""
    url, _server = throwaway_redis
    source = {"version": 1}
    writer, _ = _app(make_app, url, source)
    reader, _ = _app(make_app, url, source)
    errors: list[BaseException] = []
    writes: list[Callable[[], Any]] = [
        lambda: invalidate_cache_by_tag("items"),
        lambda: invalidate_cache("api:/item"),
        lambda: invalidate_cache_by_tag("other", "items", "more"),
        clear_all_caches,
    ]

    def write(number: int) -> None:
        try:
            for round_ in range(60):
                source["version"] += 1
                with writer.app_context():
                    writes[(number + round_) % len(writes)]()
        except BaseException as exc:  # reported below
            errors.append(exc)

    def read_loop(app: Flask) -> None:
        try:
            for _ in range(120):
                version_of(app)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(3)]
    threads += [threading.Thread(target=read_loop, args=(app,)) for app in (writer, reader, writer, reader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert _pending(writer) == 0
    source["version"] += 1
    with writer.app_context():
        invalidate_cache_by_tag("items")
    final = source["version"]
    assert version_of(writer)[0] == final
    assert eventually(lambda: version_of(reader)[0] == final)


@pytest.mark.parametrize("kind", ["tag", "key", "clear"])
def test_holds_front_tier_and_data_cache_never_serve_what_a_missed_invalidation_named(
    make_app: MakeApp, throwaway_redis: Server, kind: str
) -> None:
    """HOLDS. The front tier (@cached(front=True), answered in the middleware
    from L1) and the data cache (get_or_set with tags) of the invalidating
    process, during the outage and after the settle."""
    url, server = throwaway_redis
    source = {"version": 1}
    app, extension = make_app(
        RESILIENCE_REDIS_URL=url,
        RESILIENCE_REDIS_SOCKET_TIMEOUT=0.2,
        RESILIENCE_REDIS_CONNECT_TIMEOUT=0.2,
        RESILIENCE_AUDIT_ENABLED=False,
    )

    @app.get("/front")
    @cached(ttl=300, tags=["items"], prefix="api", front=True)
    def front() -> ResponseReturnValue:
        return jsonify(version=source["version"])

    clock = FakeClock()
    AppCache.of(app).layered.outage_clock = clock
    store = get_state(app).redis
    assert store is not None and store.subscriber.wait_until_listening(10)
    client = app.test_client()

    def frontversion_of() -> tuple[int, str]:
        answer = client.get("/front")
        assert answer.json is not None
        return int(answer.json["version"]), answer.headers["Cache-Status"]

    def dataversion_of() -> int:
        with app.app_context():
            return int(
                extension.cache.get_or_set("d:item", lambda: source["version"], ttl=300, tags=["items"])
            )

    frontversion_of()
    frontversion_of()
    assert frontversion_of()[1].endswith("detail=front")
    assert dataversion_of() == 1 and dataversion_of() == 1
    invalidate: dict[str, Callable[[], Any]] = {
        "tag": lambda: invalidate_cache_by_tag("items"),
        "key": lambda: AppCache.of(app).coherence.invalidate(resources=["api:/front", "d:item"]),
        "clear": clear_all_caches,
    }
    with stopped(server):
        source["version"] = 2
        with app.app_context(), pytest.raises(StoreUnavailableError):
            invalidate[kind]()
        assert frontversion_of()[0] == 2
        assert dataversion_of() == 2
    clock.advance(1.5)
    assert [frontversion_of()[0] for _ in range(3)] == [2, 2, 2]
    assert dataversion_of() == 2
    assert _pending(app) == 0


def test_holds_embedded_mode_several_tags_in_one_call(make_app: MakeApp) -> None:
    """HOLDS. No Redis: invalidate_cache_by_tag with several tags bumps the
    local counters, owes nothing, and the entries carrying any of them go."""
    app, _ = make_app(RESILIENCE_AUDIT_ENABLED=False)
    source = {"version": 1}

    @app.get("/item")
    @cached(ttl=300, tags=["items"], prefix="api")
    def item() -> ResponseReturnValue:
        return jsonify(version=source["version"])

    assert AppCache.of(app).stats()["l2"]["backend"] is None
    assert version_of(app) == (1, "MISS")
    assert version_of(app) == (1, "HIT")
    source["version"] = 2
    with app.app_context():
        invalidate_cache_by_tag("other", "items")
    assert version_of(app) == (2, "MISS")
    assert _pending(app) == 0
