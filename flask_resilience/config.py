"""Every configuration key of the extension, in one table.

A key is written once, as a :class:`Setting`: its name in ``app.config``, its
default, the seed's environment variable that may supply it, the parser that
validates it, and one line of documentation (README.rst lists the same table).

Precedence, highest first: a keyword argument to ``Resilience(...)``, a value
already in ``app.config``, the seed's environment variable, the default.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .validators import (
    ClusterNodes,
    Invalid,
    admin_token,
    boolean,
    breaker_defaults,
    cluster_nodes,
    database_url,
    flask_caching_cache,
    header_name,
    header_names,
    key_prefix,
    one_of,
    optional_callable,
    optional_str,
    positive_int,
    positive_number,
    redis_url,
    serializer,
    string_list,
    url_prefix,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One configuration key."""

    key: str
    default: T
    parse: Callable[[object], T]
    doc: str
    env: str | None = None

    @property
    def option(self) -> str:
        """The keyword accepted by ``Resilience(...)`` for this key."""
        return self.key.removeprefix("RESILIENCE_").lower()


# -- the table -------------------------------------------------------------

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
HEALTH_ENABLED = Setting(
    "RESILIENCE_HEALTH_ENABLED",
    True,
    boolean,
    "Register the health and metrics blueprint.",
)
HEALTH_PREFIX = Setting(
    "RESILIENCE_HEALTH_PREFIX",
    "/api/health",
    url_prefix,
    "URL prefix of the health blueprint.",
)
HEALTH_PUBLIC = Setting(
    "RESILIENCE_HEALTH_PUBLIC",
    False,
    boolean,
    "Serve statistics to non-admins (never per-user figures).",
)
ADMIN_TOKEN = Setting(
    "RESILIENCE_ADMIN_TOKEN",
    None,
    admin_token,
    "Bearer token for admin endpoints (at least 16 characters). Unset and no "
    "admin check: admin endpoints answer 403.",
)
REQUEST_ID_HEADER = Setting(
    "RESILIENCE_REQUEST_ID_HEADER",
    "X-Request-ID",
    header_name,
    "Header carrying the request id, kept when valid and echoed on every response.",
)
PRINCIPAL_LOADER = Setting(
    "RESILIENCE_PRINCIPAL_LOADER",
    None,
    optional_callable,
    "Callable (or 'module:function') returning the caller's user id, or None.",
)
BREAKER_ENABLED = Setting(
    "RESILIENCE_BREAKER_ENABLED",
    True,
    boolean,
    "False puts every circuit breaker in DISABLED: calls pass, nothing trips.",
    env="CIRCUIT_BREAKER_ENABLED",
)
BREAKER_DEFAULTS = Setting[dict[str, Any]](
    "RESILIENCE_BREAKER_DEFAULTS",
    {},
    breaker_defaults,
    "Parameters applied to every circuit breaker unless it names its own.",
)
BREAKER_STORAGE = Setting(
    "RESILIENCE_BREAKER_STORAGE",
    "local",
    one_of("local", "redis"),
    "'redis' shares circuit state across processes and hosts (needs RESILIENCE_REDIS_URL).",
)
CACHE_ENABLED = Setting(
    "RESILIENCE_CACHE_ENABLED",
    True,
    boolean,
    "False makes every cached view run uncached.",
    env="CACHE_ENABLED",
)
CACHE_DEFAULT_TTL = Setting(
    "RESILIENCE_CACHE_DEFAULT_TTL",
    300,
    positive_int,
    "Seconds a cache entry lives when the decorator names no TTL.",
    env="CACHE_TTL",
)
CACHE_L1_MAX_ENTRIES = Setting(
    "RESILIENCE_CACHE_L1_MAX_ENTRIES",
    1000,
    positive_int,
    "Entries the in-process layer keeps (least recently used evicted first).",
)
CACHE_L1_MAX_BYTES = Setting(
    "RESILIENCE_CACHE_L1_MAX_BYTES",
    64 * 1024 * 1024,
    positive_int,
    "Bytes of bodies the in-process layer keeps.",
)
CACHE_L1_MAX_TTL = Setting(
    "RESILIENCE_CACHE_L1_MAX_TTL",
    60.0,
    positive_number,
    "Seconds an in-process entry lives at most: bounds staleness if an invalidation message is lost.",
)
CACHE_LOCK_TIMEOUT = Setting(
    "RESILIENCE_CACHE_LOCK_TIMEOUT",
    5.0,
    positive_number,
    "Seconds a miss holds the stampede lock; waiters compute themselves after it.",
)
CACHE_HONOR_NO_CACHE = Setting(
    "RESILIENCE_CACHE_HONOR_NO_CACHE",
    False,
    boolean,
    "Let a request's 'Cache-Control: no-cache' force recomputation (off: clients cannot bust the cache).",
)
CACHE_MAX_BODY_BYTES = Setting(
    "RESILIENCE_CACHE_MAX_BODY_BYTES",
    1024 * 1024,
    positive_int,
    "Larger responses are served but not stored.",
)
CACHE_STORED_HEADERS = Setting[tuple[str, ...]](
    "RESILIENCE_CACHE_STORED_HEADERS",
    (),
    header_names,
    "Response headers to store besides the built-in allow-list (Set-Cookie never is).",
)
CACHE_WRITE_BEHIND_QUEUE = Setting(
    "RESILIENCE_CACHE_WRITE_BEHIND_QUEUE",
    10_000,
    positive_int,
    "Pending write-behind writes; beyond it writes are dropped and counted.",
)
CACHE_BACKEND = Setting[object | None](
    "RESILIENCE_CACHE_BACKEND",
    None,
    flask_caching_cache,
    "A flask_caching.Cache to use as the second layer instead of RESILIENCE_REDIS_URL.",
)
CACHE_SERIALIZER = Setting[object | None](
    "RESILIENCE_CACHE_SERIALIZER",
    None,
    serializer,
    "Serializer of the data cache (dumps/loads); default JSON. Never pickle by default.",
)
AUDIT_ENABLED = Setting(
    "RESILIENCE_AUDIT_ENABLED",
    True,
    boolean,
    "False turns audit logging off.",
    env="ENABLE_AUDIT_LOGGING",
)
AUDIT_BUFFER_SIZE = Setting(
    "RESILIENCE_AUDIT_BUFFER_SIZE",
    100,
    positive_int,
    "Audit entries waiting that trigger a flush.",
    env="AUDIT_BUFFER_SIZE",
)
AUDIT_FLUSH_INTERVAL = Setting(
    "RESILIENCE_AUDIT_FLUSH_INTERVAL",
    5000,
    positive_int,
    "Milliseconds between audit flushes.",
    env="AUDIT_FLUSH_INTERVAL",
)
AUDIT_MAX_QUEUE = Setting(
    "RESILIENCE_AUDIT_MAX_QUEUE",
    10_000,
    positive_int,
    "Entries held in memory; beyond it they go to the spill file (or are dropped and counted).",
)
AUDIT_SPILL_PATH = Setting(
    "RESILIENCE_AUDIT_SPILL_PATH",
    None,
    optional_str,
    "Spill file for entries the database cannot take; default <instance>/resilience-audit-spill.jsonl; "
    "'off' disables it.",
)
AUDIT_HMAC_KEY = Setting(
    "RESILIENCE_AUDIT_HMAC_KEY",
    None,
    optional_str,
    "Key for HMAC-SHA-256 entry hashes; unset: derived from SECRET_KEY (HKDF); neither: plain SHA-256.",
)
AUDIT_PREVIOUS_HMAC_KEYS = Setting[tuple[str, ...]](
    "RESILIENCE_AUDIT_PREVIOUS_HMAC_KEYS",
    (),
    string_list,
    "Retired audit HMAC keys that verify still accepts (key rotation).",
)
AUDIT_CHECKPOINT_INTERVAL = Setting(
    "RESILIENCE_AUDIT_CHECKPOINT_INTERVAL",
    1000,
    positive_int,
    "Entries between two signed checkpoints of a chain's head.",
)
AUDIT_CHECKPOINT_SECONDS = Setting(
    "RESILIENCE_AUDIT_CHECKPOINT_SECONDS",
    60.0,
    positive_number,
    "Seconds between two signed checkpoints (also while idle: verify treats a chain as live for twice this).",
)
AUDIT_CHECKPOINT_DATABASE_URI = Setting(
    "RESILIENCE_AUDIT_CHECKPOINT_DATABASE_URI",
    None,
    database_url,
    "SQLAlchemy URL of a second database for the checkpoint table; unset: the audit database.",
)
AUDIT_CHECKPOINT_SINK = Setting(
    "RESILIENCE_AUDIT_CHECKPOINT_SINK",
    None,
    optional_callable,
    "Callable (or 'module:function') also given each signed checkpoint as a dict.",
)
AUDIT_PARTITION = Setting(
    "RESILIENCE_AUDIT_PARTITION",
    "none",
    one_of("none", "month", "day"),
    "PostgreSQL range partitions of the audit table on occurred_at: none, month or day.",
)
AUDIT_REDACT_KEYS = Setting[tuple[str, ...]](
    "RESILIENCE_AUDIT_REDACT_KEYS",
    (),
    string_list,
    "Extra field names masked at any depth, besides password, token, card_number, ...",
)
AUDIT_REDACTOR = Setting(
    "RESILIENCE_AUDIT_REDACTOR",
    None,
    optional_callable,
    "Callable (or 'module:function') taking and returning an entry's fields, after the built-in redaction.",
)
AUDIT_MAX_BODY_BYTES = Setting(
    "RESILIENCE_AUDIT_MAX_BODY_BYTES",
    4096,
    positive_int,
    "Captured request bodies larger than this are recorded by size and type only.",
)
IDEMPOTENCY_ENABLED = Setting(
    "RESILIENCE_IDEMPOTENCY_ENABLED",
    True,
    boolean,
    "False makes @idempotent views run unprotected.",
)
IDEMPOTENCY_TTL = Setting(
    "RESILIENCE_IDEMPOTENCY_TTL",
    86400,
    positive_int,
    "Seconds a completed idempotent response is kept for replay.",
    env="IDEMPOTENCY_TTL",
)
IDEMPOTENCY_AUTO_GENERATE = Setting(
    "RESILIENCE_IDEMPOTENCY_AUTO_GENERATE",
    False,
    boolean,
    "Generate a key for requests that send none (returned in the response).",
    env="IDEMPOTENCY_AUTO_GENERATE",
)

IDEMPOTENCY_LEASE = Setting(
    "RESILIENCE_IDEMPOTENCY_LEASE",
    60.0,
    positive_number,
    "Seconds a first request holds its key; a worker that dies frees it after this.",
)
IDEMPOTENCY_MAX_BODY_BYTES = Setting(
    "RESILIENCE_IDEMPOTENCY_MAX_BODY_BYTES",
    1024 * 1024,
    positive_int,
    "Larger responses are sent but not stored (the key is given back).",
)
IDEMPOTENCY_STORED_HEADERS = Setting[tuple[str, ...]](
    "RESILIENCE_IDEMPOTENCY_STORED_HEADERS",
    (),
    header_names,
    "Response headers replayed besides the built-in allow-list (Set-Cookie never is).",
)
IDEMPOTENCY_MEMORY_ENTRIES = Setting(
    "RESILIENCE_IDEMPOTENCY_MEMORY_ENTRIES",
    1000,
    positive_int,
    "Completed records each process keeps in memory for fast replays.",
)

SETTINGS: tuple[Setting[Any], ...] = (
    REDIS_URL,
    REDIS_CLUSTER,
    REDIS_SOCKET_TIMEOUT,
    REDIS_CONNECT_TIMEOUT,
    KEY_PREFIX,
    DATABASE_URI,
    HEALTH_ENABLED,
    HEALTH_PREFIX,
    HEALTH_PUBLIC,
    ADMIN_TOKEN,
    REQUEST_ID_HEADER,
    PRINCIPAL_LOADER,
    BREAKER_ENABLED,
    BREAKER_DEFAULTS,
    BREAKER_STORAGE,
    CACHE_ENABLED,
    CACHE_DEFAULT_TTL,
    CACHE_L1_MAX_ENTRIES,
    CACHE_L1_MAX_BYTES,
    CACHE_L1_MAX_TTL,
    CACHE_LOCK_TIMEOUT,
    CACHE_HONOR_NO_CACHE,
    CACHE_MAX_BODY_BYTES,
    CACHE_STORED_HEADERS,
    CACHE_WRITE_BEHIND_QUEUE,
    CACHE_BACKEND,
    CACHE_SERIALIZER,
    AUDIT_ENABLED,
    AUDIT_BUFFER_SIZE,
    AUDIT_FLUSH_INTERVAL,
    AUDIT_MAX_QUEUE,
    AUDIT_SPILL_PATH,
    AUDIT_HMAC_KEY,
    AUDIT_PREVIOUS_HMAC_KEYS,
    AUDIT_CHECKPOINT_INTERVAL,
    AUDIT_CHECKPOINT_SECONDS,
    AUDIT_CHECKPOINT_DATABASE_URI,
    AUDIT_CHECKPOINT_SINK,
    AUDIT_PARTITION,
    AUDIT_REDACT_KEYS,
    AUDIT_REDACTOR,
    AUDIT_MAX_BODY_BYTES,
    IDEMPOTENCY_ENABLED,
    IDEMPOTENCY_TTL,
    IDEMPOTENCY_AUTO_GENERATE,
    IDEMPOTENCY_LEASE,
    IDEMPOTENCY_MAX_BODY_BYTES,
    IDEMPOTENCY_STORED_HEADERS,
    IDEMPOTENCY_MEMORY_ENTRIES,
)

OPTIONS: Mapping[str, Setting[Any]] = {setting.option: setting for setting in SETTINGS}


class Config:
    """The parsed, validated configuration of one app; read-only."""

    def __init__(self, values: Mapping[str, object]) -> None:
        self._values = dict(values)

    def __getitem__(self, setting: Setting[T]) -> T:
        value: T = self._values[setting.key]  # type: ignore[assignment]
        return value


def check_options(options: Mapping[str, object]) -> None:
    """Reject constructor keywords that name no setting."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(
            f"Resilience() got unknown option(s) {', '.join(unknown)}; "
            f"valid options are {', '.join(sorted(OPTIONS))}"
        )


def resolve(
    app_config: MutableMapping[str, Any],
    options: Mapping[str, object],
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Fill ``app_config`` with every key (``setdefault``) and validate it.

    Raises :class:`ValueError` naming the key and the offending value.
    """
    environ = os.environ if environ is None else environ
    from_env: dict[str, str] = {}
    for setting in SETTINGS:
        if setting.option in options:
            app_config[setting.key] = options[setting.option]
        elif setting.key not in app_config and setting.env and setting.env in environ:
            app_config[setting.key] = environ[setting.env]
            from_env[setting.key] = setting.env
        else:
            app_config.setdefault(setting.key, setting.default)

    values: dict[str, object] = {}
    for setting in SETTINGS:
        raw = app_config[setting.key]
        try:
            values[setting.key] = setting.parse(raw)
        except Invalid as exc:
            source = (
                f" (from environment variable {from_env[setting.key]})" if setting.key in from_env else ""
            )
            raise ValueError(f"{setting.key}={raw!r}{source} is invalid: {exc}") from None
    return Config(values)
