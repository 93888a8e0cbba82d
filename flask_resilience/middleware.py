"""The request path: one WSGI middleware around ``app.wsgi_app``.

Every request pays only for what every request needs: its id (read from the
environ, echoed through ``start_response``, so errors, problem+json and
responses Flask makes itself carry it too) and, with Redis, a cheap check
that this process's pub/sub listener thread runs. Flask hooks are
registered by the features that need them (URL-prefix auditing), not here.

With the front tier in use it also answers cache hits before Flask
dispatches, and keeps the final response of requests the view-level cache
offered to it (:mod:`.cache.front`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from .cache.front import IDENTITY_ENVIRON, OFFER_ENVIRON, FrontTier, Offer, identity_of
from .context import REQUEST_ID_ENVIRON, request_id_from
from .stores.pubsub import Subscriber
from .stores.redis import RedisStore

WsgiApp = Callable[[dict[str, Any], Any], Iterable[bytes]]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None] | None


class _Echo:
    """``start_response`` for the app: the request id joins the headers (it
    replaces one the app set itself)."""

    __slots__ = ("id_length", "id_lower", "pair", "start_response")

    def __init__(self, start_response: Any, id_header: str, id_lower: str, request_id: str) -> None:
        self.start_response = start_response
        self.pair = (id_header, request_id)
        self.id_lower = id_lower
        self.id_length = len(id_lower)

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo = None) -> Any:
        length, id_lower = self.id_length, self.id_lower
        for name, _value in headers:
            if len(name) == length and name.lower() == id_lower:  # the app set one: ours replaces it
                headers = [pair for pair in headers if pair[0].lower() != id_lower]
                break
        headers.append(self.pair)
        return self.start_response(status, headers, exc_info)


class RequestMiddleware:
    """``app.wsgi_app = RequestMiddleware(app.wsgi_app, ...)`` (``init_app`` does it)."""

    def __init__(
        self,
        wsgi_app: WsgiApp,
        *,
        id_header: str,
        redis: RedisStore | None,
        front: FrontTier,
        views: dict[str, Callable[..., Any]],
    ) -> None:
        self.wsgi_app = wsgi_app
        self.id_header = id_header
        self._id_lower = id_header.lower()
        self._id_environ = "HTTP_" + id_header.upper().replace("-", "_")
        self.redis = redis
        self.front = front
        self.views = views  # the app's view functions (Flask adds to this very dict)
        self._views_seen = 0
        self._subscriber: Subscriber | None = None if redis is None else redis.subscriber
        self._layered = front.layered

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request_id = environ[REQUEST_ID_ENVIRON] = request_id_from(environ.get(self._id_environ))
        subscriber = self._subscriber
        if subscriber is not None and not subscriber.is_running():
            subscriber = self._listen()
        if self._layered.down_until:  # the cache's L2 failed lately: owed invalidations may be due
            self._layered.after_cooldown()
        front = self.front
        if not front.armed and len(self.views) != self._views_seen:  # views added: did one opt in?
            self._views_seen = len(self.views)
            front.arm_for(self.views.values())
        if front.armed:
            if front.routes:
                answered = front.serve(environ, start_response, self.id_header, request_id)
                if answered is not None:
                    return answered
            identity = identity_of(environ)
            if identity is not None:
                environ[IDENTITY_ENVIRON] = identity
                return self._keeping(environ, start_response, request_id)
        return self.wsgi_app(environ, _Echo(start_response, self.id_header, self._id_lower, request_id))

    def _keeping(self, environ: dict[str, Any], start_response: Any, request_id: str) -> Iterable[bytes]:
        """Run the app; when the view-level cache offered this request to the
        front tier, keep the final response it sent."""
        id_header, id_lower = self.id_header, self._id_lower
        sent: list[Any] = []

        def start(status: str, headers: list[tuple[str, str]], exc_info: ExcInfo = None) -> Any:
            headers = [pair for pair in headers if pair[0].lower() != id_lower]
            sent[:] = (status, list(headers))
            headers.append((id_header, request_id))
            return start_response(status, headers, exc_info)

        body = self.wsgi_app(environ, start)
        offer: Offer | None = environ.get(OFFER_ENVIRON)
        if offer is None or not sent:
            return body
        # The view-level cache offers only stored (never streamed) responses:
        # the body is in memory already.
        try:
            data = b"".join(body)
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        # Kept only when nothing between here and Flask rewrote the identity.
        if identity_of(environ) == environ[IDENTITY_ENVIRON]:
            identity = environ[IDENTITY_ENVIRON]
            self.front.keep(offer, environ, identity=identity, status=sent[0], headers=sent[1], body=data)
        return [data]

    def _listen(self) -> Subscriber:
        """(Re)start this process's pub/sub listener: in a worker forked after
        subscriptions were made, or after its thread ended."""
        assert self.redis is not None
        subscriber = self._subscriber = self.redis.subscriber  # a new one after the store was closed
        subscriber.ensure_running()
        return subscriber
