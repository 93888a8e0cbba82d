"""Settings of the response and data cache."""

from __future__ import annotations

from typing import Any

from ..validators import (
    boolean,
    flask_caching_cache,
    header_names,
    positive_int,
    positive_number,
    removed_allow_list,
    serializer,
    string_list,
)
from .setting import Setting

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

SECTION: tuple[Setting[Any], ...] = (
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
)
