"""Every configuration key of the extension, in one table.

A key is written once, as a :class:`Setting`: its name in ``app.config``, its
default, the seed's environment variable that may supply it, the parser that
validates it, and one line of documentation (README.rst lists the same table).

Precedence, highest first: a keyword argument to ``Resilience(...)``, a value
already in ``app.config``, the environment variable of the same name
(``RESILIENCE_CACHE_DEFAULT_TTL``, read as JSON when it parses and fits the
key, like Flask's ``from_prefixed_env``), the seed's un-prefixed environment variable
(``CACHE_TTL``; unless ``RESILIENCE_READ_SEED_ENV`` is false), the default.
After ``init_app``, ``app.config`` holds the parsed, typed value of every key.
"""

from __future__ import annotations

import json
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
    optional_string_list,
    positive_int,
    positive_number,
    redis_url,
    removed_allow_list,
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
HEALTH_CRITICAL = Setting[tuple[str, ...] | None](
    "RESILIENCE_HEALTH_CRITICAL",
    None,
    optional_string_list,
    "Health checks whose failure makes /ready answer 503 (names, comma-separated); unset: the "
    "database when the audit log has no spill file, Redis when fail-closed idempotency is used.",
)
HEALTH_SHOW_VERSION = Setting(
    "RESILIENCE_HEALTH_SHOW_VERSION",
    False,
    boolean,
    "Show the extension's version in the public health summary (admins always see it).",
)
HEALTH_CHECK_TIMEOUT = Setting(
    "RESILIENCE_HEALTH_CHECK_TIMEOUT",
    2.0,
    positive_number,
    "Seconds a health check may take before it is reported down (a hanging dependency must "
    "not hold the probe).",
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
CACHE_FRONT = Setting(
    "RESILIENCE_CACHE_FRONT",
    False,
    boolean,
    "Serve hits of every eligible @cached view before Flask dispatches (docs/front-tier.rst).",
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
    removed_allow_list,
    "Removed (must stay empty): every end-to-end header is stored now; see RESILIENCE_CACHE_DENIED_HEADERS.",
)
CACHE_DENIED_HEADERS = Setting[tuple[str, ...]](
    "RESILIENCE_CACHE_DENIED_HEADERS",
    (),
    header_names,
    "Response headers never stored, besides Set-Cookie, hop-by-hop, Date, Age and the request-id header.",
)
CACHE_PRIVATE_HEADERS = Setting[tuple[str, ...]](
    "RESILIENCE_CACHE_PRIVATE_HEADERS",
    ("Authorization", "Proxy-Authorization", "X-Api-Key"),
    header_names,
    "Request headers that carry credentials: such a request bypasses views not cached per_user.",
)
CACHE_PRIVATE_COOKIES = Setting[tuple[str, ...]](
    "RESILIENCE_CACHE_PRIVATE_COOKIES",
    ("remember_token",),
    string_list,
    "Cookies that carry credentials, besides the session cookie (SESSION_COOKIE_NAME), which always does.",
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
    "Entries held in memory; beyond it they wait in the journal only (without one they are dropped "
    "and counted).",
)
AUDIT_SPILL_PATH = Setting(
    "RESILIENCE_AUDIT_SPILL_PATH",
    None,
    optional_str,
    "Base path of the per-process audit journals (write-ahead, and where entries wait while the "
    "database is down); default <instance>/resilience-audit.<hash of the database URL>.journal; 'off' "
    "keeps entries in memory only.",
)
AUDIT_SPILL_MAX_BYTES = Setting(
    "RESILIENCE_AUDIT_SPILL_MAX_BYTES",
    256 * 1024 * 1024,
    positive_int,
    "Bytes one process's journal (and, separately, its quarantine file) may hold; past it new entries "
    "are dropped, counted and told in an AUDIT_GAP entry.",
)
AUDIT_JOURNAL_FSYNC = Setting(
    "RESILIENCE_AUDIT_JOURNAL_FSYNC",
    "never",
    one_of("never", "interval", "always"),
    "fsync of the audit journal: 'never' (survives a killed process), 'interval' (about once a "
    "second) or 'always' (every entry; survives a machine crash).",
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
    "Larger (or streamed) responses are sent, and retries get a 413 problem saying it was not kept.",
)
IDEMPOTENCY_STORED_HEADERS = Setting[tuple[str, ...]](
    "RESILIENCE_IDEMPOTENCY_STORED_HEADERS",
    (),
    header_names,
    "Kept for compatibility: every end-to-end response header is stored except Set-Cookie, Date, "
    "Age, Content-Length and hop-by-hop ones, so the headers named here are stored anyway.",
)
IDEMPOTENCY_MEMORY_ENTRIES = Setting(
    "RESILIENCE_IDEMPOTENCY_MEMORY_ENTRIES",
    1000,
    positive_int,
    "Completed records each process keeps in memory for fast replays (and the bound of memory mode).",
)
IDEMPOTENCY_MEMORY_BYTES = Setting(
    "RESILIENCE_IDEMPOTENCY_MEMORY_BYTES",
    32 * 1024 * 1024,
    positive_int,
    "Bytes of response bodies each process keeps in memory (memory layer, or memory mode).",
)
IDEMPOTENCY_ON_ERROR = Setting(
    "RESILIENCE_IDEMPOTENCY_ON_ERROR",
    "store",
    one_of("store", "release"),
    "Once the view ran: 'store' keeps a 5xx or an exception as the key's outcome; 'release' frees the key.",
)

SETTINGS: tuple[Setting[Any], ...] = (
    READ_SEED_ENV,
    REDIS_URL,
    REDIS_CLUSTER,
    REDIS_SOCKET_TIMEOUT,
    REDIS_CONNECT_TIMEOUT,
    KEY_PREFIX,
    DATABASE_URI,
    HEALTH_ENABLED,
    HEALTH_PREFIX,
    HEALTH_PUBLIC,
    HEALTH_CRITICAL,
    HEALTH_SHOW_VERSION,
    HEALTH_CHECK_TIMEOUT,
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
    CACHE_FRONT,
    CACHE_MAX_BODY_BYTES,
    CACHE_STORED_HEADERS,
    CACHE_DENIED_HEADERS,
    CACHE_PRIVATE_HEADERS,
    CACHE_PRIVATE_COOKIES,
    CACHE_WRITE_BEHIND_QUEUE,
    CACHE_BACKEND,
    CACHE_SERIALIZER,
    AUDIT_ENABLED,
    AUDIT_BUFFER_SIZE,
    AUDIT_FLUSH_INTERVAL,
    AUDIT_MAX_QUEUE,
    AUDIT_SPILL_PATH,
    AUDIT_SPILL_MAX_BYTES,
    AUDIT_JOURNAL_FSYNC,
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
    IDEMPOTENCY_MEMORY_BYTES,
    IDEMPOTENCY_ON_ERROR,
)

OPTIONS: Mapping[str, Setting[Any]] = {setting.option: setting for setting in SETTINGS}

EXAMPLE_ADMIN_TOKENS = frozenset({"change-me-to-a-long-random-token"})
"""Admin tokens that were printed in documentation: ``init_app`` warns about them."""


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
    """Fill ``app_config`` with every key, validated and parsed (see the
    module's precedence), and return the typed :class:`Config`.

    Raises :class:`ValueError` naming the key, the offending value and, when
    it came from the environment, the variable.
    """
    environ = os.environ if environ is None else environ
    from_env: dict[str, str] = {}
    values: dict[str, object] = {}
    for setting in SETTINGS:  # READ_SEED_ENV comes first: it decides the others' sources
        read_seed = bool(values.get(READ_SEED_ENV.key, True))
        raw, variable = _raw_value(setting, app_config, options, environ, read_seed=read_seed)
        try:
            values[setting.key] = _parse(setting, raw, environ.get(variable) if variable else None)
        except Invalid as exc:
            source = f" (from environment variable {variable})" if variable else ""
            raise ValueError(f"{setting.key}={raw!r}{source} is invalid: {exc}") from None
        if variable:
            from_env[setting.key] = variable
    app_config.update(values)  # typed: "false" must not stay a truthy string for other readers
    return Config(values)


def _parse(setting: Setting[T], raw: object, text: str | None) -> T:
    """``raw`` parsed; an environment value that read as JSON but does not fit
    (a numeric token for a string key) is tried again as the text it was."""
    try:
        return setting.parse(raw)
    except Invalid:
        if text is None or raw == text:
            raise
        try:
            return setting.parse(text)
        except Invalid:
            pass
        raise


def _raw_value(
    setting: Setting[Any],
    app_config: Mapping[str, Any],
    options: Mapping[str, object],
    environ: Mapping[str, str],
    *,
    read_seed: bool,
) -> tuple[object, str | None]:
    """The unparsed value of ``setting`` and the environment variable it came from, if any."""
    if setting.option in options:
        return options[setting.option], None
    if setting.key in app_config:
        return app_config[setting.key], None
    if setting.key in environ:
        text = environ[setting.key]
        try:
            return json.loads(text), setting.key
        except ValueError:
            return text, setting.key
    if read_seed and setting.env and setting.env in environ:
        return environ[setting.env], setting.env
    return setting.default, None
