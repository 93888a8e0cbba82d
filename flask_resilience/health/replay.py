"""Replay-protection (idempotency) endpoints of the health blueprint."""

from __future__ import annotations

from flask import Response, jsonify

from ..idempotency.service import AppIdempotency
from ..problems import Problem
from ..stores.redis import StoreUnavailableError
from .auth import admin_required, stats_access
from .blueprint import health_blueprint, no_store
from .inputs import json_object, string_field


@health_blueprint.get("/replay-protection")
def replay_protection_stats() -> Response:
    stats_access()
    return no_store(jsonify(AppIdempotency.of().stats()))


@health_blueprint.post("/replay-protection/reset")
@admin_required
def reset_replay_protection() -> Response:
    AppIdempotency.of().reset_stats()
    return no_store(jsonify(reset=True))


@health_blueprint.post("/replay-protection/clear")
@admin_required
def clear_replay_protection() -> Response:
    """Admin: no body clears every key; ``{"key": ..., "user_id": ...}`` one key."""
    body = json_object(required=False)
    key = string_field(body, "key", required=False)
    user_id = body.get("user_id")
    if user_id is not None and not isinstance(user_id, (str, int)):
        raise Problem(
            400, "invalid-body", "Invalid request body", "'user_id' must be a string or an integer."
        )
    if key is None and user_id is not None:
        raise Problem(400, "invalid-body", "Invalid request body", "'user_id' needs a 'key'.")
    service = AppIdempotency.of()
    try:
        removed = (
            service.clear()
            if key is None
            else service.invalidate(key, None if user_id is None else str(user_id))
        )
    except StoreUnavailableError as exc:
        raise Problem(
            503, "idempotency-store-unavailable", "Idempotency store unavailable", str(exc)
        ) from None
    return no_store(jsonify(removed=removed))
