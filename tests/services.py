"""Find the real services the tests need, or start throwaway ones.

Order for each service: the ``RESILIENCE_TEST_*_URL`` variable when set (it
must answer), else the local default port, else a throwaway server started
from binaries on PATH in a temporary folder, else an error naming what to
install. Nothing here skips a test.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import redis
import sqlalchemy

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_MYSQL_URL = "mysql+pymysql://root@127.0.0.1:3306/test"


class ServiceUnavailable(RuntimeError):
    """A service the tests need is not reachable and cannot be started."""


@dataclass
class Service:
    url: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    @property
    def throwaway(self) -> bool:
        return bool(self.processes or self.cleanups)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        for cleanup in reversed(self.cleanups):
            cleanup()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 45000)
        if _port_is_free(port) and _port_is_free(port + 10000):
            return port
    raise ServiceUnavailable("found no free port pair for a Redis Cluster node")


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise ServiceUnavailable(f"{what} did not come up within {timeout:.0f} s")


# -- Redis -----------------------------------------------------------------


def redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def start_redis_server(directory: str, port: int | None = None, *extra: str) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceUnavailable(
            "redis-server is not on PATH; install Redis (Debian: apt-get install redis-server) "
            "or set RESILIENCE_TEST_REDIS_URL"
        )
    port = port or free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            directory,
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    wait_for(lambda: process.poll() is None and redis_answers(url), f"redis-server on port {port}")
    return process


def find_or_start_redis(env_url: str | None, default_url: str = DEFAULT_REDIS_URL) -> Service:
    if env_url:
        if not redis_answers(env_url):
            raise ServiceUnavailable(f"RESILIENCE_TEST_REDIS_URL={env_url} does not answer")
        return Service(env_url)
    if redis_answers(default_url):
        return Service(default_url)
    directory = tempfile.mkdtemp(prefix="resilience-redis-")
    port = free_port()
    process = start_redis_server(directory, port)
    return Service(
        f"redis://127.0.0.1:{port}/0", [process], [lambda: shutil.rmtree(directory, ignore_errors=True)]
    )


@contextlib.contextmanager
def redis_cluster(masters: int = 3) -> Iterator[list[tuple[str, int]]]:
    """A throwaway Redis Cluster of ``masters`` nodes on loopback."""
    cli = shutil.which("redis-cli")
    if cli is None or shutil.which("redis-server") is None:
        raise ServiceUnavailable("redis-server and redis-cli are needed for the cluster tests")
    directory = tempfile.mkdtemp(prefix="resilience-cluster-")
    processes: list[subprocess.Popen[bytes]] = []
    nodes: list[tuple[str, int]] = []
    try:
        for index in range(masters):
            node_dir = os.path.join(directory, str(index))
            os.mkdir(node_dir)
            port = free_cluster_port()
            processes.append(
                start_redis_server(
                    node_dir,
                    port,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                )
            )
            nodes.append(("127.0.0.1", port))
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *[f"{h}:{p}" for h, p in nodes],
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )

        def cluster_ok() -> bool:
            for host, port in nodes:
                client = redis.Redis(host=host, port=port, socket_timeout=1)
                try:
                    if client.cluster("info").get("cluster_state") != "ok":
                        return False
                finally:
                    client.close()
            return True

        wait_for(cluster_ok, "the Redis Cluster")
        yield nodes
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


# -- SQL databases ---------------------------------------------------------


def sql_answers(url: str) -> bool:
    engine = sqlalchemy.create_engine(url, connect_args=_connect_timeout(url))
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
        return True
    except sqlalchemy.exc.SQLAlchemyError:
        return False
    finally:
        engine.dispose()


def _connect_timeout(url: str) -> dict[str, object]:
    if url.startswith("postgresql"):
        return {"connect_timeout": 3}
    if url.startswith("mysql"):
        return {"connect_timeout": 3}
    return {}


def _start_postgres() -> Service:
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise ServiceUnavailable(
            "PostgreSQL is not reachable on 127.0.0.1:5432 and initdb/pg_ctl are not on PATH; "
            "install PostgreSQL (Debian: apt-get install postgresql) or set RESILIENCE_TEST_DATABASE_URL"
        )
    directory = tempfile.mkdtemp(prefix="resilience-pg-")
    run_as: list[str] = []
    if os.geteuid() == 0:
        # initdb refuses to run as root: run the throwaway server as 'postgres'.
        user = pwd.getpwnam("postgres")
        os.chown(directory, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data = os.path.join(directory, "data")
    port = free_port()
    subprocess.run(
        [*run_as, initdb, "-D", data, "-U", "postgres", "--auth=trust"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    subprocess.run(
        [
            *run_as,
            pg_ctl,
            "-D",
            data,
            "-w",
            "-l",
            os.path.join(directory, "log"),
            "-o",
            f"-p {port} -k {directory} -c listen_addresses=127.0.0.1",
            "start",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def stop() -> None:
        subprocess.run(
            [*run_as, pg_ctl, "-D", data, "-m", "fast", "stop"],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        shutil.rmtree(directory, ignore_errors=True)

    return Service(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", cleanups=[stop])


def find_or_start_postgres(env_url: str | None, default_url: str = DEFAULT_POSTGRES_URL) -> Service:
    if env_url:
        if not sql_answers(env_url):
            raise ServiceUnavailable(f"RESILIENCE_TEST_DATABASE_URL={env_url} does not answer")
        return Service(env_url)
    if sql_answers(default_url):
        return Service(default_url)
    return _start_postgres()


def find_mysql(env_url: str | None, default_url: str = DEFAULT_MYSQL_URL) -> Service:
    url = env_url or default_url
    if not sql_answers(url):
        raise ServiceUnavailable(
            f"MariaDB/MySQL does not answer at {url}; install and start MariaDB "
            "(Debian: apt-get install mariadb-server) or set RESILIENCE_TEST_MYSQL_URL"
        )
    return Service(url)


class ThrowawayPostgres:
    """A PostgreSQL cluster of our own, to kill (``pg_ctl stop -m immediate``)
    and start again on the same port; the shared server is never touched."""

    def __init__(self) -> None:
        initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise ServiceUnavailable("initdb and pg_ctl are needed to start a throwaway PostgreSQL")
        self._pg_ctl = pg_ctl
        self.directory = tempfile.mkdtemp(prefix="resilience-pg-fault-")
        self._run_as: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            user = pwd.getpwnam("postgres")
            os.chown(self.directory, user.pw_uid, user.pw_gid)
            self._run_as = ["runuser", "-u", "postgres", "--"]
        self._data = os.path.join(self.directory, "data")
        self.port = free_port()
        subprocess.run(
            [*self._run_as, initdb, "-D", self._data, "-U", "postgres", "--auth=trust", "--no-sync"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.start()

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self._run_as, self._pg_ctl, "-D", self._data, *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-w", "-l", os.path.join(self.directory, "log"), "-o", options, "start")

    def kill(self) -> None:
        """Stop at once, as a crash would (no checkpoint, connections cut)."""
        self._ctl("-w", "-m", "immediate", "stop")

    def close(self) -> None:
        subprocess.run(
            [*self._run_as, self._pg_ctl, "-D", self._data, "-m", "immediate", "stop"],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        shutil.rmtree(self.directory, ignore_errors=True)
