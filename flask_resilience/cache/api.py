"""The seed's cache functions, as thin calls on the current app's cache."""

from __future__ import annotations

import re
from typing import Any

from flask import current_app

from .service import AppCache
from .stats import CacheStatsSnapshot
from .tags import validate_tags


def _cache() -> AppCache:
    return AppCache.of()


def invalidate_cache(key: str) -> None:
    """Drop one resource everywhere: a data key, or a view's resource key such
    as ``"api:/api/flights?to=LIS"`` (every variant of it: hosts, users, Vary)."""
    _cache().coherence.invalidate_resource(key)


def invalidate_cache_by_pattern(pattern: str | re.Pattern[str]) -> int:
    """Drop entries whose key matches a glob (``"api:/api/flights*"``) or a
    compiled regex, in L2 (SCAN over our keys) and in every process's L1.
    Needs the Redis backend when an L2 is configured; returns how many L2
    entries were removed."""
    return _cache().coherence.invalidate_pattern(pattern)


def invalidate_cache_by_tag(tag: str, *more: str) -> None:
    """Make every entry carrying ``tag`` (or any of ``more``) stale, in O(1)
    whatever their number. Raises StoreUnavailableError when Redis could not
    be told; the invalidations are then kept and applied when it answers again."""
    _cache().coherence.invalidate(tags=validate_tags([tag, *more]))


def clear_all_caches() -> None:
    """Drop every entry in every layer of every process."""
    _cache().clear()


def get_cache_stats() -> CacheStatsSnapshot:
    """Hits and misses per layer, hit rate, per endpoint, sets, deletes,
    bypasses and their reasons, errors, L1 size, write-behind queue."""
    return _cache().stats()


def reset_cache_stats() -> None:
    _cache().reset_stats()


def warmup_cache(key: str, data: Any, ttl: int | None = None, tags: list[str] | tuple[str, ...] = ()) -> None:
    """Put ``data`` in the cache under ``key`` (the seed's warmupCache)."""
    _cache().data.set(key, data, ttl, tags)


def warmup_view(path: str, query: dict[str, str] | None = None, *, base_url: str | None = None) -> int:
    """Render the view at ``path`` through the app so that ``@cached`` stores
    it, as an anonymous GET; returns the status code.

    ``base_url`` (``"https://api.example.com"``) is the scheme and host the
    entry is for: they are part of the key unless ``vary_host=False``, and
    the default is ``SERVER_NAME`` or ``http://localhost``.
    """
    with current_app.test_client() as client:
        response = client.get(path, query_string=query, base_url=base_url)
        return response.status_code
