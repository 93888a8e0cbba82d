"""``httpx`` transports (sync and async) that put each host behind a breaker."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import httpx

from .breaker import CircuitBreaker
from .config import Outcome
from .http_common import Breakers, OutboundCall
from .states import CircuitOpenError, State


class HTTPXCircuitOpenError(CircuitOpenError, httpx.TransportError):
    """A rejected request; also an ``httpx.TransportError``, so existing
    error handling catches it."""

    def __init__(self, name: str, state: State, retry_after: float | None) -> None:
        httpx.TransportError.__init__(self, f"circuit {name!r} is {state.value}")
        self.args = (name, state, retry_after)


def _open_call(breakers: Breakers, request: httpx.Request) -> OutboundCall:
    breaker = breakers.for_url(str(request.url))
    try:
        return OutboundCall(breaker, functools.partial(_outcome, breaker=breaker))
    except CircuitOpenError as exc:
        raise HTTPXCircuitOpenError(exc.name, exc.state, exc.retry_after) from None


def _outcome(exc: BaseException, breaker: CircuitBreaker) -> Outcome:
    # Transport errors (connect, read, timeouts, protocol) say the remote side is unwell.
    if isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.UnsupportedProtocol):
        return Outcome.FAILURE
    return breaker.config.classify(exc)


class BreakerTransport(httpx.BaseTransport):
    """``httpx.Client(transport=BreakerTransport(resilience))``.

    Wraps ``transport`` (default ``httpx.HTTPTransport()``); ``service`` and
    ``breaker_config`` as for the requests adapter.
    """

    def __init__(
        self,
        breakers: Any,
        *,
        transport: httpx.BaseTransport | None = None,
        service: str | None = None,
        breaker_config: Mapping[str, Any] | None = None,
    ) -> None:
        self._transport = transport or httpx.HTTPTransport()
        self._breakers = Breakers(breakers, service, breaker_config)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with _open_call(self._breakers, request) as call:
            response = self._transport.handle_request(request)
        call.settle(response.status_code, response.headers)
        return response

    def close(self) -> None:
        self._transport.close()


class AsyncBreakerTransport(httpx.AsyncBaseTransport):
    """``httpx.AsyncClient(transport=AsyncBreakerTransport(resilience))``; as :class:`BreakerTransport`."""

    def __init__(
        self,
        breakers: Any,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        service: str | None = None,
        breaker_config: Mapping[str, Any] | None = None,
    ) -> None:
        self._transport = transport or httpx.AsyncHTTPTransport()
        self._breakers = Breakers(breakers, service, breaker_config)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        with _open_call(self._breakers, request) as call:
            response = await self._transport.handle_async_request(request)
        call.settle(response.status_code, response.headers)
        return response

    async def aclose(self) -> None:
        await self._transport.aclose()
