"""The Redis store on one Redis and on a 3-master Redis Cluster."""

from __future__ import annotations

import multiprocessing
import os
import queue
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest
import redis

from flask_resilience.stores.redis import RedisStore, StoreUnavailableError, build_client, parse_version
from tests.services import free_port, start_redis_server


def _store(url: str | None, prefix: str, cluster: bool | tuple[tuple[str, int], ...] = False) -> RedisStore:
    client = build_client(url, cluster, socket_timeout=0.5, connect_timeout=0.5)
    return RedisStore(client, prefix)


@pytest.fixture(params=["single", pytest.param("cluster", marks=pytest.mark.cluster)])
def store(request: pytest.FixtureRequest, key_prefix: str) -> Iterator[RedisStore]:
    if request.param == "single":
        built = _store(request.getfixturevalue("redis_url"), key_prefix)
    else:
        nodes: list[tuple[str, int]] = request.getfixturevalue("cluster_nodes")
        built = _store(None, key_prefix, tuple(nodes))
    yield built
    for key in list(built.scan()):
        built.delete(key)
    built.close()


def test_round_trip(store: RedisStore) -> None:
    key = store.key("round", "trip")
    assert store.get(key) is None
    assert store.set(key, b"\x00value\xff") is True
    assert store.get(key) == b"\x00value\xff"
    assert store.delete(key) == 1
    assert store.get(key) is None


def test_every_key_is_under_the_prefix(store: RedisStore, key_prefix: str) -> None:
    key = store.key("a", "b")
    assert key == f"{key_prefix}a:b"
    store.set(key, b"1")
    assert store.client.get(f"{key_prefix}a:b") == b"1"
    assert store.channel("cache") == f"{key_prefix}channel:cache"


def test_set_only_if_absent_and_ttl(store: RedisStore) -> None:
    key = store.key("lease")
    assert store.set(key, b"first", ttl=30, only_if_absent=True) is True
    assert store.set(key, b"second", ttl=30, only_if_absent=True) is False
    assert store.get(key) == b"first"
    remaining = store.client.pttl(key)
    assert 0 < int(remaining) <= 30_000


def test_scan_sees_only_our_prefix(store: RedisStore, key_prefix: str) -> None:
    mine = [store.key("scan", str(i)) for i in range(25)]
    for key in mine:
        store.set(key, b"x")
    foreign = f"other-{key_prefix}scan:1"
    store.client.set(foreign, b"x")
    try:
        assert sorted(store.scan("scan:*")) == sorted(mine)
    finally:
        store.client.delete(foreign)


def test_delete_matching_removes_only_matching_keys_in_batches(store: RedisStore, key_prefix: str) -> None:
    doomed = [store.key("dm", "a", str(i)) for i in range(23)]
    kept = [store.key("dm", "b", str(i)) for i in range(3)]
    for key in doomed + kept:
        store.set(key, b"x")
    foreign = f"other-{key_prefix}dm:a:1"
    store.client.set(foreign, b"x")
    try:
        assert store.delete_matching("dm:a:*", batch=5) == 23
        assert sorted(store.scan("dm:*")) == sorted(kept)
        assert store.client.get(foreign) == b"x"
    finally:
        store.client.delete(foreign)


def test_listening_since_tracks_confirmed_subscriptions(store: RedisStore) -> None:
    subscriber = store.subscriber
    store.subscribe(store.channel("since-a"), lambda _message: None)
    assert subscriber.listening_since() is None  # nothing confirmed before the thread runs
    assert subscriber.wait_until_listening()
    first = subscriber.listening_since()
    assert first is not None
    store.subscribe(store.channel("since-b"), lambda _message: None)
    assert subscriber.listening_since() is None  # a channel not confirmed yet
    assert subscriber.wait_until_listening()
    second = subscriber.listening_since()
    assert second is not None and second >= first


def test_keys_sharing_a_slot_run_in_one_script(store: RedisStore) -> None:
    # On a cluster, a script over keys in different slots fails with CROSSSLOT.
    keys = [store.key("state", slot="breaker:flights"), store.key("window", slot="breaker:flights")]
    script = store.script(
        "redis.call('SET', KEYS[1], ARGV[1]); redis.call('SET', KEYS[2], ARGV[2]); return 2"
    )
    assert store.run_script(script, keys, ["open", "3"]) == 2
    assert store.get(keys[0]) == b"open"
    assert store.get(keys[1]) == b"3"


def test_publish_reaches_subscriber(store: RedisStore) -> None:
    received: queue.Queue[bytes] = queue.Queue()
    channel = store.channel("events")
    store.subscribe(channel, received.put)
    assert store.subscriber.wait_until_listening(10)
    store.publish(channel, b"invalidate:flights")
    assert received.get(timeout=10) == b"invalidate:flights"


def test_ping_returns_latency(store: RedisStore) -> None:
    assert store.ping() >= 0


def test_dead_port_raises_store_unavailable(key_prefix: str) -> None:
    store = _store(f"redis://127.0.0.1:{free_port()}/0", key_prefix)
    with pytest.raises(StoreUnavailableError, match="unavailable"):
        store.get(store.key("x"))
    with pytest.raises(StoreUnavailableError):
        store.ping()
    store.close()


def test_silent_server_times_out_instead_of_hanging(key_prefix: str) -> None:
    # A socket that accepts connections but never answers: a hung Redis.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        client = build_client(f"redis://127.0.0.1:{port}/0", False, socket_timeout=0.2, connect_timeout=0.2)
        store = RedisStore(client, key_prefix)
        with pytest.raises(StoreUnavailableError, match=r"[Tt]imeout"):
            store.get(store.key("x"))
        store.close()


def test_listener_reconnects_after_redis_restarts(key_prefix: str) -> None:
    directory = tempfile.mkdtemp(prefix="resilience-restart-")
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = start_redis_server(directory, port)
    store = _store(url, key_prefix)
    received: queue.Queue[bytes] = queue.Queue()
    gaps = threading.Event()
    try:
        channel = store.channel("restart")
        store.subscriber.on_gap(gaps.set)
        store.subscribe(channel, received.put)
        assert store.subscriber.wait_until_listening(10)
        store.publish(channel, b"before")
        assert received.get(timeout=10) == b"before"

        server.terminate()
        server.wait(10)
        assert gaps.wait(10), "losing the connection must be reported"
        with pytest.raises(StoreUnavailableError):
            store.publish(channel, b"lost")

        gaps.clear()
        server = start_redis_server(directory, port)
        assert store.subscriber.wait_until_listening(15)
        assert gaps.wait(10), "coming back must be reported too: messages may have been missed"
        store.publish(channel, b"after")
        assert received.get(timeout=10) == b"after"
        assert store.subscriber.disconnects == 1
    finally:
        store.close()
        server.terminate()
        server.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def _child_listens(store: RedisStore, channel: str, pipe: Connection) -> None:
    # In the forked child, as in a gunicorn worker: nothing subscribes again,
    # the per-request hook just makes sure this process has its listener.
    received: queue.Queue[bytes] = queue.Queue()
    store.subscriber.subscribe(channel + ":child", received.put)
    store.subscriber.ensure_running()
    ready = store.subscriber.wait_until_listening(10)
    pipe.send(("ready", ready, os.getpid()))
    try:
        pipe.send(("message", received.get(timeout=10)))
    except queue.Empty:
        pipe.send(("message", None))
    store.close()


# gunicorn forks workers from a threaded master just the same; Python 3.12 warns about it.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_listener_works_in_a_forked_worker(redis_url: str, key_prefix: str) -> None:
    store = _store(redis_url, key_prefix)
    channel = store.channel("fork")
    store.subscribe(channel, lambda _message: None)
    assert store.subscriber.wait_until_listening(10)

    context = multiprocessing.get_context("fork")
    parent_end, child_end = context.Pipe()
    child = context.Process(target=_child_listens, args=(store, channel, child_end))
    child.start()
    try:
        assert parent_end.poll(15)
        kind, ready, child_pid = parent_end.recv()
        assert (kind, ready) == ("ready", True)
        assert child_pid != os.getpid()
        store.publish(channel + ":child", b"to-the-worker")
        assert parent_end.poll(15)
        assert parent_end.recv() == ("message", b"to-the-worker")
    finally:
        child.join(15)
        store.close()
    assert child.exitcode == 0


def test_redis_errors_do_not_leak_redis_exceptions(key_prefix: str) -> None:
    store = _store(f"redis://127.0.0.1:{free_port()}/0", key_prefix)
    with pytest.raises(StoreUnavailableError) as excinfo:
        list(store.scan("*"))
    assert isinstance(excinfo.value.__cause__, redis.RedisError)
    store.close()


def test_script_runs_by_sha_and_survives_a_flushed_script_cache(throwaway_redis: tuple[str, object]) -> None:
    url, _process = throwaway_redis
    own = _store(url, "lua:")
    script = own.script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert own.run_script(script, [own.key("n")], [2]) == 2
    own.client.script_flush()  # the server forgets it (as after a restart): NOSCRIPT, loaded again
    assert own.run_script(script, [own.key("n")], [3]) == 5
    assert own.client.script_exists(script.sha) == [True]
    own.close()


def test_server_version_is_asked_once_and_parsed(store: RedisStore, raw_redis: redis.Redis) -> None:
    version = store.server_version()
    expected = tuple(int(part) for part in str(raw_redis.info("server")["redis_version"]).split("."))
    assert version == expected
    assert store.server_version() is version


def test_set_absent_or_get_claims_once_and_leaves_the_holder_alone(store: RedisStore) -> None:
    if store.server_version() < (7, 0):
        pytest.skip("SET NX GET needs Redis 7.0")
    key = store.key("claim")
    assert store.set_absent_or_get(key, b"first", 30) is None
    assert store.set_absent_or_get(key, b"second", 1) == b"first"
    assert store.get(key) == b"first"
    assert 29_000 < store.client.pttl(key) <= 30_000  # the loser did not touch the lease


def test_parse_version() -> None:
    assert parse_version("7.0.15") == (7, 0, 15)
    assert parse_version("6.2.7-rc1") == (6, 2)
    assert parse_version("") == ()
