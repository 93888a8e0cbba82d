"""Settings of idempotency keys."""

from __future__ import annotations

from typing import Any

from ..validators import boolean, header_names, one_of, positive_int, positive_number
from .setting import Setting

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

SECTION: tuple[Setting[Any], ...] = (
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
