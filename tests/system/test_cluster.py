"""Scenario 8: the app against a 3-master Redis Cluster on loopback: one master
SIGKILLed under load and restarted (scenario 1), and exactly-once payments
(scenario 5)."""

from __future__ import annotations

import os
import signal
import subprocess
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


class Master:
    """One master of the cluster, killed by its pid and restarted on its port and folder."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        client = redis.Redis(host=host, port=port, decode_responses=True)
        self.pid = int(client.info("server")["process_id"])
        self.folder = str(client.config_get("dir")["dir"])
        client.close()
        self.restarted: subprocess.Popen[bytes] | None = None

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)

    def restart(self) -> None:
        self.restarted = start_redis_server(self.folder, self.port, *NODE_OPTIONS)

        def cluster_ok() -> bool:
            client = redis.Redis(host=self.host, port=self.port, socket_timeout=1, decode_responses=True)
            try:
                return bool(client.cluster("info").get("cluster_state") == "ok")
            except redis.RedisError:
                return False
            finally:
                client.close()

        wait_for(cluster_ok, "the cluster after the restart", timeout=10)

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


def test_one_master_killed_under_load(
    cluster: list[tuple[str, int]], own_postgres: OwnPostgres, tmp_path: Path
) -> None:
    host, port = cluster[0]
    master = Master(*cluster[1])
    try:
        with app_stack(
            own_postgres, tmp_path, redis_url=f"redis://{host}:{port}/0", extra=cluster_env(cluster)
        ) as stack:
            check_redis_outage(
                stack,
                master.kill,
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
