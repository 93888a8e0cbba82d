"""Reading what an admin sends: small JSON bodies and query parameters.

The one place the health endpoints take input, so an operator's typo (or a
hostile client holding the token) gets a 4xx problem+json naming the field,
never a 500: bodies are bounded in size and nesting, strings must be valid
Unicode without NUL, and times accept ISO 8601 with any offset or an age.
"""

from __future__ import annotations

import contextlib
import json
import re
from datetime import UTC, datetime

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from ..problems import Problem
from ..times import parse_moment

MAX_BODY_BYTES = 1024 * 1024
MAX_DEPTH = 32

# Possessive and with an optional closing quote, so a string that never ends
# is consumed once instead of retried from every quote in it (quadratic).
_STRING_LITERAL = re.compile(r'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def _invalid_body(detail: str) -> Problem:
    return Problem(400, "invalid-body", "Invalid request body", detail)


def _invalid_query(detail: str) -> Problem:
    return Problem(400, "invalid-query", "Invalid query", detail)


def json_object(*, required: bool) -> dict[str, object]:
    """The request's JSON object; an empty body is ``{}`` unless ``required``.

    Raises a 4xx :class:`Problem` for anything else: a body over
    ``MAX_BODY_BYTES`` (413), invalid UTF-8 or JSON, nesting deeper than
    ``MAX_DEPTH``, a string holding a lone surrogate or NUL, or not an object.
    """
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise _too_large()
    data = _read_body()
    if not data and not required:
        return {}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid_body("The body is not UTF-8.") from None
    if _nesting(text) > MAX_DEPTH:
        raise _invalid_body(f"The body nests deeper than {MAX_DEPTH} levels.")
    try:
        body = json.loads(text)
    except ValueError:
        raise _invalid_body("Send a JSON object.") from None
    if not isinstance(body, dict):
        raise _invalid_body("Send a JSON object.")
    _check_strings(body, "")
    return body


def _read_body() -> bytes:
    """The body, refused with a 413 as soon as it passes the smaller of our
    limit and the app's ``MAX_CONTENT_LENGTH``: a chunked body has no length
    to check first, so it is read one byte past the limit, never further."""
    limit = min(limit for limit in (request.max_content_length, MAX_BODY_BYTES) if limit is not None)
    with contextlib.suppress(AttributeError):  # Flask 3.0: read-only; the app's limit applies
        request.max_content_length = limit + 1  # type: ignore[misc,unused-ignore]
    try:
        data = request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise _too_large(limit) from None
    if len(data) > limit:
        raise _too_large(limit)
    return data


def _too_large(limit: int = MAX_BODY_BYTES) -> Problem:
    return Problem(413, "body-too-large", "Request body too large", f"Send at most {limit} bytes.")


def _nesting(text: str) -> int:
    """How deep ``text``'s arrays and objects nest (brackets inside strings do not count)."""
    depth = deepest = 0
    for bracket in _BRACKET.findall(_STRING_LITERAL.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _check_strings(value: object, path: str) -> None:
    """Refuse any key or string that cannot be stored or logged (names the field)."""
    if isinstance(value, str):
        if not _clean(value):
            raise _invalid_body(f"'{path or 'body'}' holds a NUL or a lone surrogate.")
    elif isinstance(value, dict):
        for key, item in value.items():
            field = f"{path}.{key}" if path else key
            if not _clean(key):
                raise _invalid_body("A field name holds a NUL or a lone surrogate.")
            _check_strings(item, field)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_strings(item, f"{path}[{index}]")


def _clean(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def string_field(body: dict[str, object], name: str, *, required: bool) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise _invalid_body(f"'{name}' must be a non-empty string.")
    return value


def query_text(name: str) -> str | None:
    """Query parameter ``name`` (None when absent); given twice, or holding a
    NUL or invalid Unicode, is a 400 naming it."""
    try:
        values = request.args.getlist(name)
    except UnicodeDecodeError:  # raw bytes that are not UTF-8: werkzeug cannot build request.args
        raise _invalid_query("The query string is not UTF-8.") from None
    if not values:
        return None
    if len(values) > 1:
        raise _invalid_query(f"'{name}' is given more than once.")
    value = values[0]
    if not _clean(value) or "\ufffd" in value:
        raise _invalid_query(f"'{name}' holds a NUL or invalid UTF-8.")
    return value


def query_time(name: str, now: datetime | None = None) -> datetime | None:
    """Query parameter ``name`` as a naive UTC time: ISO 8601 (an offset is
    converted, none means UTC) or an age before ``now`` such as ``7d``,
    ``12h``, ``30m``; a 400 naming it otherwise."""
    value = query_text(name)
    if value is None:
        return None
    try:
        return parse_moment(value, now or datetime.now(UTC))
    except (ValueError, OverflowError):
        raise _invalid_query(
            f"'{name}' must be an ISO 8601 time (with an offset or UTC) or an age such as 7d or 12h."
        ) from None
