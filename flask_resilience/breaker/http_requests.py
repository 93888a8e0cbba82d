"""A ``requests`` transport adapter that puts each host behind a breaker."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from .config import Outcome
from .http_common import Breakers, OutboundCall
from .states import CircuitOpenError, State

# Errors that say the remote side is down or slow; others (a malformed URL,
# too many redirects) are the caller's and count for nothing.
_REMOTE_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


class RequestsCircuitOpenError(CircuitOpenError, requests.ConnectionError):
    """A rejected request; also a ``requests.ConnectionError``, so existing
    error handling catches it."""

    def __init__(self, name: str, state: State, retry_after: float | None) -> None:
        super().__init__(name, state, retry_after)
        self.args = (name, state, retry_after)


class BreakerAdapter(HTTPAdapter):
    """Mount on a ``requests.Session``::

        session.mount("https://", BreakerAdapter(resilience))

    ``service`` puts every host behind one breaker of that name; otherwise
    each host gets ``http:<host>[:port]``. ``breaker_config`` is passed to the
    breakers it creates. Other keyword arguments go to ``HTTPAdapter``.
    """

    def __init__(
        self,
        breakers: Any,
        *,
        service: str | None = None,
        breaker_config: Mapping[str, Any] | None = None,
        **adapter_options: Any,
    ) -> None:
        super().__init__(**adapter_options)
        self._breakers = Breakers(breakers, service, breaker_config)

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        breaker = self._breakers.for_url(request.url or "")

        def error_outcome(exc: BaseException) -> Outcome:
            if isinstance(exc, _REMOTE_ERRORS):
                return Outcome.FAILURE
            if isinstance(exc, requests.RequestException):
                return Outcome.IGNORED
            return breaker.config.classify(exc)

        try:
            call = OutboundCall(breaker, error_outcome)
        except CircuitOpenError as exc:
            raise RequestsCircuitOpenError(exc.name, exc.state, exc.retry_after) from None
        streaming = kwargs.get("stream", args[0] if args else False)
        with call:
            response = super().send(request, *args, **kwargs)
            if not streaming:
                # Session.send would read the body after we return: a remote
                # side that drops or stalls mid-body must count here.
                response.content  # noqa: B018
        call.settle(response.status_code, response.headers)
        return response
