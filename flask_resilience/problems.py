"""RFC 9457 ``application/problem+json`` responses.

Every error the extension itself returns goes through :class:`Problem`, so a
client sees one format with a stable ``type`` and the request id, whichever
feature refused it. A Problem is a werkzeug ``HTTPException``: Flask renders it
without a handler of ours, an app's own ``errorhandler(HTTPException)`` sees
it, and the decorators treat it as an answer, like ``abort()``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from flask import Response, has_request_context
from werkzeug.exceptions import HTTPException

from .context import current_request_id

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:flask-resilience:problem:"


class Problem(HTTPException):
    """An error response; raise it anywhere in a request to send it.

    ``slug`` names the stable ``type`` (``urn:flask-resilience:problem:<slug>``).
    """

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(description=detail)
        self.code = self._status = status
        self.type = TYPE_PREFIX + slug
        self.title = title
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    @property
    def status(self) -> int:
        return self._status

    def __str__(self) -> str:
        return self.detail

    def to_dict(self) -> dict[str, object]:
        body: dict[str, object] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        body.update(self.extra)
        if has_request_context():
            body["request_id"] = current_request_id()
        return body

    def to_response(self) -> Response:
        response = Response(
            json.dumps(self.to_dict(), separators=(",", ":")),
            status=self.status,
            content_type=PROBLEM_CONTENT_TYPE,
        )
        response.headers.update(self.headers)
        response.headers["Cache-Control"] = "no-store"
        return response

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its fields: pickling (a process pool, a task queue) and
        # copy.copy would call __init__ with BaseException's empty args.
        rebuild = functools.partial(Problem, headers=self.headers, extra=self.extra)
        return (rebuild, (self.status, self.type.removeprefix(TYPE_PREFIX), self.title, self.detail))

    def get_response(self, environ: Any = None, scope: Any = None) -> Response:
        """What werkzeug and Flask send for this error: the problem+json response."""
        return self.to_response()
