"""Outbound HTTP behind circuit breakers: a ``requests`` adapter and ``httpx``
transports. Each needs its library installed (extras ``requests``, ``httpx``).

5xx, 429, connection errors and timeouts count as failures; other 4xx do
not. A 429 or 503 with ``Retry-After`` holds the circuit open at least that
long. A rejected request raises a :class:`CircuitOpenError` that is also the
library's own connection/transport error.
"""

from __future__ import annotations

import contextlib

from .http_common import classify_status, parse_retry_after

__all__ = ["classify_status", "parse_retry_after"]

with contextlib.suppress(ImportError):
    from .http_requests import BreakerAdapter, RequestsCircuitOpenError

    __all__ += ["BreakerAdapter", "RequestsCircuitOpenError"]

with contextlib.suppress(ImportError):
    from .http_httpx import AsyncBreakerTransport, BreakerTransport, HTTPXCircuitOpenError

    __all__ += ["AsyncBreakerTransport", "BreakerTransport", "HTTPXCircuitOpenError"]
