"""One app's cache: the layers, invalidation, stampede protection, settings, data API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from flask import Request

from .. import config as cfg
from ..responses import HeaderPolicy
from ..state import Feature, ResilienceState
from ..stores.redis import RedisStore
from .backends import FlaskCachingBackend, L2Backend, RedisBackend
from .coherence import Coherence, warn_on_eviction_policy
from .data import DataCache, Serializer
from .flight import SingleFlight
from .front import FrontTier
from .layered import LayeredCache
from .rules import Credentials, request_bypass
from .stats import CacheStatsSnapshot
from .writeback import WriteBehindQueue

FEATURE = "cache"


class AppCache(Feature):
    feature_name = FEATURE

    def __init__(
        self,
        *,
        enabled: bool,
        l2: L2Backend | None,
        redis: RedisStore | None,
        default_ttl: int,
        l1_max_entries: int,
        l1_max_bytes: int,
        l1_max_ttl: float,
        lock_timeout: float,
        honors_no_cache: bool,
        max_body_bytes: int,
        header_policy: HeaderPolicy,
        credentials: Credentials,
        write_behind_queue: int,
        front_everywhere: bool = False,
    ) -> None:
        self.enabled = enabled
        self.layered = LayeredCache(
            l2=l2,
            redis=redis,
            l1_max_entries=l1_max_entries,
            l1_max_bytes=l1_max_bytes,
            l1_max_ttl=l1_max_ttl,
        )
        self.coherence = Coherence(self.layered)
        self.flight = SingleFlight()
        self.default_ttl = default_ttl
        self.lock_timeout = lock_timeout
        self.honors_no_cache = honors_no_cache
        self.max_body_bytes = max_body_bytes
        self.header_policy = header_policy
        self.credentials = credentials
        self.write_behind = WriteBehindQueue(max_size=write_behind_queue)
        self.data = DataCache(self)
        self.front = FrontTier(
            self.layered,
            enabled=enabled,
            everywhere=front_everywhere,
            credentials=credentials,
            header_policy=header_policy,
            max_routes=l1_max_entries,
        )

    @classmethod
    def from_config(cls, config: cfg.Config, redis: RedisStore | None) -> AppCache:
        """The cache an app's configuration asks for; L2 is the configured
        Flask-Caching backend, else ``redis``, else none (embedded mode)."""
        l2: L2Backend | None = None
        flask_caching = config[cfg.CACHE_BACKEND]
        if flask_caching is not None:
            l2 = FlaskCachingBackend(flask_caching, config[cfg.KEY_PREFIX])
        elif redis is not None:
            l2 = RedisBackend(redis)
        app_cache = cls(
            enabled=config[cfg.CACHE_ENABLED],
            l2=l2,
            redis=redis,
            default_ttl=config[cfg.CACHE_DEFAULT_TTL],
            l1_max_entries=config[cfg.CACHE_L1_MAX_ENTRIES],
            l1_max_bytes=config[cfg.CACHE_L1_MAX_BYTES],
            l1_max_ttl=config[cfg.CACHE_L1_MAX_TTL],
            lock_timeout=config[cfg.CACHE_LOCK_TIMEOUT],
            honors_no_cache=config[cfg.CACHE_HONOR_NO_CACHE],
            max_body_bytes=config[cfg.CACHE_MAX_BODY_BYTES],
            header_policy=HeaderPolicy.denying(
                config[cfg.REQUEST_ID_HEADER], *config[cfg.CACHE_DENIED_HEADERS]
            ),
            credentials=Credentials(
                headers=config[cfg.CACHE_PRIVATE_HEADERS], cookies=config[cfg.CACHE_PRIVATE_COOKIES]
            ),
            write_behind_queue=config[cfg.CACHE_WRITE_BEHIND_QUEUE],
            front_everywhere=config[cfg.CACHE_FRONT],
        )
        serializer = config[cfg.CACHE_SERIALIZER]
        if serializer is not None:
            app_cache.data.serializer = cast(Serializer, serializer)
        return app_cache

    def register(self, state: ResilienceState) -> None:
        """Become ``state``'s cache: its stats, its background work, started."""
        super().register(state)
        state.stats_providers["cache"] = lambda _private: self.stats()
        state.add_background(self)
        self.start()

    def start(self) -> None:
        """Listen for other processes' invalidations (the thread starts with
        the first request) and check Redis's eviction policy once."""
        self.coherence.listen()
        if self.layered.redis is not None:
            warn_on_eviction_policy(self.layered.redis)

    def bypass_reason(
        self,
        request: Request,
        *,
        per_user: bool,
        has_principal: bool,
        condition: Callable[[Request], bool] | None,
        session_cookie: str,
        remember_cookie: str | None = None,
    ) -> str | None:
        """Why ``request`` must not use the shared cache, or None."""
        if not self.enabled:
            return "disabled"
        if condition is not None and not condition(request):
            return "condition"
        return request_bypass(
            request,
            per_user=per_user,
            has_principal=has_principal,
            credentials=self.credentials,
            session_cookie=session_cookie,
            remember_cookie=remember_cookie,
        )

    def stats(self) -> CacheStatsSnapshot:
        layered = self.layered
        l1 = layered.l1.stats()
        snapshot: dict[str, Any] = {
            **layered.stats.counts(),
            "l1": {
                "entries": l1.entries,
                "bytes": l1.bytes,
                "evictions": l1.evictions,
                "expirations": l1.expirations,
            },
            "l2": {
                "backend": None if layered.l2 is None else layered.l2.name,
                "available": layered.l2_available(),
                "pending_invalidations": self.coherence.pending(),
            },
            "write_behind": self.write_behind.stats(),
        }
        return cast(CacheStatsSnapshot, snapshot)

    def reset_stats(self) -> None:
        self.layered.stats.reset()

    def clear(self) -> None:
        """Drop every entry in every layer of every process."""
        self.coherence.clear()

    def stop(self) -> None:
        """Flush the write-behind queue (``shutdown()`` calls this)."""
        self.write_behind.stop()
