"""Reading the small JSON bodies of admin endpoints."""

from __future__ import annotations

from flask import request

from ..problems import Problem


def json_object(*, required: bool) -> dict[str, object]:
    """The request's JSON object; an empty body is ``{}`` unless ``required``.

    Raises a 400 :class:`Problem` for anything else.
    """
    if not request.get_data(cache=True) and not required:
        return {}
    body = request.get_json(silent=True, force=True)
    if not isinstance(body, dict):
        raise Problem(400, "invalid-body", "Invalid request body", "Send a JSON object.")
    return body


def string_field(body: dict[str, object], name: str, *, required: bool) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise Problem(400, "invalid-body", "Invalid request body", f"'{name}' must be a non-empty string.")
    return value
