"""What the HTTP transports share: breaker naming and response classification."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from .breaker import CircuitBreaker
from .config import Outcome
from .registry import BreakerRegistry

_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]")
_MAX_NAME = 128  # the registry's limit on breaker names
# The remote side is unwell or asks us to slow down; other 4xx are the caller's mistakes.
_RETRY_AFTER_STATUSES = frozenset({429, 503})


class Breakers:
    """Finds the breaker for a URL: one per host, or one named service."""

    def __init__(
        self,
        registry: BreakerRegistry | Any,
        service: str | None,
        breaker_config: Mapping[str, Any] | None,
    ) -> None:
        # Accept the extension object itself, which holds its registry.
        self._registry: BreakerRegistry = getattr(registry, "breakers", registry)
        self._service = service
        self._config = dict(breaker_config or {})

    def for_url(self, url: str) -> CircuitBreaker:
        if self._service is not None:
            name = self._service
        else:
            parts = urlsplit(url)
            host = (parts.hostname or "unknown").lower()
            name = "http:" + _UNSAFE.sub("_", f"{host}:{parts.port}" if parts.port else host)
            if len(name) > _MAX_NAME:  # a long DNS name: keep its start, tell hosts apart by a digest
                digest = hashlib.sha256(name.encode()).hexdigest()[:16]
                name = f"{name[: _MAX_NAME - 17]}:{digest}"
        return self._registry.get_or_create(name, **self._config)


class OutboundCall:
    """One admitted HTTP request: ``with`` it around the transport call, then
    :meth:`settle` the response. An exception leaving the block is recorded
    as ``error_outcome(exc)`` says."""

    def __init__(self, breaker: CircuitBreaker, error_outcome: Callable[[BaseException], Outcome]) -> None:
        self.breaker = breaker
        self._error_outcome = error_outcome
        self._trial = breaker.acquire()
        self._started = breaker.now()

    def __enter__(self) -> OutboundCall:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is not None:
            self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        """Record the call as ended by ``exc`` (instead of :meth:`settle`)."""
        self.breaker.release(self._trial, self._started, self._error_outcome(exc))

    def settle(self, status: int, headers: Mapping[str, str]) -> None:
        outcome, hold = classify_status(status, headers)
        self.breaker.release(self._trial, self._started, outcome, hold_open=hold)


def classify_status(status: int, headers: Mapping[str, str]) -> tuple[Outcome, float | None]:
    """5xx and 429 are failures; with 429/503 a ``Retry-After`` also holds the
    circuit open for that many seconds."""
    if status < 500 and status != 429:
        return Outcome.SUCCESS, None
    hold = parse_retry_after(headers.get("Retry-After")) if status in _RETRY_AFTER_STATUSES else None
    # No pause asked for ("0", a date already past): an ordinary failure.
    return Outcome.FAILURE, hold if hold else None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` of delay-seconds or an HTTP-date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() alone also says yes to "²"
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))
