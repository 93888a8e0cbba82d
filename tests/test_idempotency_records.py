"""Redis records with either claim command: ``SET NX PX GET`` (Redis >= 7.0) or the Lua script.

The Lua claim is what older servers get; forcing it here keeps that path
tested on any server. Both must claim exactly once, leave the holder's value
and lease untouched, and read back what holds the key.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from flask_resilience.idempotency.protocol import Completed, InFlight
from flask_resilience.idempotency.records import RedisRecords, completed_value
from flask_resilience.responses import StoredResponse
from flask_resilience.stores.redis import RedisStore, build_client


@pytest.fixture(params=["single", pytest.param("cluster", marks=pytest.mark.cluster)])
def store(request: pytest.FixtureRequest, key_prefix: str) -> Iterator[RedisStore]:
    if request.param == "single":
        client = build_client(
            request.getfixturevalue("redis_url"), False, socket_timeout=2, connect_timeout=2
        )
    else:
        nodes: list[tuple[str, int]] = request.getfixturevalue("cluster_nodes")
        client = build_client(None, tuple(nodes), socket_timeout=2, connect_timeout=2)
    built = RedisStore(client, key_prefix)
    yield built
    built.delete_matching("*")
    built.close()


@pytest.fixture(params=[True, False], ids=["set-nx-get", "lua"])
def records(request: pytest.FixtureRequest, store: RedisStore) -> RedisRecords:
    set_get: bool = request.param
    if set_get and store.server_version() < (7, 0):
        pytest.skip("SET NX GET needs Redis 7.0")
    built = RedisRecords(store, set_get=set_get)
    assert built.claims_with_set_get() is set_get
    return built


def test_the_server_version_chooses_the_claim_command(store: RedisStore) -> None:
    assert RedisRecords(store).claims_with_set_get() is (store.server_version() >= (7, 0))


def test_a_claim_holds_the_key_and_a_second_claim_reads_it(records: RedisRecords, store: RedisStore) -> None:
    first = records.claim("s:k:r", "fp", lease=30)
    assert first.owner is not None and first.existing is None
    second = records.claim("s:k:r", "fp-other", lease=1)
    assert second.owner is None
    assert second.existing == InFlight("fp", first.owner)
    assert 29_000 < store.client.pttl(store.key("idem", "s:k:r")) <= 30_000  # the loser left the lease alone


def test_a_completed_record_is_what_a_later_claim_reads(records: RedisRecords) -> None:
    claim = records.claim("s:k:done", "fp", lease=30)
    response = StoredResponse(201, (("Content-Type", "application/json"),), b'{"ok":true}', 1000.0)
    record = Completed("fp", 1060.0, response)
    assert records.complete("s:k:done", claim.claimed, completed_value(record), ttl=60)
    assert records.claim("s:k:done", "fp", lease=30).existing == record


def test_a_released_key_can_be_claimed_again(records: RedisRecords) -> None:
    claim = records.claim("s:k:again", "fp", lease=30)
    assert records.release("s:k:again", claim.claimed)
    assert records.claim("s:k:again", "fp", lease=30).owner is not None


def test_concurrent_claims_have_exactly_one_winner(records: RedisRecords) -> None:
    threads, rounds = 8, 20
    winners: list[list[str]] = [[] for _ in range(rounds)]
    barrier = threading.Barrier(threads)

    def claimer() -> None:
        for round_ in range(rounds):
            barrier.wait()
            claim = records.claim(f"s:k:race-{round_}", "fp", lease=30)
            if claim.owner is not None:
                winners[round_].append(claim.owner)
            else:
                assert isinstance(claim.existing, InFlight)

    workers = [threading.Thread(target=claimer) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert [len(owners) for owners in winners] == [1] * rounds
