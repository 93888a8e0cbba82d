"""One request through a cached view: look up, or compute and store."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Collection, Iterable, Iterator

from flask import Request, Response, current_app, request
from flask.globals import request_ctx
from werkzeug.datastructures import Headers

from ..context import dispatch_principal
from ..responses import StoredResponse
from .entry import CacheEntry, Stamp
from .flight import wait_for_holder
from .front import IDENTITY_ENVIRON, OFFER_ENVIRON, Offer, Route, front_key
from .keys import custom_resource_key, full_key, variant, vary_values
from .layered import Lookup
from .policy import ViewPolicy
from .rules import etag_matches, request_control, response_refusal, strong_etag
from .service import AppCache

CACHE_ID = "flask-resilience"


PASS_SECONDS = 10.0  # how long a resource whose response was not stored skips the stampede locks
# Refusals that depend on this request, not on the resource: they leave no pass marker.
_REQUEST_REFUSALS = frozenset({"session-modified", "after-this-request", "head-without-body"})


def serve(cache: AppCache, policy: ViewPolicy, run: Callable[[], Response]) -> Response:
    """The response for this request: a hit, or ``run()`` (the view) stored."""
    current = request._get_current_object()  # type: ignore[attr-defined]  # once, not per use
    principal = dispatch_principal() if policy.per_user else None
    session_cookie, remember_cookie = _cookie_names() if "HTTP_COOKIE" in current.environ else ("", None)
    bypass = cache.bypass_reason(
        current,
        per_user=policy.per_user,
        has_principal=principal is not None,
        condition=policy.condition,
        session_cookie=session_cookie,
        remember_cookie=remember_cookie,
    )
    if bypass is not None:
        return _bypassed(cache, bypass, run())
    plan = Plan(cache, policy, current, None if principal is None else principal.key)
    front = cache.front
    if front.enabled and policy.allows_front(front.everywhere):
        front.armed = True  # from now on the middleware notes request identities
        environ = current.environ
        if IDENTITY_ENVIRON in environ and current.method == "GET" and front.request_eligible(environ):
            plan.front_mark = cache.layered.mark()
    if not plan.revalidate and plan.since is not None:
        plan.l1_fills = cache.layered.l1_fills
        found = plan.lookup_l1()
        if found is not None:
            return found
    if plan.passing:  # hit-for-pass: its last response was not stored, no request waits for another
        return plan.pass_through(run())
    with plan.flight() as found:
        if found is not None:
            return found
        if not plan.passing:
            return plan.store(run())
    return plan.store(run())  # L2 held a pass marker: out of the single flight, nobody waits for this


def _cookie_names() -> tuple[str, str | None]:
    """The app's session cookie and Flask-Login's remember cookie, when renamed
    (read only for a request that sends cookies)."""
    config = current_app.config
    return config.get("SESSION_COOKIE_NAME", "session"), config.get("REMEMBER_COOKIE_NAME")


def _bypassed(cache: AppCache, reason: str, response: Response) -> Response:
    cache.layered.stats.count_reason("bypasses", reason, request.endpoint or request.path)
    response.headers["X-Cache"] = "MISS"
    response.headers["Cache-Status"] = f"{CACHE_ID}; fwd=bypass; detail={reason}"
    return response


class Plan:
    """Keys, the listening state and what a miss stores under."""

    def __init__(self, cache: AppCache, policy: ViewPolicy, current: Request, principal: str | None) -> None:
        self.cache = cache
        self.policy = policy
        self.request = current
        self.endpoint = current.endpoint or current.path
        self.scheme = current.scheme if policy.vary_host else None
        self.host = current.host if policy.vary_host else None
        self.root = current.script_root  # a mount point (X-Forwarded-Prefix too) changes built URLs
        self.principal = principal
        if policy.key_func is not None:
            self.resource = custom_resource_key(policy.prefix, policy.key_func(current))
            self.key = full_key(self._variant(), self.resource)
        else:
            self.resource, self.key = policy.keys_for(current, self.scheme, self.host, self.root, principal)
        self.revalidate = (
            cache.honors_no_cache
            and "HTTP_CACHE_CONTROL" in current.environ
            and bool(request_control(current).no_cache)
        )
        self.since = cache.layered.trusted_since()
        if self.since is None:
            cache.layered.stats.count("l1_unsynced", self.endpoint)
        self.token = ""  # set when this request holds the cross-process lock
        self.lock_key = self.key
        self.miss: tuple[Stamp, str | None, tuple[int, float]] | None = None
        self.l1_fills = -1  # layered.l1_fills when this request looked in L1 (-1: it did not)
        self.front_mark: tuple[int, float] | None = None  # set when the front tier may keep the response
        self.passing = False  # a pass marker was found: no stampede lock for this request
        self.resolved_key = self.key  # the varied key when a vary marker was followed

    def _variant(self, vary: tuple[tuple[str, str | None], ...] = ()) -> str:
        return variant(
            scheme=self.scheme, host=self.host, principal=self.principal, vary=vary, root=self.root
        )

    def _varied_key(self, names: Collection[str]) -> str:
        return full_key(self._variant(vary_values(self.request, list(names))), self.resource)

    def lookup_l1(self) -> Response | None:
        layered = self.cache.layered
        entry = layered.get_l1(self.key, self.since)
        if entry is not None and entry.kind == "vary":
            self.resolved_key = self._varied_key(entry.vary)
            entry = layered.get_l1(self.resolved_key, self.since)
        if entry is None or entry.kind != "response":
            self.passing = self.passing or (entry is not None and entry.kind == "pass")
            return None
        layered.stats.count("l1_hits", self.endpoint)
        return self._respond(entry, "l1")

    def lookup_l2(self, *, lock: bool = True) -> Response | None:
        """Read L2 or take the cross-process lock in one round trip; when
        another process holds the lock, wait for what it stores. Without
        ``lock`` (hit-for-pass), neither take nor wait for it."""
        layered = self.cache.layered
        timeout = self.cache.lock_timeout if lock else None
        mark = layered.mark()
        token = secrets.token_hex(8)
        key = self.key
        found = self._passed(layered.lookup_l2(key, self.resource, self.since, token=token, lock_ttl=timeout))
        if found.entry is not None and found.entry.kind == "vary":
            if found.locked:
                layered.unlock(key, self.resource, token)
            key = self.resolved_key = self._varied_key(found.entry.vary)
            found = self._passed(
                layered.lookup_l2(key, self.resource, self.since, token=token, lock_ttl=timeout)
            )
        if found.entry is None and found.busy and timeout is not None:
            found = self._passed(wait_for_holder(layered, key, self.resource, timeout))
            if found.entry is not None and found.entry.kind == "response":
                layered.stats.count("collapsed", self.endpoint)
        if found.entry is not None and found.entry.kind == "response":
            layered.stats.count(f"{found.layer}_hits", self.endpoint)
            return self._respond(found.entry, found.layer)
        if found.locked:
            self.token, self.lock_key = token, key
        # Read before the view runs (a hit never needs it): an invalidation after
        # this read makes what the view computes stale on arrival.
        self.miss = (layered.stamp(self.policy.tags, self.since), found.generation, mark)
        return None

    def _passed(self, found: Lookup) -> Lookup:
        """A pass marker found in L2 reads as a miss that holds no lock (none
        was taken), and this request passes."""
        if found.entry is None or found.entry.kind != "pass":
            return found
        self.passing = True
        return Lookup(None, "", found.generation)

    def _miss_without_l2(self) -> None:
        layered = self.cache.layered
        self.miss = (layered.stamp(self.policy.tags, self.since), None, layered.mark())

    @contextlib.contextmanager
    def flight(self) -> Iterator[Response | None]:
        """Single flight in this process; its leader then reads L2 or takes the
        cross-process lock. Yields a response found on the way, or None when
        the caller must run the view."""
        layered = self.cache.layered
        with self.cache.flight(self.key, self.cache.lock_timeout) as leader:
            try:
                found = None
                if not leader and self.since is not None:
                    found = self.lookup_l1()  # the leader has finished: it stored, or could not
                    if found is not None:
                        layered.stats.count("collapsed", self.endpoint)
                if found is None and not self.revalidate:
                    # A flight that ended after this request's lookup may have stored it.
                    if leader and self.since is not None and self.l1_fills != layered.l1_fills:
                        found = self.lookup_l1()
                    found = found or self.lookup_l2()
                if found is None and self.miss is None:
                    self._miss_without_l2()
                yield found
            finally:
                if self.token:  # nothing was stored (an error, or a refusal)
                    layered.unlock(self.lock_key, self.resource, self.token)
                    self.token = ""

    def _refusal(self, response: Response) -> str | None:
        """Why ``response`` must not be stored (counted), or None."""
        refusal = response_refusal(response, self.policy.statuses, self.cache.max_body_bytes)
        if refusal is None and _session_modified():
            refusal = "session-modified"
        if refusal is None and request_ctx._after_request_functions:
            # after_this_request changes the response after this point (a
            # Set-Cookie, most often): what is stored would not be the response.
            refusal = "after-this-request"
        if refusal is None and request.method == "HEAD" and not response.get_data():
            refusal = "head-without-body"  # the view answered HEAD itself: no GET body to keep
        if refusal is not None:
            self.cache.layered.stats.count_reason("not_stored", refusal, self.endpoint)
        return refusal

    def pass_through(self, response: Response) -> Response:
        """Hit-for-pass from L1: the view ran without a lookup in L2 (nothing to
        store under), so a response that may be stored again only ends the
        marker here; the next request stores it."""
        self.cache.layered.stats.count("misses", self.endpoint)
        refusal = self._refusal(response)
        if refusal is None:
            self.cache.layered.l1.delete(self.resolved_key)
            return _mark_miss(response, "pass")
        return _mark_miss(response, f"not-stored-{refusal}")

    def store(self, response: Response) -> Response:
        layered = self.cache.layered
        layered.stats.count("misses", self.endpoint)
        refusal = self._refusal(response)
        if refusal is not None:
            if self._leaves_pass(refusal, response):
                self._keep_pass(response)
            return _mark_miss(response, f"not-stored-{refusal}")
        assert self.miss is not None
        stamp, generation, mark = self.miss
        if "ETag" not in response.headers:
            response.headers["ETag"] = strong_etag(response.get_data())
        now = layered.clock()
        expires = now + (self.policy.ttl or self.cache.default_ttl)
        captured = StoredResponse.capture(response, self.cache.header_policy, now)
        entry = CacheEntry(
            "response", captured.body, now, expires, stamp, captured, etag=response.headers["ETag"]
        )
        key = self.key
        vary = sorted(response.vary) if "Vary" in response.headers else []
        if vary:
            marker = CacheEntry("vary", b"", now, expires, stamp, vary=tuple(vary))
            layered.put(key, self.resource, marker, generation=generation, since=mark)
            key = self._varied_key(vary)
        token = None
        if self.token and self.lock_key == key:  # else flight() releases the lock it holds
            token, self.token = self.token, ""
        stored = layered.put(key, self.resource, entry, generation=generation, since=mark, token=token)
        if not stored:
            return _mark_miss(response, "not-stored-invalidated")
        response = _mark_miss(response, "stored")
        if self.front_mark is not None:
            self._offer_front(entry, mark)
        if entry.etag and etag_matches(request, entry.etag):
            return _not_modified(entry, response.headers.items())
        return response

    def _leaves_pass(self, refusal: str, response: Response) -> bool:
        """Whether a refusal marks the resource: one that the resource causes,
        seen by a request that looked it up and found nothing (not a revalidation,
        not one that found a marker already)."""
        if refusal in _REQUEST_REFUSALS or self.passing or self.revalidate:
            return False
        if refusal == "status":
            # Not found: random URLs must not fill the caches with markers. And a
            # status the request chose (304, 206, 412...) says nothing of the resource.
            return response.status_code not in (404, 410) and not _conditional(self.request)
        return True

    def _keep_pass(self, response: Response) -> None:
        """The response could not be stored: mark the resource (hit-for-pass) so
        that, for a while, its requests neither take nor wait for a stampede
        lock (they would find nothing, and compute one after another). Under
        the response's own variant when it varies; never over a vary marker."""
        assert self.miss is not None
        stamp, generation, mark = self.miss
        layered = self.cache.layered
        now = layered.clock()
        marker = CacheEntry("pass", b"", now, now + min(PASS_SECONDS, self.policy.ttl or PASS_SECONDS), stamp)
        key = self._varied_key(sorted(response.vary)) if "Vary" in response.headers else self.resolved_key
        token = None
        if self.token and self.lock_key == key:
            token, self.token = self.token, ""  # released by the same round trip
        layered.put(key, self.resource, marker, generation=generation, since=mark, token=token, counted=False)

    def _offer_front(self, entry: CacheEntry, mark: tuple[int, float]) -> None:
        """Leave ``entry`` for the middleware, which keeps the final response."""
        variant_text = self._variant()
        key = front_key(variant_text, self.resource)
        route = Route(self.resource, variant_text, key, False, self.endpoint, _head_routes_here(self.request))
        offer = Offer(route, entry.stamp, entry.created_at, entry.expires_at, mark)
        self.request.environ[OFFER_ENVIRON] = offer

    def _respond(self, entry: CacheEntry, layer: str) -> Response:
        now = self.cache.layered.clock()
        assert entry.response is not None
        if self.front_mark is not None:
            self._offer_front(entry, self.front_mark)
        extra = (
            ("X-Cache", "HIT"),
            ("Cache-Status", f"{CACHE_ID}; hit; ttl={max(0, int(entry.expires_at - now))}; detail={layer}"),
            ("Age", str(max(0, int(now - entry.created_at)))),
        )
        headers = [*entry.response.headers, *extra]
        if entry.etag and etag_matches(self.request, entry.etag):
            return _not_modified(entry, headers)
        body = entry.body
        headers.append(("Content-Length", str(len(body))))  # what Response(body) would set, unchecked
        response = Response(status=entry.response.status, headers=_StoredHeaders(headers))
        response.response = [body]
        return response


def _head_routes_here(current: Request) -> bool:
    """Whether Flask sends a HEAD of this GET request to the same view (not to
    a HEAD view registered before it): only then may the front tier answer it."""
    try:
        adapter = current_app.create_url_adapter(current)
        if adapter is None:
            return False
        rule, _args = adapter.match(method="HEAD", return_rule=True)
    except Exception:
        return False
    return rule is current.url_rule  # (view_args may have been changed by a url_value_preprocessor)


class _StoredHeaders(Headers):
    """Headers of a stored entry: validated by werkzeug when the response was
    made, so a hit does not validate every value again (half its cost)."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._list = list(pairs)  # a copy: Headers.copy() builds one from our list


_CONDITIONS = ("HTTP_IF_NONE_MATCH", "HTTP_IF_MODIFIED_SINCE", "HTTP_IF_MATCH", "HTTP_IF_UNMODIFIED_SINCE")


def _conditional(current: Request) -> bool:
    """Whether the request's own headers may choose its status (RFC 9110 §13, §14)."""
    environ = current.environ
    return "HTTP_RANGE" in environ or any(name in environ for name in _CONDITIONS)


def _session_modified() -> bool:
    """Whether the view modified the session, without marking it accessed
    (reading ``flask.session`` would, and Flask then adds ``Vary: Cookie``)."""
    ctx = request_ctx._get_current_object()  # type: ignore[attr-defined]
    opened = ctx.__dict__.get("_session", ctx.__dict__.get("session"))
    return bool(getattr(opened, "modified", False))


def _mark_miss(response: Response, detail: str) -> Response:
    response.headers["X-Cache"] = "MISS"
    if detail == "stored":
        response.headers["Cache-Status"] = f"{CACHE_ID}; fwd=uri-miss; stored"
    else:
        response.headers["Cache-Status"] = f"{CACHE_ID}; fwd=uri-miss; detail={detail}"
    return response


def _not_modified(entry: CacheEntry, headers: Iterable[tuple[str, str]]) -> Response:
    """A 304 with the validators and caching headers a 200 would carry (RFC 9110 §15.4.5)."""
    response = Response(status=304)
    left_out = (
        ("content-length", "content-type", "etag") if entry.etag else ("content-length", "content-type")
    )
    for name, value in headers:
        if name.lower() not in left_out:
            response.headers.add(name, value)  # add: a repeated header keeps every line
    if entry.etag:
        response.headers["ETag"] = entry.etag
    return response
