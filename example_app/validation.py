"""Reading JSON bodies: a 400 problem for anything that is not what a view expects."""

from __future__ import annotations

from typing import Any

from flask import request

from flask_resilience import Problem


def json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise Problem(400, "invalid-body", "Invalid request body", "Send a JSON object.")
    return body


def text_field(body: dict[str, Any], name: str, max_length: int = 128) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= max_length:
        raise Problem(
            400, "invalid-body", "Invalid request body", f"'{name}' must be a string of 1-{max_length} chars."
        )
    return value


def int_field(body: dict[str, Any], name: str, low: int, high: int) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Problem(
            400, "invalid-body", "Invalid request body", f"'{name}' must be an integer from {low} to {high}."
        )
    return value
