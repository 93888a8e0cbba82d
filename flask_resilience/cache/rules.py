"""HTTP rules for a shared response cache (RFC 9111), and cache keys.

The cache serves one stored response to many clients, so it behaves like a
shared cache: it stores only what may be shared, keys on everything a
response varies on, and never lets one caller's response reach another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from urllib.parse import urlencode

from flask import Request, Response

from ..context import Principal

CACHEABLE_METHODS = frozenset({"GET", "HEAD"})

# Headers a stored response keeps; everything else (Set-Cookie above all) is dropped.
STORED_HEADERS = frozenset(
    {
        "cache-control",
        "content-language",
        "content-type",
        "etag",
        "expires",
        "last-modified",
        "link",
        "location",
        "vary",
        "content-disposition",
    }
)

_MAX_KEY = 400


def request_bypass(
    request: Request, *, per_user: bool, principal: Principal | None, session_cookie: str
) -> str | None:
    """Why this request must not use the shared cache, or None."""
    if request.method not in CACHEABLE_METHODS:
        return "method"
    headers = request.headers
    # Raw header checks first: parsing Cache-Control and cookies costs more than a hit.
    if "Cache-Control" in headers and request.cache_control.no_store:
        return "request-no-store"
    private = "authorization" if "Authorization" in headers else None
    if private is None and "Cookie" in headers and session_cookie in request.cookies:
        private = "session-cookie"
    if private is not None and (not per_user or principal is None):
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
        control = response.cache_control
        if control.private or control.no_store:
            return "private" if control.private else "no-store"
        if control.no_cache:
            return "no-cache"
    if "Vary" in headers and "*" in response.vary:
        return "vary-star"
    if len(response.get_data()) > max_body:
        return "too-large"
    return None


def stored_headers(response: Response, extra: Collection[str] = ()) -> tuple[tuple[str, str], ...]:
    allowed = STORED_HEADERS | {name.lower() for name in extra}
    return tuple((name, value) for name, value in response.headers.items() if name.lower() in allowed)


def base_key(
    request: Request,
    *,
    prefix: str,
    query_args: Sequence[str] | None,
    principal: Principal | None,
) -> str:
    """``prefix:path?sorted-query`` plus the principal when keyed per user.

    The query string is sorted (order does not fragment the cache) and, with
    ``query_args``, limited to those names (clients cannot inject key material).
    """
    key = f"{prefix}:{request.path}"
    if not request.query_string:
        return key if principal is None else f"{key}#u={principal.key}"
    items = sorted(
        (name, value)
        for name, values in request.args.lists()
        if query_args is None or name in query_args
        for value in values
    )
    if items:
        key += "?" + urlencode(items)
    if principal is not None:
        key += f"#u={principal.key}"
    if len(key) > _MAX_KEY:
        key = key[:200] + "#h=" + hashlib.sha256(key.encode()).hexdigest()
    return key


def varied_key(key: str, request: Request, vary: Sequence[str]) -> str:
    """``key`` refined by the request's values of the headers in ``vary``."""
    values = "\n".join(f"{name.lower()}:{request.headers.get(name, '')}" for name in sorted(vary))
    return f"{key}#v={hashlib.sha256(values.encode()).hexdigest()[:24]}"


def strong_etag(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def etag_matches(request: Request, etag: str) -> bool:
    """Weak comparison (RFC 9110 §13.1.2) of ``If-None-Match`` with ``etag``."""
    header = request.headers.get("If-None-Match")
    if not header:
        return False
    if header.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(candidate.strip().removeprefix("W/") == opaque for candidate in header.split(","))
