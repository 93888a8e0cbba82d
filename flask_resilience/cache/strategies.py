"""The seed's cache strategy enums."""

from __future__ import annotations

import enum


class CacheStrategy(enum.StrEnum):
    TIME_BASED = "TIME_BASED"  # entries expire after their TTL
    LRU = "LRU"  # the in-process layer evicts the least recently used entry
    CACHE_ASIDE = "CACHE_ASIDE"  # read the cache, on a miss compute and store (views, get_or_set)
    WRITE_THROUGH = "WRITE_THROUGH"  # persist, then cache (cache.write_through)
    WRITE_BEHIND = "WRITE_BEHIND"  # cache now, persist from a background queue (cache.write_behind)


class InvalidationStrategy(enum.StrEnum):
    TTL = "TTL"  # nothing but expiry
    ON_WRITE = "ON_WRITE"  # @invalidates on the write views
    PATTERN = "PATTERN"  # invalidate_cache_by_pattern (glob or regex)
    TAG_BASED = "TAG_BASED"  # invalidate_cache_by_tag; the view must name tags
    MANUAL = "MANUAL"  # invalidate_cache(key), clear_all_caches()


VIEW_STRATEGIES = frozenset({CacheStrategy.TIME_BASED, CacheStrategy.LRU, CacheStrategy.CACHE_ASIDE})
