"""Single flight: one computation per key per process, nothing allocated when uncontended."""

from __future__ import annotations

import threading

from flask_resilience.cache.flight import SingleFlight
from tests.clock import eventually


def test_an_uncontended_flight_allocates_no_event() -> None:
    flight = SingleFlight()
    with flight("k", 1.0) as leader:
        assert leader
        assert flight._inflight == {"k": None}
    assert flight._inflight == {}


def test_followers_wait_for_the_leader_then_follow() -> None:
    flight = SingleFlight()
    release = threading.Event()
    order: list[str] = []

    def lead() -> None:
        with flight("k", 10.0) as leader:
            assert leader
            order.append("leader in")
            release.wait(10)
            order.append("leader out")

    def follow() -> None:
        with flight("k", 10.0) as leader:
            order.append("follower" if not leader else "second leader")

    first = threading.Thread(target=lead)
    first.start()
    assert eventually(lambda: order == ["leader in"])
    followers = [threading.Thread(target=follow) for _ in range(3)]
    for thread in followers:
        thread.start()
    assert eventually(lambda: isinstance(flight._inflight.get("k"), threading.Event))
    assert order == ["leader in"]  # they wait
    release.set()
    for thread in [first, *followers]:
        thread.join(10)
    # None ran alongside the leader; one at least waited for it (a thread that
    # arrived after the leader left may lead a flight of its own).
    assert order[:2] == ["leader in", "leader out"]
    assert "follower" in order[2:] and len(order) == 5
    assert flight._inflight == {}
