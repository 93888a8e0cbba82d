"""Invalidation, applied to L2 and then to every process's L1.

Key and pattern invalidation drop the *generation* of each matching
resource in L2 (every variant of it, and any store of it still in flight,
becomes stale); tag invalidation increments the tag's counter. Then the
operation is published; each process's listener applies it to its own L1
(and its copy of the tag versions). A process that loses its subscription
empties its L1 and, until it listens again, does not use L1 at all (see
:meth:`LayeredCache.trusted_since`).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import uuid
from collections.abc import Callable
from typing import Any

import redis

from ..stores.redis import RedisStore, StoreUnavailableError
from .backends import PatternsNeedRedis
from .keys import bound_resource, resource_of
from .layered import LayeredCache
from .tags import EVERYTHING

logger = logging.getLogger("flask_resilience.cache")


def matcher(pattern: str | re.Pattern[str]) -> Callable[[str], bool]:
    """Whether a resource key matches a glob (``str``) or a compiled regex."""
    if isinstance(pattern, str):
        return lambda resource: fnmatch.fnmatchcase(resource, pattern)
    return lambda resource: pattern.search(resource) is not None


class Coherence:
    """The invalidations of one app's cache, here and in every other process."""

    def __init__(self, layered: LayeredCache) -> None:
        self.layered = layered
        self._redis: RedisStore | None = layered.redis
        self._channel = self._redis.channel("cache") if self._redis is not None else None
        self._origin = uuid.uuid4().hex

    # -- this process's L1 ------------------------------------------------------------

    def _drop_l1(self, matches: Callable[[str], bool]) -> None:
        layered = self.layered
        layered.l1_changes += 1  # first: a fill that began before this is dropped
        layered.l1.delete_where(lambda key: matches(resource_of(key)))

    def _forget_everything(self) -> None:
        layered = self.layered
        layered.l1_changes += 1
        layered.l1.clear()
        layered.tags.forget()

    # -- the operations -------------------------------------------------------------------

    def invalidate_resource(self, resource: str) -> None:
        """Every variant of ``resource`` (hosts, users, Vary values), everywhere.
        Raises StoreUnavailableError when L2 cannot be told (this process's L1
        is dropped all the same).

        L2 is always tried, also while reads skip it after an error: a skipped
        invalidation would leave the old entry in L2 for its whole TTL.
        """
        layered = self.layered
        layered.stats.count("deletes")
        names = _stored_names(resource)
        failure = None
        if layered.l2 is not None:
            try:
                for name in names:
                    layered.l2.invalidate_resource(name)
            except StoreUnavailableError as exc:
                layered.l2_failed("delete", exc)
                failure = exc
        # After L2: a lookup between the two cannot refill L1 from the old entry.
        self._drop_l1(lambda candidate: candidate in names)
        if failure is not None:
            raise failure
        self._publish({"op": "key", "key": resource})

    def invalidate_tag(self, tag: str) -> int:
        """Make every entry carrying ``tag`` stale; O(1) in their number.
        Raises StoreUnavailableError when L2 cannot be told."""
        layered = self.layered
        if layered.l2 is not None:
            try:
                version = layered.l2.bump_tag(tag)
            except StoreUnavailableError as exc:
                layered.l2_failed("invalidate", exc)
                raise
            layered.tags.learn(tag, version)
        else:
            version = layered.tags.bump_local(tag)
        layered.stats.count("tag_invalidations")
        self._publish({"op": "tag", "tag": tag, "version": version})
        return version

    def invalidate_pattern(self, pattern: str | re.Pattern[str]) -> int:
        """Every resource whose key matches a glob (``str``) or a regex; returns
        how many L2 resources went (SCAN over our keys, never KEYS)."""
        layered = self.layered
        matches = matcher(pattern)
        removed = 0
        if layered.l2 is not None:
            if not layered.l2.shares_invalidations:
                raise PatternsNeedRedis(
                    f"pattern invalidation needs the Redis backend; the configured L2 is {layered.l2.name}"
                )
            removed = layered.l2.invalidate_matching(pattern if isinstance(pattern, str) else "*", matches)
        self._drop_l1(matches)
        layered.stats.count("pattern_invalidations")
        if isinstance(pattern, str):
            self._publish({"op": "glob", "pattern": pattern})
        else:
            self._publish({"op": "regex", "pattern": pattern.pattern, "flags": pattern.flags})
        return removed

    def clear(self) -> None:
        """Drop everything, in every process."""
        self.invalidate_tag(EVERYTHING)
        layered = self.layered
        layered.l1_changes += 1
        layered.l1.clear()
        l2 = layered.usable_l2()
        if l2 is not None:
            try:
                l2.drop_entries()  # already stale; this frees the memory
            except StoreUnavailableError as exc:
                layered.l2_failed("clear", exc)
        self._publish({"op": "clear"})

    # -- across processes ---------------------------------------------------------------------

    def _publish(self, message: dict[str, Any]) -> None:
        if self._redis is None or self._channel is None:
            return
        message["origin"] = self._origin
        try:
            self._redis.publish(self._channel, json.dumps(message).encode())
        except StoreUnavailableError as exc:
            self.layered.l2_failed("publish", exc)

    def listen(self) -> None:
        """Apply other processes' invalidations to this process's L1."""
        if self._redis is None or self._channel is None:
            return
        self._redis.subscriber.on_gap(self._lost)
        self._redis.subscribe(self._channel, self._on_message)

    def _lost(self) -> None:
        self._forget_everything()
        self.layered.stats.count_reason("errors", "subscription_lost")

    def _on_message(self, raw: bytes) -> None:
        message = json.loads(raw)
        self.layered.stats.count("invalidations_received")
        operation = message.get("op")
        if operation == "key":
            names = _stored_names(str(message["key"]))
            self._drop_l1(lambda candidate: candidate in names)
        elif operation == "tag":
            self.layered.tags.learn(str(message["tag"]), int(message["version"]))
        elif operation == "glob":
            self._drop_l1(matcher(str(message["pattern"])))
        elif operation == "regex":
            self._drop_l1(matcher(re.compile(str(message["pattern"]), int(message["flags"]))))
        elif operation == "clear":
            self.layered.l1_changes += 1
            self.layered.l1.clear()


def _stored_names(resource: str) -> frozenset[str]:
    """Where ``resource`` may be stored: as given (data keys), and cut to its
    bounded form (view resources longer than ``keys.MAX_RESOURCE``)."""
    return frozenset((resource, bound_resource(resource)))


def warn_on_eviction_policy(store: RedisStore) -> str | None:
    """Warn when Redis may evict keys without a TTL (``allkeys-*``): tag
    counters and generations would then vanish early. Returns the policy,
    or None where ``CONFIG GET`` is not allowed or Redis does not answer."""
    try:
        reply = store.client.config_get("maxmemory-policy")
    except (redis.RedisError, OSError) as exc:
        logger.debug("could not read Redis maxmemory-policy: %s", exc)
        return None
    policy = reply.get("maxmemory-policy") if isinstance(reply, dict) else None
    if isinstance(policy, bytes):
        policy = policy.decode()
    if isinstance(policy, str) and policy.startswith("allkeys-"):
        logger.warning(
            "Redis maxmemory-policy is %s: it may evict the cache's tag counters; entries "
            "stay correct (a lost counter makes them misses) but invalidations cost more "
            "misses. Prefer volatile-lru or noeviction (docs/cache.rst: Redis requirements).",
            policy,
        )
    return policy if isinstance(policy, str) else None
