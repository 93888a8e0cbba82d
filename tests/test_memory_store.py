"""The in-process LRU + TTL store."""

from __future__ import annotations

import random
import threading

import pytest

from flask_resilience.stores.memory import MemoryStore
from tests.clock import FakeClock


def test_round_trip_and_miss() -> None:
    store: MemoryStore[bytes] = MemoryStore()
    assert store.get("a") is None
    store.set("a", b"1")
    assert store.get("a") == b"1"
    assert "a" in store and "b" not in store
    assert store.delete("a") is True
    assert store.delete("a") is False
    stats = store.stats()
    assert (stats.hits, stats.misses) == (1, 1)


def test_lru_evicts_least_recently_used_first() -> None:
    store: MemoryStore[bytes] = MemoryStore(max_entries=3)
    for key in "abc":
        store.set(key, key.encode())
    store.get("a")  # a is now the most recent; b is the oldest
    store.set("d", b"d")
    assert list(store.keys()) == ["c", "a", "d"]
    assert store.get("b") is None
    assert store.stats().evictions == 1


def test_overwrite_refreshes_recency_without_growing() -> None:
    store: MemoryStore[bytes] = MemoryStore(max_entries=2)
    store.set("a", b"1")
    store.set("b", b"2")
    store.set("a", b"3")
    store.set("c", b"4")
    assert store.get("a") == b"3"
    assert store.get("b") is None
    assert len(store) == 2


def test_ttl_expiry_follows_the_injected_clock() -> None:
    clock = FakeClock()
    store: MemoryStore[bytes] = MemoryStore(clock=clock)
    store.set("short", b"x", ttl=5)
    store.set("forever", b"y")
    clock.advance(4.999)
    assert store.get("short") == b"x"
    clock.advance(0.001)
    assert store.get("short") is None
    assert "short" not in store
    assert store.get("forever") == b"y"
    assert store.stats().expirations == 1


def test_expired_entries_evicted_by_bounds_count_as_expirations() -> None:
    clock = FakeClock()
    store: MemoryStore[bytes] = MemoryStore(max_entries=1, clock=clock)
    store.set("old", b"x", ttl=1)
    clock.advance(2)
    store.set("new", b"y")
    stats = store.stats()
    assert (stats.expirations, stats.evictions) == (1, 0)


def test_invalid_ttl_and_bounds_are_rejected() -> None:
    store: MemoryStore[bytes] = MemoryStore()
    with pytest.raises(ValueError, match="ttl"):
        store.set("a", b"x", ttl=0)
    with pytest.raises(ValueError, match="max_entries"):
        MemoryStore(max_entries=0)
    with pytest.raises(ValueError, match="max_bytes"):
        MemoryStore(max_bytes=-1)


def test_byte_bound_evicts_until_it_fits() -> None:
    store: MemoryStore[bytes] = MemoryStore(max_entries=100, max_bytes=10)
    store.set("a", b"1234")
    store.set("b", b"1234")
    store.set("c", b"1234")  # 12 bytes > 10: a goes
    assert store.get("a") is None
    assert store.stats().bytes == 8
    store.set("b", b"1")  # replacing frees the old size
    assert store.stats().bytes == 5


def test_value_larger_than_byte_bound_is_not_stored() -> None:
    store: MemoryStore[bytes] = MemoryStore(max_bytes=4)
    store.set("a", b"12")
    assert store.set("big", b"12345") is False
    assert store.get("big") is None
    assert store.get("a") == b"12"


def test_delete_where_and_clear() -> None:
    store: MemoryStore[str] = MemoryStore()
    for key in ("user:1", "user:2", "flight:1"):
        store.set(key, key)
    assert store.delete_where(lambda key: key.startswith("user:")) == 2
    assert list(store.keys()) == ["flight:1"]
    assert store.clear() == 1
    assert store.stats().bytes == 0


def test_sixteen_threads_keep_the_store_consistent() -> None:
    store: MemoryStore[bytes] = MemoryStore(max_entries=64, max_bytes=64 * 20)
    barrier = threading.Barrier(16)
    gets = [0] * 16
    errors: list[BaseException] = []

    def hammer(index: int) -> None:
        rng = random.Random(index)
        barrier.wait()
        try:
            for _ in range(5000):
                key = f"k{rng.randrange(200)}"
                operation = rng.random()
                if operation < 0.5:
                    value = store.get(key)
                    gets[index] += 1
                    assert value is None or value == key.encode().ljust(len(value), b"-")
                elif operation < 0.9:
                    store.set(key, key.encode().ljust(rng.randrange(4, 20), b"-"))
                else:
                    store.delete(key)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors
    stats = store.stats()
    assert stats.hits + stats.misses == sum(gets)
    assert stats.entries == len(list(store.keys())) <= 64
    assert stats.bytes == sum(len(store.get(k) or b"") for k in list(store.keys()))
    assert stats.bytes <= 64 * 20
