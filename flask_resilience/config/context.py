"""Settings of the request context: the request id header and the principal loader."""

from __future__ import annotations

from typing import Any

from ..validators import header_name, optional_callable
from .setting import Setting

REQUEST_ID_HEADER = Setting(
    "RESILIENCE_REQUEST_ID_HEADER",
    "X-Request-ID",
    header_name,
    "Header carrying the request id, kept when valid and echoed on every response.",
)
PRINCIPAL_LOADER = Setting(
    "RESILIENCE_PRINCIPAL_LOADER",
    None,
    optional_callable,
    "Callable (or 'module:function') returning the caller's user id, or None.",
)

SECTION: tuple[Setting[Any], ...] = (
    REQUEST_ID_HEADER,
    PRINCIPAL_LOADER,
)
