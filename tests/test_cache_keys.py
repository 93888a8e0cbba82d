"""The key scheme is injective: distinct requests never share a key, equal ones always do."""

from __future__ import annotations

from urllib.parse import quote

from flask import Flask, Request
from flask import request as flask_request
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder

from flask_resilience import Resilience
from flask_resilience.cache.keys import full_key, query_pairs, request_resource, resource_key, variant
from flask_resilience.cache.plan import Plan
from flask_resilience.cache.policy import ViewPolicy
from flask_resilience.cache.service import AppCache

# Every character, lone surrogates included: a key must never fail to build.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=12)
HOSTLIKE = st.text(st.sampled_from("aAbz.-:0[]%#|?"), max_size=8)
QUERY = st.lists(st.tuples(ANY_TEXT, ANY_TEXT), max_size=4)
VARY = st.dictionaries(
    st.sampled_from(["accept", "accept-language", "x-a"]), st.none() | ANY_TEXT, max_size=3
)

Inputs = tuple[str | None, str | None, str, list[tuple[str, str]], str | None, dict[str, str | None]]
REQUESTS = st.tuples(
    st.none() | st.sampled_from(["http", "https"]),
    st.none() | HOSTLIKE,
    ANY_TEXT.map(lambda text: "/" + text),
    QUERY,
    st.none() | ANY_TEXT,
    VARY,
)


def key_of(inputs: Inputs) -> str:
    scheme, host, path, query, principal, vary = inputs
    resource = resource_key("api", path, query)
    return full_key(
        variant(scheme=scheme, host=host, principal=principal, vary=sorted(vary.items())), resource
    )


def canonical(inputs: Inputs) -> Inputs:
    """What a view sees: one name's values keep their order; names do not."""
    scheme, host, path, query, principal, vary = inputs
    return scheme, host, path, sorted(query, key=lambda pair: pair[0]), principal, vary


@settings(max_examples=1000, deadline=None)
@given(REQUESTS, REQUESTS)
def test_distinct_requests_get_distinct_keys(one: Inputs, other: Inputs) -> None:
    assume(canonical(one) != canonical(other))
    assert key_of(one) != key_of(other)


@settings(max_examples=500, deadline=None)
@given(REQUESTS)
def test_equal_requests_get_equal_keys(inputs: Inputs) -> None:
    scheme, host, path, query, principal, vary = inputs
    same: Inputs = (scheme, host, str(path), [(name, value) for name, value in query], principal, dict(vary))
    assert key_of(inputs) == key_of(same)
    assert key_of(inputs) == key_of(canonical(inputs))


def test_variant_parts_cannot_be_forged_through_each_other() -> None:
    # The principal marker, host and scheme are labelled and encoded: no value can spell another's.
    assert variant(scheme=None, host=None, principal="x|h=evil") != variant(
        scheme=None, host="evil", principal="x"
    )
    assert variant(scheme=None, host=None, principal="-") != variant(scheme=None, host=None, principal=None)


SAFE_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)


@settings(max_examples=200, deadline=None)
@given(SAFE_TEXT, st.lists(st.tuples(SAFE_TEXT.filter(bool), SAFE_TEXT), max_size=4))
def test_a_real_request_keys_on_what_its_view_sees(path: str, query: list[tuple[str, str]]) -> None:
    """Percent-encoded ``#``, ``?``, ``&`` or ``=`` in a raw URL stay part of the
    component they were in: the key of the request is the key of its parts."""
    # As a WSGI server passes it: PATH_INFO decoded (UTF-8 bytes as latin-1), the query raw.
    environ = EnvironBuilder(path="/").get_environ()
    environ["PATH_INFO"] = ("/" + path).encode().decode("latin-1")
    environ["QUERY_STRING"] = "&".join(
        f"{quote(name.encode(), safe='')}={quote(value.encode(), safe='')}" for name, value in query
    )
    request = Request(environ)
    assert request.path == "/" + path.lstrip("/")  # werkzeug merges leading slashes
    assert request_resource(request, "api", None) == resource_key(
        "api", request.path, list(request.args.items(multi=True))
    )
    by_name = sorted(request.args.items(multi=True), key=lambda pair: pair[0])
    assert by_name == sorted(query, key=lambda pair: pair[0])  # each name's values in order


RAW_QUERY = st.text(st.sampled_from("aAz0-._~=&%+;2FC3A9 b\xe9"), max_size=16)


def _parsed(query_string: str) -> tuple[Request, list[tuple[str, str]] | None]:
    """The request and its ``request.args`` pairs (None: werkzeug cannot decode it)."""
    environ = EnvironBuilder(path="/").get_environ()
    environ["QUERY_STRING"] = query_string
    request = Request(environ)
    try:
        return request, list(request.args.items(multi=True))
    except UnicodeDecodeError:
        return request, None


@settings(max_examples=1000, deadline=None)
@given(RAW_QUERY)
def test_the_raw_query_parser_agrees_with_werkzeug(query_string: str) -> None:
    """Where the raw ``QUERY_STRING`` is parsed without werkzeug, the pairs
    (and so the key) are exactly those of ``request.args``."""
    request, werkzeug_pairs = _parsed(query_string)
    fast = query_pairs(query_string)
    if werkzeug_pairs is None:
        assert fast is None
        assert "#raw=" in request_resource(request, "api", None)  # keyed on the raw text
        return
    if fast is not None:  # werkzeug groups by name; the key sorts names, keeping each name's order
        assert sorted(fast, key=lambda pair: pair[0]) == sorted(werkzeug_pairs, key=lambda pair: pair[0])
    assert request_resource(request, "api", None) == resource_key("api", "/", werkzeug_pairs)
    allowed = ["a", "z", ""]
    only = [pair for pair in werkzeug_pairs if pair[0] in allowed]
    assert request_resource(request, "api", allowed) == resource_key("api", "/", only)


@settings(max_examples=1000, deadline=None)
@given(RAW_QUERY, RAW_QUERY)
def test_raw_queries_share_a_key_exactly_when_the_view_sees_the_same(one: str, other: str) -> None:
    first, first_pairs = _parsed(one)
    second, second_pairs = _parsed(other)

    def seen(query_string: str, pairs: list[tuple[str, str]] | None) -> object:
        return ("raw", query_string) if pairs is None else sorted(pairs, key=lambda pair: pair[0])

    keys_equal = request_resource(first, "api", None) == request_resource(second, "api", None)
    assert keys_equal == (seen(one, first_pairs) == seen(other, second_pairs))


HOSTILE_PATH = st.text(st.sampled_from("ab/%23%3F%00\xe9\x00#?&=;+ "), max_size=10)
REQUEST_PARTS = st.tuples(
    HOSTILE_PATH,
    RAW_QUERY,
    st.sampled_from(["", "/mount"]),
    st.none() | st.sampled_from(["alice", "bob", "u=-", "-"]),
    st.sampled_from(["a.test", "b.test:8080", "A.TEST"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(REQUEST_PARTS, min_size=1, max_size=12), st.booleans(), st.sampled_from([None, ("a", "z")]))
def test_a_views_remembered_keys_are_the_keys_computed_afresh(
    requests: list[tuple[str, str, str, str | None, str]], vary_host: bool, query_args: tuple[str, ...] | None
) -> None:
    """A view remembers the keys of the URLs it saw: whatever came before, in
    any order, the remembered key is the one computed from the request."""
    policy = ViewPolicy(
        ttl=60,
        tags=(),
        prefix="api",
        key_func=None,
        condition=None,
        per_user=False,
        query_args=query_args,
        statuses=frozenset({200}),
        vary_host=vary_host,
    )
    app = Flask("memo")
    app.config["RESILIENCE_AUDIT_ENABLED"] = False
    extension = Resilience(app)
    try:
        cache = AppCache.of(app)
        for path, query, root, principal, host in requests + requests[::-1]:
            environ = EnvironBuilder(path="/", base_url=f"http://{host}{root}").get_environ()
            environ["PATH_INFO"] = "/" + path.encode("utf-8", "surrogateescape").decode("latin-1")
            environ["QUERY_STRING"] = query
            with app.request_context(environ):
                current = flask_request._get_current_object()  # type: ignore[attr-defined]
                remembered = Plan(cache, policy, current, principal)
                resource = request_resource(current, "api", query_args)
                fresh = full_key(
                    variant(
                        scheme=current.scheme if vary_host else None,
                        host=current.host if vary_host else None,
                        principal=principal,
                        root=current.script_root,
                    ),
                    resource,
                )
                assert (remembered.resource, remembered.key) == (resource, fresh)
    finally:
        extension.shutdown()
