"""One app's cache: the layers, stampede protection, settings, data API."""

from __future__ import annotations

from typing import Any

from flask import current_app, request

from ..context import current_principal
from ..stores.redis import RedisStore
from .backends import FlaskCachingBackend, L2Backend, RedisBackend
from .data import DataCache
from .flight import SingleFlight
from .layered import LayeredCache
from .rules import request_bypass
from .writeback import WriteBehindQueue


class AppCache:
    def __init__(
        self,
        *,
        enabled: bool,
        redis: RedisStore | None,
        flask_caching: Any,
        key_prefix: str,
        default_ttl: int,
        l1_max_entries: int,
        l1_max_bytes: int,
        l1_max_ttl: float,
        lock_timeout: float,
        honors_no_cache: bool,
        max_body_bytes: int,
        extra_headers: tuple[str, ...],
        write_behind_queue: int,
    ) -> None:
        l2: L2Backend | None = None
        if flask_caching is not None:
            l2 = FlaskCachingBackend(flask_caching)
        elif redis is not None:
            l2 = RedisBackend(redis)
        self.enabled = enabled
        self.layered = LayeredCache(
            l2=l2,
            redis=redis,
            key_prefix=key_prefix,
            l1_max_entries=l1_max_entries,
            l1_max_bytes=l1_max_bytes,
            l1_max_ttl=l1_max_ttl,
        )
        self.flight = SingleFlight()
        self.default_ttl = default_ttl
        self.lock_timeout = lock_timeout
        self.honors_no_cache = honors_no_cache
        self.max_body_bytes = max_body_bytes
        self.extra_headers = extra_headers
        self.write_behind = WriteBehindQueue(max_size=write_behind_queue)
        self.data = DataCache(self)

    def request_bypass_reason(self, policy: Any) -> str | None:
        if not self.enabled:
            return "disabled"
        if policy.condition is not None and not policy.condition(request):
            return "condition"
        principal = current_principal() if policy.per_user else None
        session_cookie = current_app.config.get("SESSION_COOKIE_NAME", "session")
        return request_bypass(
            request, per_user=policy.per_user, principal=principal, session_cookie=session_cookie
        )

    def stats(self) -> dict[str, Any]:
        return {**self.layered.snapshot(), "write_behind": self.write_behind.stats()}

    def stop(self) -> None:
        """Flush the write-behind queue (``shutdown()`` calls this)."""
        self.write_behind.stop()
