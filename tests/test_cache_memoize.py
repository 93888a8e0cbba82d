"""Flask-Caching's spellings: ``resilience.cache.memoize`` / ``delete_memoized``
for functions, ``timeout=`` / ``unless=`` on ``@cached``; on Redis and in memory."""

from __future__ import annotations

import types
from collections import Counter
from typing import Any

import pytest
from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_resilience import Resilience, cached
from flask_resilience.cache.memoize import Memo
from flask_resilience.cache.service import AppCache
from tests.conftest import MakeApp

resilience = Resilience()
CALLS: Counter[str] = Counter()


# Decorated at import time, before any app exists, as with Flask-Caching.
@resilience.cache.memoize(60, tags=["fares"])
def fare(origin: str, destination: str, passengers: int = 1) -> dict[str, Any]:
    CALLS[f"{origin}-{destination}"] += 1
    return {"route": [origin, destination], "price": 100 * passengers}


@resilience.cache.memoize(timeout=60)
def maybe(value: Any) -> Any:
    CALLS["maybe"] += 1
    return value


SKIP = {"on": False}


@resilience.cache.memoize(60, unless=lambda: SKIP["on"])
def unless_skipped(x: int) -> int:
    CALLS["unless"] += 1
    return x


@pytest.fixture(params=["redis", "memory"])
def app(request: pytest.FixtureRequest, make_app: MakeApp) -> Flask:
    CALLS.clear()
    SKIP["on"] = False
    config = (
        {"RESILIENCE_REDIS_URL": request.getfixturevalue("redis_url")} if request.param == "redis" else {}
    )
    app, _ = make_app(resilience, **config)
    return app


def test_memoize_runs_once_per_arguments(app: Flask) -> None:
    with app.app_context():
        assert fare("LIS", "OPO") == {"route": ["LIS", "OPO"], "price": 100}
        assert fare("LIS", "OPO") == {"route": ["LIS", "OPO"], "price": 100}
        assert fare("LIS", "MAD") == {"route": ["LIS", "MAD"], "price": 100}
        assert fare("LIS", "OPO", 2)["price"] == 200
    assert Counter({"LIS-OPO": 2, "LIS-MAD": 1}) == CALLS


def test_positional_keyword_and_default_spellings_share_one_entry(app: Flask) -> None:
    with app.app_context():
        fare("LIS", "OPO")
        fare(origin="LIS", destination="OPO")
        fare("LIS", destination="OPO", passengers=1)
    assert CALLS["LIS-OPO"] == 1


def test_values_of_different_types_are_different_entries(app: Flask) -> None:
    with app.app_context():
        results = [maybe(v) for v in (1, 1.0, True, "1", [1], (1,), None, {"1": 1}, {1: 1})]
        again = [maybe(v) for v in (1, 1.0, True, "1", [1], (1,), None, {"1": 1}, {1: 1})]
    assert CALLS["maybe"] == 9
    # JSON values, as the data cache stores them: a tuple comes back as a list.
    assert results[:5] == [1, 1.0, True, "1", [1]]
    assert again[5] == [1]
    assert again[6] is None


def test_none_is_a_cached_result(app: Flask) -> None:
    with app.app_context():
        assert maybe(None) is None
        assert maybe(None) is None
    assert CALLS["maybe"] == 1


def test_delete_memoized_one_call_or_all(app: Flask) -> None:
    with app.app_context():
        fare("LIS", "OPO")
        fare("LIS", "MAD")
        resilience.cache.delete_memoized(fare, "LIS", destination="OPO")
        fare("LIS", "OPO")
        fare("LIS", "MAD")
        assert Counter({"LIS-OPO": 2, "LIS-MAD": 1}) == CALLS
        resilience.cache.delete_memoized(fare)
        fare("LIS", "OPO")
        fare("LIS", "MAD")
    assert Counter({"LIS-OPO": 3, "LIS-MAD": 2}) == CALLS


def test_tags_invalidate_memoized_entries(app: Flask) -> None:
    from flask_resilience import invalidate_cache_by_tag

    with app.app_context():
        fare("LIS", "OPO")
        invalidate_cache_by_tag("fares")
        fare("LIS", "OPO")
    assert CALLS["LIS-OPO"] == 2


def test_unless_calls_uncached(app: Flask) -> None:
    with app.app_context():
        unless_skipped(1)
        unless_skipped(1)
        SKIP["on"] = True
        unless_skipped(1)
    assert CALLS["unless"] == 2


def test_bad_arguments_and_functions_are_type_errors(app: Flask) -> None:
    with app.app_context():
        with pytest.raises(TypeError, match="argument 'value' is a object"):
            maybe(object())
        with pytest.raises(TypeError):
            fare("LIS")  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="not decorated with memoize"):
            resilience.cache.delete_memoized(print)
    with pytest.raises(TypeError, match="not coroutines"):

        @resilience.cache.memoize(60)
        async def fetch() -> int:
            return 1

    with pytest.raises(TypeError, match="not both"):
        resilience.cache.memoize(60, timeout=60)
    with pytest.raises(ValueError, match="tag"):
        resilience.cache.memoize(60, tags=["no spaces"])


def test_an_unserializable_result_is_not_cached_and_raises(app: Flask) -> None:
    @resilience.cache.memoize(60)
    def a_set() -> set[int]:
        CALLS["set"] += 1
        return {1, 2}

    with app.app_context():
        for _ in range(2):
            with pytest.raises(TypeError):
                a_set()
    assert CALLS["set"] == 2


def test_functions_with_one_name_in_two_modules_do_not_share_entries() -> None:
    def f(x: int) -> int:
        return x

    g = types.FunctionType(f.__code__, {"__name__": "elsewhere"}, "f")
    assert Memo.of(f).key((1,), {}) != Memo.of(g).key((1,), {})
    assert Memo.of(f).tag != Memo.of(g).tag


JSON_LIKE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=3) | st.integers(), inner, max_size=3)
    ),
    max_leaves=8,
)


def _same(a: Any, b: Any) -> bool:
    """Equal, with the same type at every level (1 and True and 1.0 differ)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a) and _same_keys(a, b)
    if isinstance(a, float):
        return repr(a) == repr(b)  # 0.0 and -0.0 are different arguments
    return bool(a == b)


def _same_keys(a: dict[Any, Any], b: dict[Any, Any]) -> bool:
    return sorted(map(repr, a)) == sorted(map(repr, b))


@settings(max_examples=300, deadline=None)
@given(JSON_LIKE, JSON_LIKE)
def test_keys_are_injective(a: Any, b: Any) -> None:
    memo = Memo.of(maybe.__wrapped__)  # type: ignore[attr-defined]
    assert (memo.key((a,), {}) == memo.key((b,), {})) == _same(a, b)


# -- @cached(timeout=, unless=) ------------------------------------------------------------


def _views(app: Flask) -> Flask:
    @app.get("/timeout")
    @cached(timeout=60)
    def by_timeout() -> ResponseReturnValue:
        CALLS["timeout"] += 1
        return jsonify(call=CALLS["timeout"])

    @app.get("/unless")
    @cached(60, unless=lambda: request.args.get("fresh") == "1")
    def by_unless() -> ResponseReturnValue:
        CALLS["unless-view"] += 1
        return jsonify(call=CALLS["unless-view"])

    return app


def test_cached_accepts_timeout_and_unless(app: Flask) -> None:
    client = _views(app).test_client()
    client.get("/timeout")
    hit = client.get("/timeout")
    assert hit.headers["X-Cache"] == "HIT"
    assert "ttl=60" in hit.headers["Cache-Status"] or "ttl=59" in hit.headers["Cache-Status"]
    client.get("/unless")
    assert client.get("/unless").headers["X-Cache"] == "HIT"
    fresh = client.get("/unless?fresh=1")
    assert fresh.headers["Cache-Status"].endswith("detail=condition")
    assert Counter({"timeout": 1, "unless-view": 2}) == CALLS


def test_cached_refuses_both_spellings() -> None:
    with pytest.raises(TypeError, match="not both"):
        cached(60, timeout=60)
    with pytest.raises(TypeError, match="not both"):
        cached(condition=lambda _request: True, unless=lambda: False)


def test_timeout_is_checked_like_ttl() -> None:
    with pytest.raises(ValueError, match="ttl"):
        cached(timeout=-1)


def test_memoized_entries_live_in_the_data_cache(app: Flask) -> None:
    with app.app_context():
        fare("LIS", "OPO")
        key = Memo.of(fare.__wrapped__).key(("LIS", "OPO"), {})  # type: ignore[attr-defined]
        assert resilience.cache.get(key) == {"route": ["LIS", "OPO"], "price": 100}
        assert AppCache.of().stats()["sets"] >= 1
