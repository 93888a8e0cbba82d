"""``httpx`` transports (sync and async) that put each host behind a breaker."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator, Mapping
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


class _SettledAtEnd(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body whose call is recorded when the body is closed (read to
    the end, or left) or fails: the client reads it after the transport
    returned, and a body cut off or stalled mid-way is a failure."""

    def __init__(self, stream: Any, call: OutboundCall, response: httpx.Response) -> None:
        self._stream = stream
        self._call: OutboundCall | None = call
        self._status, self._headers = response.status_code, response.headers

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._stream
        except Exception as exc:
            self._finish(exc)
            raise

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except Exception as exc:
            self._finish(exc)
            raise

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._finish(None)

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._finish(None)

    def _finish(self, exc: BaseException | None) -> None:
        call, self._call = self._call, None
        if call is None:  # recorded already
            return
        if exc is None:
            call.settle(self._status, self._headers)
        else:
            call.fail(exc)


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
        response.stream = _SettledAtEnd(response.stream, call, response)
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
        response.stream = _SettledAtEnd(response.stream, call, response)
        return response

    async def aclose(self) -> None:
        await self._transport.aclose()
