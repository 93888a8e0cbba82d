"""The front tier: cache hits answered in the WSGI middleware, before Flask dispatches.

It behaves like a reverse proxy inside the process. What it stores is the
*final* response of a ``@cached(front=True)`` view (after the app's
``after_request`` hooks), minus per-request headers, in L1 under a variant
of the view's own key: same resource, so every invalidation (resource, tag,
pattern, another process's message) reaches it as it reaches the view's entry.

A request finds its entry without routing: a response is only kept after the
view-level cache served or stored it for exactly this request identity
(scheme, ``Host``, ``SCRIPT_NAME``, ``PATH_INFO``, ``QUERY_STRING``), and
that identity is remembered with the key. Anything Flask would route
elsewhere (a redirect, a 404, another method, an invalid path) never reached
such a view, so it is never remembered. When a middleware sits between this
one and Flask (installed before ``init_app``: ``ProxyFix``, a method
override), the extension leaves the tier disabled; should the identity still
change on the way to Flask, nothing is remembered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from werkzeug.http import HTTP_STATUS_CODES, parse_cookie, parse_date, parse_etags, unquote_etag

from ..responses import HeaderPolicy, StoredResponse
from .entry import CacheEntry, Stamp
from .keys import encode_part, full_key
from .layered import LayeredCache
from .rules import Credentials, cache_control_refusal

CACHE_ID = "flask-resilience"
IDENTITY_ENVIRON = "flask_resilience.front_identity"
OFFER_ENVIRON = "flask_resilience.front_offer"
# Request headers that make the answer depend on more than the stored entry.
_NOT_ELIGIBLE = (
    "HTTP_CACHE_CONTROL",
    "HTTP_PRAGMA",
    "HTTP_IF_MATCH",
    "HTTP_IF_MODIFIED_SINCE",
    "HTTP_IF_UNMODIFIED_SINCE",
    "HTTP_IF_RANGE",
    "HTTP_RANGE",
)
_METHODS = frozenset({"GET", "HEAD"})
_PER_SERVE = frozenset({"x-cache", "cache-status", "age"})
NOT_IN_304 = frozenset({"content-length", "content-type"})  # a 304 carries no body

Identity = tuple[str, str, str, str, str]
WsgiHeaders = list[tuple[str, str]]


def identity_of(environ: Mapping[str, Any]) -> Identity | None:
    """What the tier remembers a request by; None without a ``Host`` header."""
    host = environ.get("HTTP_HOST")
    if host is None:
        return None
    return (
        environ.get("wsgi.url_scheme", "http"),
        host,
        environ.get("SCRIPT_NAME", ""),
        environ.get("PATH_INFO", ""),
        environ.get("QUERY_STRING", ""),
    )


@dataclass(frozen=True, slots=True)
class Route:
    """Where one request identity's front entry lives."""

    resource: str
    variant: str  # the view's variant text; the front key adds "|front" (and Accept-Encoding)
    key: str  # the front key when the response does not vary
    vary_encoding: bool
    endpoint: str
    head: bool = True  # Flask routes a HEAD of this identity to the same view (else HEAD goes through Flask)

    def key_for(self, environ: Mapping[str, Any]) -> str:
        if not self.vary_encoding:
            return self.key
        return front_key(self.variant, self.resource, environ.get("HTTP_ACCEPT_ENCODING"), varies=True)


def front_key(
    variant: str, resource: str, accept_encoding: str | None = None, *, varies: bool = False
) -> str:
    """The front entry's key: the view's variant marked as front (``|`` is
    always percent-encoded inside a part, so no view variant ends this way)."""
    text = variant + "|front"
    if varies or accept_encoding is not None:
        text += "|ae" if accept_encoding is None else "|ae=" + encode_part(accept_encoding)
    return full_key(text, resource)


@dataclass(frozen=True, slots=True)
class Offer:
    """What the view-level cache leaves for the middleware: an entry it served
    or stored for a front-eligible request, to be kept as the final response."""

    route: Route
    stamp: Stamp
    created_at: float
    expires_at: float
    mark: tuple[int, float]


@dataclass(frozen=True, slots=True)
class _Reply:
    """What every front hit on one entry sends alike: the status line and
    headers (``Content-Length`` for a 200, none of the body's for a 304)."""

    status: str
    headers: WsgiHeaders
    not_modified: WsgiHeaders


def _reply_for(entry: CacheEntry) -> _Reply:
    """Build ``entry``'s reply and keep it on the entry (racing hits build the same one)."""
    assert entry.response is not None
    stored = [*entry.response.headers, ("X-Cache", "HIT")]
    reply = _Reply(
        f"{entry.response.status} {HTTP_STATUS_CODES.get(entry.response.status, 'UNKNOWN')}",
        [*stored, ("Content-Length", str(len(entry.body)))],
        [pair for pair in stored if pair[0].lower() not in NOT_IN_304],
    )
    object.__setattr__(entry, "front_reply", reply)  # a memo of the frozen entry's own data
    return reply


FRONT_MARK = "_resilience_front"
"""Set on a view decorated ``@cached(front=True)``: its app's tier notes request identities."""


class FrontTier:
    """One app's front tier: the remembered identities and the hit path."""

    def __init__(
        self,
        layered: LayeredCache,
        *,
        enabled: bool,
        everywhere: bool,
        credentials: Credentials,
        header_policy: HeaderPolicy,
        max_routes: int,
    ) -> None:
        self.layered = layered
        self.enabled = enabled
        self.everywhere = everywhere  # RESILIENCE_CACHE_FRONT: every eligible view
        self.credentials = credentials
        self.header_policy = header_policy
        # The app's config, read when a request carries cookies (as the
        # view-level cache does): SESSION_COOKIE_NAME / REMEMBER_COOKIE_NAME
        # may be set after init_app.
        self.app_config: Mapping[str, Any] = {}
        # Set once the app has a view that may opt in (the middleware looks):
        # only then does it note request identities.
        self.armed = False
        self.max_routes = max_routes
        self.routes: dict[Identity, Route] = {}
        self._lock = threading.Lock()

    def arm_for(self, views: Iterable[object]) -> None:
        """Arm the tier when one of ``views`` opted in (or the app's setting opts every view in)."""
        if self.enabled and not self.armed:
            self.armed = self.everywhere or any(getattr(view, FRONT_MARK, False) for view in views)

    # -- eligibility ---------------------------------------------------------------------

    def request_eligible(self, environ: Mapping[str, Any]) -> bool:
        """GET/HEAD without credentials or request directives (``If-None-Match``
        is answered here)."""
        if environ.get("REQUEST_METHOD") not in _METHODS:
            return False
        for name in _NOT_ELIGIBLE:
            if name in environ:
                return False
        for key, _name in self.credentials.environ_keys:
            if key in environ:
                return False
        cookie = environ.get("HTTP_COOKIE")
        if cookie is not None:
            cookies = parse_cookie(cookie)
            config = self.app_config
            session = config.get("SESSION_COOKIE_NAME", "session")
            names = (session, config.get("REMEMBER_COOKIE_NAME"), *self.credentials.cookies)
            if any(name is not None and name in cookies for name in names):
                return False
        return True

    # -- the hit path ---------------------------------------------------------------------

    def serve(
        self, environ: dict[str, Any], start_response: Any, id_header: str, request_id: str
    ) -> Iterable[bytes] | None:
        """Answer from a front entry, or None to let Flask handle the request."""
        identity = identity_of(environ)
        route = self.routes.get(identity) if identity is not None else None
        if route is None or not self.request_eligible(environ):
            return None
        if not route.head and environ["REQUEST_METHOD"] == "HEAD":
            return None
        entry = self.lookup(route.key_for(environ))
        if entry is None or entry.response is None:
            return None
        self.layered.stats.count("l1_hits", route.endpoint)
        reply: _Reply = entry.front_reply or _reply_for(entry)
        now = self.layered.clock()
        ttl, age = int(entry.expires_at - now), int(now - entry.created_at)
        per_request = [
            ("Cache-Status", f"{CACHE_ID}; hit; ttl={ttl if ttl > 0 else 0}; detail=front"),
            ("Age", str(age) if age > 0 else "0"),
            (id_header, request_id),
        ]
        if entry.etag and "HTTP_IF_NONE_MATCH" in environ and _etag_matches(environ, entry.etag):
            start_response("304 Not Modified", reply.not_modified + per_request)
            return []
        start_response(reply.status, reply.headers + per_request)
        return [] if environ["REQUEST_METHOD"] == "HEAD" else [entry.body]

    def lookup(self, key: str) -> CacheEntry | None:
        """The front entry under ``key`` in L1 (one function per layer lookup)."""
        layered = self.layered
        entry = layered.get_l1(key, layered.trusted_since())
        return entry if entry is not None and entry.kind == "response" else None

    # -- keeping a final response ----------------------------------------------------------

    def keep(
        self,
        offer: Offer,
        environ: Mapping[str, Any],
        *,
        identity: Identity,
        status: str,
        headers: WsgiHeaders,
        body: bytes,
    ) -> bool:
        """Keep the final response the app sent for an offered request; False
        when it is not one a shared cache may replay to anyone."""
        if not status.startswith("200 "):
            return False
        kept = replayable_headers(self.header_policy, headers)
        if kept is None:
            return False
        etag = next((value for name, value in kept if name.lower() == "etag"), None)
        route = offer.route
        varies = any(name.lower() == "vary" for name, _ in kept)
        if varies != route.vary_encoding:
            key = front_key(route.variant, route.resource)
            route = Route(route.resource, route.variant, key, varies, route.endpoint, route.head)
        stored = StoredResponse(200, tuple(kept), body, offer.created_at)
        entry = CacheEntry(
            "response", body, offer.created_at, offer.expires_at, offer.stamp, stored, etag=etag
        )
        # Only what a later request of this identity would be answered with.
        if not self.layered.keep_in_l1(route.key_for(environ), entry, offer.mark):
            return False
        with self._lock:
            if len(self.routes) >= self.max_routes and identity not in self.routes:
                self.routes.clear()  # bounded: forgetting only costs a trip through Flask
            self.routes[identity] = route
        return True


def replayable_headers(policy: HeaderPolicy, headers: WsgiHeaders) -> WsgiHeaders | None:
    """The final response's headers a shared cache replays (``policy`` and the
    per-serve ones removed), or None when the response must not be replayed
    to anyone: ``Set-Cookie``, a refusing ``Cache-Control``, ``Pragma:
    no-cache``, an expired ``Expires``, ``Vary`` beyond ``Accept-Encoding``."""
    if any(name.lower() == "set-cookie" for name, _ in headers):
        return None
    kept: WsgiHeaders = []
    for name, value in policy.keep(headers):
        lower = name.lower()
        if lower in _PER_SERVE:
            continue
        if lower == "cache-control" and cache_control_refusal(value) is not None:
            return None
        if lower == "vary" and {v.strip().lower() for v in value.split(",")} - {"accept-encoding"}:
            return None
        if lower == "pragma" and "no-cache" in value.lower():
            return None
        if lower == "expires":
            expires = parse_date(value)  # unparsable: already expired (RFC 9111 §5.3)
            if expires is None or expires.timestamp() <= time.time():
                return None
        kept.append((name, value))
    return kept


def _etag_matches(environ: Mapping[str, Any], etag: str) -> bool:
    opaque, _weak = unquote_etag(etag)
    return opaque is not None and parse_etags(environ["HTTP_IF_NONE_MATCH"]).contains_weak(opaque)
