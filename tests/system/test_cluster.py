"""Scenario 8: the app against a 3-master Redis Cluster on loopback: one master
SIGKILLed under load and restarted (scenario 1), and exactly-once payments
(scenario 5)."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.services import ServiceUnavailable, redis_cluster, start_redis_server, wait_for
from tests.system.harness import OwnPostgres, app_stack
from tests.system.test_exactly_once import check_exactly_once
from tests.system.test_redis_outage import check_redis_outage

pytestmark = [pytest.mark.system, pytest.mark.cluster]

NODE_OPTIONS = (
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "2000",
)


def cluster_state(node: tuple[str, int]) -> str | None:
    """``cluster_state`` as ``node`` sees it (None when it does not answer)."""
    client = redis.Redis(*node, socket_timeout=1, decode_responses=True)
    try:
        return str(client.cluster("info").get("cluster_state"))
    except redis.RedisError:
        return None
    finally:
        client.close()


class Master:
    """One master of the cluster, killed by its pid and restarted on its port and folder."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        client = redis.Redis(host=host, port=port, decode_responses=True)
        self.pid = int(client.info("server")["process_id"])
        self.folder = str(client.config_get("dir")["dir"])
        client.close()
        self.restarted: subprocess.Popen[bytes] | None = None

    def kill(self, survivor: tuple[str, int]) -> None:
        """SIGKILL, then wait until ``survivor`` marks the cluster down (after
        the node timeout): from then on every key fails, also those on the
        masters that survived, and the writes made meanwhile cannot invalidate."""
        os.kill(self.pid, signal.SIGKILL)
        wait_for(lambda: cluster_state(survivor) == "fail", "the cluster to notice the lost master", 10)

    def restart(self) -> None:
        self.restarted = start_redis_server(self.folder, self.port, *NODE_OPTIONS)
        wait_for(lambda: cluster_state((self.host, self.port)) == "ok", "the cluster after the restart", 10)

    def stop(self) -> None:
        if self.restarted is not None and self.restarted.poll() is None:
            self.restarted.kill()
            self.restarted.wait(10)


@pytest.fixture
def cluster() -> Iterator[list[tuple[str, int]]]:
    """A cluster of this test's own (the session one must not lose a master)."""
    try:
        with redis_cluster() as nodes:
            yield nodes
    except ServiceUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


def cluster_env(nodes: list[tuple[str, int]]) -> dict[str, str]:
    return {"RESILIENCE_REDIS_CLUSTER": ",".join(f"{host}:{port}" for host, port in nodes)}


def prefix_listening_on(node: tuple[str, int]) -> str:
    """A key prefix whose cache invalidation channel hashes to a slot ``node``
    serves: the workers' listeners stay connected when another master dies,
    so nothing tells them they may have missed a message (the hard case)."""
    client = redis.Redis(*node, decode_responses=True)
    try:
        served = [(low, high) for low, high, (_, port, *_), *_ in client.cluster("slots") if port == node[1]]
        for number in range(10_000):
            prefix = f"sys-{uuid.uuid4().hex[:8]}-{number}:"
            slot = int(client.cluster("keyslot", f"{prefix}channel:cache"))
            if any(low <= slot <= high for low, high in served):
                return prefix
    finally:
        client.close()
    raise AssertionError(f"no prefix found whose channel {node} serves")


def test_one_master_killed_under_load(
    cluster: list[tuple[str, int]], own_postgres: OwnPostgres, tmp_path: Path
) -> None:
    host, port = cluster[0]
    master = Master(*cluster[1])
    try:
        extra = {**cluster_env(cluster), "RESILIENCE_KEY_PREFIX": prefix_listening_on(cluster[0])}
        with app_stack(own_postgres, tmp_path, redis_url=f"redis://{host}:{port}/0", extra=extra) as stack:
            check_redis_outage(
                stack,
                lambda: master.kill(cluster[0]),
                master.restart,
                "8 cluster: one master SIGKILL + restart",
                frozenset({201, 503}),
            )
    finally:
        master.stop()


def test_exactly_once_on_the_cluster(
    cluster: list[tuple[str, int]], own_postgres: OwnPostgres, tmp_path: Path
) -> None:
    host, port = cluster[0]
    with app_stack(
        own_postgres, tmp_path, redis_url=f"redis://{host}:{port}/0", extra=cluster_env(cluster)
    ) as stack:
        check_exactly_once(stack, "8 cluster: exactly once")
