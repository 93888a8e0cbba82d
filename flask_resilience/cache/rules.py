"""HTTP rules for a shared response cache (RFC 9111).

The cache serves one stored response to many clients, so it behaves like a
shared cache: it stores only what may be shared, keys on everything a
response varies on (:mod:`.keys`), and never lets one caller's response
reach another.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Collection
from dataclasses import dataclass, field

from flask import Request, Response
from werkzeug.datastructures import RequestCacheControl, ResponseCacheControl
from werkzeug.http import parse_cache_control_header, parse_date, unquote_etag

CACHEABLE_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class Credentials:
    """What marks a request as carrying a caller's identity: any of these
    headers, or any of these cookies (lower-case header names)."""

    headers: tuple[str, ...]
    cookies: tuple[str, ...]
    # (WSGI environ key, lower-case name) of each header: one dict lookup each
    # on the hit path instead of a scan of the header list.
    environ_keys: tuple[tuple[str, str], ...] = field(init=False)

    def __post_init__(self) -> None:
        keys = tuple(("HTTP_" + name.upper().replace("-", "_"), name.lower()) for name in self.headers)
        object.__setattr__(self, "environ_keys", keys)


def request_bypass(
    request: Request,
    *,
    per_user: bool,
    has_principal: bool,
    credentials: Credentials,
    session_cookie: str,
    remember_cookie: str | None = None,
) -> str | None:
    """Why this request must not use the shared cache, or None.

    A request carrying credentials (a private header or cookie, including
    the app's ``REMEMBER_COOKIE_NAME``) is served from the cache only by a
    view cached ``per_user`` that knows the caller.
    """
    if request.method not in CACHEABLE_METHODS:
        return "method"
    environ = request.environ
    # Raw environ checks first: parsing Cache-Control and cookies costs more than a hit.
    if "HTTP_CACHE_CONTROL" in environ and request_control(request).no_store:
        return "request-no-store"
    private = next((name for key, name in credentials.environ_keys if key in environ), None)
    if private is None and "HTTP_COOKIE" in environ:
        cookies = request.cookies
        if session_cookie in cookies:
            private = "session-cookie"
        elif remember_cookie in cookies or any(name in cookies for name in credentials.cookies):
            private = "credential-cookie"
    if private is not None and (not per_user or not has_principal):
        return private
    return None


def response_refusal(response: Response, statuses: Collection[int], max_body: int) -> str | None:
    """Why ``response`` must not be stored, or None."""
    if response.status_code not in statuses:
        return "status"
    if response.is_streamed:
        return "streamed"
    headers = response.headers
    if "Set-Cookie" in headers:
        return "set-cookie"
    # Parse Cache-Control and Vary only when present: most responses have neither.
    if "Cache-Control" in headers:
        refusal = cache_control_refusal(headers["Cache-Control"])
        if refusal is not None:
            return refusal
    if "Pragma" in headers and "no-cache" in headers["Pragma"].lower():
        return "pragma-no-cache"
    if "Expires" in headers:
        expires = parse_date(headers["Expires"])
        # An unparsable Expires means "already expired" (RFC 9111 §5.3).
        if expires is None or expires.timestamp() <= time.time():
            return "expired"
    if "Vary" in headers and "*" in response.vary:
        return "vary-star"
    if len(response.get_data()) > max_body:
        return "too-large"
    return None


def request_control(request: Request) -> RequestCacheControl:
    """The request's Cache-Control; directive names are case-insensitive
    (RFC 9111 §5.2), werkzeug's parser is not."""
    return parse_cache_control_header(
        request.environ.get("HTTP_CACHE_CONTROL", "").lower(), None, RequestCacheControl
    )


def cache_control_refusal(value: str) -> str | None:
    control = parse_cache_control_header(value.lower(), None, ResponseCacheControl)
    if control.private:
        return "private"
    if control.no_store:
        return "no-store"
    if control.no_cache:
        return "no-cache"
    # An s-maxage that is not a number means "stale already" (RFC 9111 §4.2.1).
    if "s-maxage" in control and (control.s_maxage is None or int(control.s_maxage) <= 0):
        return "s-maxage-0"
    return None


def strong_etag(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def etag_matches(request: Request, etag: str) -> bool:
    """Weak comparison (RFC 9110 §13.1.2) of ``If-None-Match`` with ``etag``,
    through werkzeug's parser (an entity tag may contain a comma)."""
    if "HTTP_IF_NONE_MATCH" not in request.environ:
        return False
    opaque, _weak = unquote_etag(etag)
    return opaque is not None and request.if_none_match.contains_weak(opaque)
