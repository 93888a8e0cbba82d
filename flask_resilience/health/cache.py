"""Cache endpoints of the health blueprint."""

from __future__ import annotations

import re

from flask import Response, jsonify

from ..cache.backends import PatternsNeedRedis
from ..cache.regex import compile_guarded
from ..cache.service import AppCache
from ..cache.tags import validate_tags
from ..problems import Problem
from ..stores.redis import StoreUnavailableError
from .auth import admin_required, stats_access
from .blueprint import health_blueprint, no_store
from .inputs import json_object, string_field


def _unavailable(exc: Exception) -> Problem:
    return Problem(
        503, "cache-unavailable", "Cache backend unavailable", str(exc), headers={"Retry-After": "5"}
    )


@health_blueprint.get("/cache")
def cache_stats() -> Response:
    """Cache statistics (admin unless RESILIENCE_HEALTH_PUBLIC)."""
    stats_access()
    return no_store(jsonify(AppCache.of().stats()))


@health_blueprint.post("/cache/reset")
@admin_required
def reset_cache_stats() -> Response:
    """Admin: zero the statistics (the cached data stays)."""
    AppCache.of().reset_stats()
    return no_store(jsonify(reset=True))


@health_blueprint.post("/cache/clear")
@admin_required
def clear_cache() -> Response:
    """Admin: drop every entry in every layer of every process."""
    try:
        AppCache.of().clear()
    except StoreUnavailableError as exc:
        raise _unavailable(exc) from None
    return no_store(jsonify(cleared=True))


@health_blueprint.post("/cache/invalidate")
@admin_required
def invalidate() -> Response:
    """Admin: ``{"tag": ...}``, ``{"key": ...}``, ``{"pattern": "glob"}`` or ``{"regex": ...}``."""
    body = json_object(required=True)
    given = [name for name in ("tag", "key", "pattern", "regex") if name in body]
    if len(given) != 1:
        raise Problem(
            400, "invalid-body", "Invalid request body", "Send exactly one of tag, key, pattern, regex."
        )
    kind = given[0]
    value = string_field(body, kind, required=True)
    assert value is not None
    coherence = AppCache.of().coherence
    try:
        if kind == "tag":
            try:
                (value,) = validate_tags([value])
            except ValueError as exc:
                raise Problem(400, "invalid-body", "Invalid tag", str(exc)) from None
            coherence.invalidate_tag(value)
            removed = None
        elif kind == "key":
            coherence.invalidate_resource(value)
            removed = None
        else:
            try:
                pattern: str | re.Pattern[str] = value if kind == "pattern" else compile_guarded(value)
            except ValueError as exc:
                raise Problem(400, "invalid-body", "Invalid regular expression", str(exc)) from None
            removed = coherence.invalidate_pattern(pattern)
    except PatternsNeedRedis as exc:
        raise Problem(409, "patterns-need-redis", "Pattern invalidation unavailable", str(exc)) from None
    except StoreUnavailableError as exc:
        raise _unavailable(exc) from None
    return no_store(jsonify(invalidated={kind: value}, removed=removed))
