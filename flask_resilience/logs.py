"""Logging helpers for operators.

Every feature logs through its own child of the ``flask_resilience`` logger
(``.breaker``, ``.cache``, ``.audit``, ``.idempotency``, ``.health``,
``.stores``), so each can be tuned on its own. :class:`RequestIdFilter` puts
the request id on every record, the app's own included.
"""

from __future__ import annotations

import logging

from flask import has_request_context

from .context import current_request_id


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to each record: the current request's id, or
    ``"-"`` outside a request (or before the extension is registered)."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = "-"
        if has_request_context():
            try:
                request_id = current_request_id()
            except RuntimeError:  # an app without this extension
                request_id = "-"
        record.request_id = request_id
        return True
