"""Every configuration key of the extension, in one table.

A key is written once, as a :class:`Setting`: its name in ``app.config``, its
default, the seed's environment variable that may supply it, the parser that
validates it, and one line of documentation (docs/configuration.rst shows the table, generated from it).

Precedence, highest first: a keyword argument to ``Resilience(...)``, a value
already in ``app.config``, the environment variable of the same name
(``RESILIENCE_CACHE_DEFAULT_TTL``, read as JSON when it parses and fits the
key, like Flask's ``from_prefixed_env``), the seed's un-prefixed environment variable
(``CACHE_TTL``; unless ``RESILIENCE_READ_SEED_ENV`` is false), the default.
After ``init_app``, ``app.config`` holds the parsed, typed value of every key.

Each section's keys live in a module of their own (``general``, ``health``,
``context``, ``breaker``, ``cache``, ``audit``, ``idempotency``), each ending
with its ``SECTION``; ``table`` joins them into the one ``SETTINGS`` table
and holds ``resolve()``. Every name is importable from here.
"""

from __future__ import annotations

from ..validators import ClusterNodes, Invalid
from .audit import (
    AUDIT_BUFFER_SIZE,
    AUDIT_CHECKPOINT_DATABASE_URI,
    AUDIT_CHECKPOINT_INTERVAL,
    AUDIT_CHECKPOINT_SECONDS,
    AUDIT_CHECKPOINT_SINK,
    AUDIT_ENABLED,
    AUDIT_FLUSH_INTERVAL,
    AUDIT_HMAC_KEY,
    AUDIT_JOURNAL_FSYNC,
    AUDIT_MAX_BODY_BYTES,
    AUDIT_MAX_QUEUE,
    AUDIT_PARTITION,
    AUDIT_PREVIOUS_HMAC_KEYS,
    AUDIT_REDACT_KEYS,
    AUDIT_REDACTOR,
    AUDIT_SPILL_MAX_BYTES,
    AUDIT_SPILL_PATH,
)
from .breaker import BREAKER_DEFAULTS, BREAKER_ENABLED, BREAKER_STORAGE
from .cache import (
    CACHE_BACKEND,
    CACHE_DEFAULT_TTL,
    CACHE_DENIED_HEADERS,
    CACHE_ENABLED,
    CACHE_FRONT,
    CACHE_HONOR_NO_CACHE,
    CACHE_L1_MAX_BYTES,
    CACHE_L1_MAX_ENTRIES,
    CACHE_L1_MAX_TTL,
    CACHE_LOCK_TIMEOUT,
    CACHE_MAX_BODY_BYTES,
    CACHE_PRIVATE_COOKIES,
    CACHE_PRIVATE_HEADERS,
    CACHE_SERIALIZER,
    CACHE_STORED_HEADERS,
    CACHE_WRITE_BEHIND_QUEUE,
)
from .context import PRINCIPAL_LOADER, REQUEST_ID_HEADER
from .general import (
    DATABASE_URI,
    KEY_PREFIX,
    READ_SEED_ENV,
    REDIS_CLUSTER,
    REDIS_CONNECT_TIMEOUT,
    REDIS_SOCKET_TIMEOUT,
    REDIS_URL,
)
from .health import (
    ADMIN_TOKEN,
    HEALTH_CHECK_TIMEOUT,
    HEALTH_CRITICAL,
    HEALTH_ENABLED,
    HEALTH_PREFIX,
    HEALTH_PUBLIC,
    HEALTH_SHOW_VERSION,
)
from .idempotency import (
    IDEMPOTENCY_AUTO_GENERATE,
    IDEMPOTENCY_ENABLED,
    IDEMPOTENCY_LEASE,
    IDEMPOTENCY_MAX_BODY_BYTES,
    IDEMPOTENCY_MEMORY_BYTES,
    IDEMPOTENCY_MEMORY_ENTRIES,
    IDEMPOTENCY_ON_ERROR,
    IDEMPOTENCY_STORED_HEADERS,
    IDEMPOTENCY_TTL,
)
from .setting import Config, Setting
from .table import EXAMPLE_ADMIN_TOKENS, OPTIONS, SETTINGS, check_options, resolve

__all__ = [
    "ADMIN_TOKEN",
    "AUDIT_BUFFER_SIZE",
    "AUDIT_CHECKPOINT_DATABASE_URI",
    "AUDIT_CHECKPOINT_INTERVAL",
    "AUDIT_CHECKPOINT_SECONDS",
    "AUDIT_CHECKPOINT_SINK",
    "AUDIT_ENABLED",
    "AUDIT_FLUSH_INTERVAL",
    "AUDIT_HMAC_KEY",
    "AUDIT_JOURNAL_FSYNC",
    "AUDIT_MAX_BODY_BYTES",
    "AUDIT_MAX_QUEUE",
    "AUDIT_PARTITION",
    "AUDIT_PREVIOUS_HMAC_KEYS",
    "AUDIT_REDACTOR",
    "AUDIT_REDACT_KEYS",
    "AUDIT_SPILL_MAX_BYTES",
    "AUDIT_SPILL_PATH",
    "BREAKER_DEFAULTS",
    "BREAKER_ENABLED",
    "BREAKER_STORAGE",
    "CACHE_BACKEND",
    "CACHE_DEFAULT_TTL",
    "CACHE_DENIED_HEADERS",
    "CACHE_ENABLED",
    "CACHE_FRONT",
    "CACHE_HONOR_NO_CACHE",
    "CACHE_L1_MAX_BYTES",
    "CACHE_L1_MAX_ENTRIES",
    "CACHE_L1_MAX_TTL",
    "CACHE_LOCK_TIMEOUT",
    "CACHE_MAX_BODY_BYTES",
    "CACHE_PRIVATE_COOKIES",
    "CACHE_PRIVATE_HEADERS",
    "CACHE_SERIALIZER",
    "CACHE_STORED_HEADERS",
    "CACHE_WRITE_BEHIND_QUEUE",
    "DATABASE_URI",
    "EXAMPLE_ADMIN_TOKENS",
    "HEALTH_CHECK_TIMEOUT",
    "HEALTH_CRITICAL",
    "HEALTH_ENABLED",
    "HEALTH_PREFIX",
    "HEALTH_PUBLIC",
    "HEALTH_SHOW_VERSION",
    "IDEMPOTENCY_AUTO_GENERATE",
    "IDEMPOTENCY_ENABLED",
    "IDEMPOTENCY_LEASE",
    "IDEMPOTENCY_MAX_BODY_BYTES",
    "IDEMPOTENCY_MEMORY_BYTES",
    "IDEMPOTENCY_MEMORY_ENTRIES",
    "IDEMPOTENCY_ON_ERROR",
    "IDEMPOTENCY_STORED_HEADERS",
    "IDEMPOTENCY_TTL",
    "KEY_PREFIX",
    "OPTIONS",
    "PRINCIPAL_LOADER",
    "READ_SEED_ENV",
    "REDIS_CLUSTER",
    "REDIS_CONNECT_TIMEOUT",
    "REDIS_SOCKET_TIMEOUT",
    "REDIS_URL",
    "REQUEST_ID_HEADER",
    "SETTINGS",
    "ClusterNodes",
    "Config",
    "Invalid",
    "Setting",
    "check_options",
    "resolve",
]
