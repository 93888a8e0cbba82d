"""Reading JSON bodies: a 400 problem for anything that is not what a view expects."""

from __future__ import annotations

from typing import Any

from flask import request
from flask.json.provider import DefaultJSONProvider

from flask_resilience import Problem


class BoundedJSONProvider(DefaultJSONProvider):
    """Flask's JSON, except that a document nested too deeply for the parser
    is invalid JSON (a ValueError, so ``get_json(silent=True)`` gives None
    everywhere it is read) instead of a RecursionError and a 500."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("the JSON document is nested too deeply") from None


def json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise Problem(400, "invalid-body", "Invalid request body", "Send a JSON object.")
    return body


def text_field(body: dict[str, Any], name: str, max_length: int = 128) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= max_length or not _encodable(value):
        raise Problem(
            400, "invalid-body", "Invalid request body", f"'{name}' must be a string of 1-{max_length} chars."
        )
    return value


def _encodable(value: str) -> bool:
    """False for text with lone surrogates (valid JSON escapes, not valid Unicode)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def int_field(body: dict[str, Any], name: str, low: int, high: int) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Problem(
            400, "invalid-body", "Invalid request body", f"'{name}' must be an integer from {low} to {high}."
        )
    return value
