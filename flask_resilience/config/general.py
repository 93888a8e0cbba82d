"""Settings every feature shares: Redis, the key prefix, the database."""

from __future__ import annotations

from typing import Any

from ..validators import (
    ClusterNodes,
    boolean,
    cluster_nodes,
    database_url,
    key_prefix,
    positive_number,
    redis_url,
)
from .setting import Setting

READ_SEED_ENV = Setting(
    "RESILIENCE_READ_SEED_ENV",
    True,
    boolean,
    "Read the seed's un-prefixed environment variables (CACHE_TTL, AUDIT_BUFFER_SIZE, ...).",
)
REDIS_URL = Setting(
    "RESILIENCE_REDIS_URL",
    None,
    redis_url,
    "Redis for shared state. Unset: in-process memory stores (one process only).",
)
REDIS_CLUSTER = Setting[bool | ClusterNodes](
    "RESILIENCE_REDIS_CLUSTER",
    False,
    cluster_nodes,
    "True to treat the Redis URL as a cluster node, or a list of 'host:port' startup nodes.",
)
REDIS_SOCKET_TIMEOUT = Setting(
    "RESILIENCE_REDIS_SOCKET_TIMEOUT",
    0.5,
    positive_number,
    "Seconds to wait for a Redis reply before treating Redis as unavailable.",
)
REDIS_CONNECT_TIMEOUT = Setting(
    "RESILIENCE_REDIS_CONNECT_TIMEOUT",
    0.5,
    positive_number,
    "Seconds to wait for a Redis connection.",
)
KEY_PREFIX = Setting(
    "RESILIENCE_KEY_PREFIX",
    "resilience:",
    key_prefix,
    "Prefix of every Redis key and channel the extension uses.",
)
DATABASE_URI = Setting(
    "RESILIENCE_AUDIT_DATABASE_URI",
    None,
    database_url,
    "SQLAlchemy URL for the audit table; unset: the app's Flask-SQLAlchemy engine.",
)

SECTION: tuple[Setting[Any], ...] = (
    READ_SEED_ENV,
    REDIS_URL,
    REDIS_CLUSTER,
    REDIS_SOCKET_TIMEOUT,
    REDIS_CONNECT_TIMEOUT,
    KEY_PREFIX,
    DATABASE_URI,
)
