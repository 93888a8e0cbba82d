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

import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterable

import redis

from ..lifecycle import fork_generation
from ..stores.redis import RedisStore, StoreUnavailableError
from .backends import PatternsNeedRedis
from .keys import resource_of
from .layered import LayeredCache
from .owed import CLEAR, Debt, Message, Operation, OwedInvalidations, matcher, resources_of, stored_names
from .tags import EVERYTHING

logger = logging.getLogger("flask_resilience.cache")


_COUNTED_AS = {
    "key": "deletes",
    "tag": "tag_invalidations",
    "clear": "tag_invalidations",
    "glob": "pattern_invalidations",
    "regex": "pattern_invalidations",
}


class Coherence:
    """The invalidations of one app's cache, here and in every other process.

    An invalidation that cannot reach L2 (or cannot be published) is *owed*
    (:mod:`.owed`): this process stops using what it invalidated at once, and
    applies and publishes it again on its first request after the L2
    cool-down (or when its listener reconnects), so neither L2 nor another
    process's L1 keeps the old entry for its TTL. Owed invalidations live in
    this process's memory: a process that exits first loses them.
    """

    def __init__(self, layered: LayeredCache) -> None:
        self.layered = layered
        self._redis: RedisStore | None = layered.redis
        self._channel = self._redis.channel("cache") if self._redis is not None else None
        self._origin = uuid.uuid4().hex
        self.owed = OwedInvalidations()
        self._settling = threading.Lock()
        self._generation = fork_generation()
        layered.on_l2_back(self.settle)
        layered.skips_l2 = self.owed.blocks

    # -- the operations -------------------------------------------------------------------

    def invalidate_resource(self, resource: str) -> None:
        """Every variant of ``resource`` (hosts, users, Vary values), everywhere.
        Raises StoreUnavailableError when L2 cannot be told (the invalidation
        is then owed, and this process's L1 copies are dropped all the same).

        L2 is always tried, also while reads skip it after an error: a skipped
        invalidation would leave the old entry in L2 for its whole TTL.
        """
        self._perform(("key", resource, 0))

    def invalidate_tag(self, tag: str) -> int:
        """Make every entry carrying ``tag`` stale; O(1) in their number.
        Raises StoreUnavailableError when L2 cannot be told (owed, as above)."""
        return self._perform(("tag", tag, 0))

    def invalidate_pattern(self, pattern: str | re.Pattern[str]) -> int:
        """Every resource whose key matches a glob (``str``) or a regex; returns
        how many L2 resources went (SCAN over our keys, never KEYS)."""
        return self._perform(self._pattern(pattern))

    def clear(self) -> None:
        """Drop everything, in every process."""
        self._perform(CLEAR)

    def invalidate(
        self,
        *,
        tags: Iterable[str] = (),
        resources: Iterable[str] = (),
        patterns: Iterable[str | re.Pattern[str]] = (),
    ) -> None:
        """Several invalidations (what one write changed): tags, then resources,
        then patterns. After the first that cannot reach L2 (or cannot be
        published) the rest are owed without trying, since each would wait for
        the same timeout; StoreUnavailableError is raised when any L2 step is
        owed. PatternsNeedRedis is raised after the tags and resources went."""
        failure: StoreUnavailableError | None = None
        trying = True

        def one(operation: Operation) -> None:
            nonlocal failure, trying
            self.layered.stats.count(_COUNTED_AS[operation[0]])
            if not trying:
                self._apply_here(operation, landed=False)
                self._owe(Debt(operation))
                failure = failure or StoreUnavailableError("an earlier invalidation of this write failed")
                return
            try:
                _, trying = self._apply(operation)
            except StoreUnavailableError as exc:
                failure, trying = exc, False

        for tag in tags:
            one(("tag", tag, 0))
        for resource in resources:
            one(("key", resource, 0))
        for pattern in patterns:
            one(self._pattern(pattern))
        if failure is not None:
            raise failure
        self.settle()

    def pending(self) -> int:
        """How many invalidations this process still owes L2 and the other processes."""
        return len(self.owed)

    def _pattern(self, pattern: str | re.Pattern[str]) -> Operation:
        l2 = self.layered.l2
        if l2 is not None and not l2.shares_invalidations:
            raise PatternsNeedRedis(
                f"pattern invalidation needs the Redis backend; the configured L2 is {l2.name}"
            )
        if isinstance(pattern, str):
            return ("glob", pattern, 0)
        return ("regex", pattern.pattern, pattern.flags)

    # -- applying one, here, in L2 and everywhere ---------------------------------------------

    def _perform(self, operation: Operation) -> int:
        self.layered.stats.count(_COUNTED_AS[operation[0]])
        result, _ = self._apply(operation)
        self.settle()
        return result

    def _apply(self, operation: Operation) -> tuple[int, bool]:
        """Apply ``operation`` to L2, to this process and to the others, owing
        what failed: what L2 returned, and whether the publish went out (False:
        owed). Raises StoreUnavailableError when L2 failed (owed)."""
        try:
            result, messages = self._apply_to_l2(operation)
        except StoreUnavailableError as exc:
            self.layered.l2_failed("delete" if operation[0] == "key" else "invalidate", exc)
            self._apply_here(operation, landed=False)
            self._owe(Debt(operation))
            raise
        # After L2: a lookup between the two cannot refill L1 from the old entry.
        self._apply_here(operation, landed=True)
        unsent = self._publish_all(messages)
        if unsent:
            self._owe(Debt(operation, unsent))  # L2 knows; the other processes' L1 does not yet
        return result, not unsent

    def _apply_to_l2(self, operation: Operation) -> tuple[int, list[Message]]:
        """What L2 returned (a tag's version, or how many resources went) and the messages to publish."""
        kind, argument, flags = operation
        layered = self.layered
        l2 = layered.l2
        if kind == "key":
            if l2 is not None:
                for name in stored_names(argument):
                    l2.invalidate_resource(name)
            return 0, [{"op": "key", "key": argument}]
        if kind == "glob":
            removed = l2.invalidate_matching(argument, matcher(argument)) if l2 is not None else 0
            return removed, [{"op": "glob", "pattern": argument}]
        if kind == "regex":
            matches = matcher(re.compile(argument, flags))
            removed = l2.invalidate_matching("*", matches) if l2 is not None else 0
            return removed, [{"op": "regex", "pattern": argument, "flags": flags}]
        tag = EVERYTHING if kind == "clear" else argument
        suspended = layered.tags.suspensions()  # a clear ends these (not those made while it runs)
        if l2 is None:
            version = layered.tags.bump_local(tag)
        else:
            version = l2.bump_tag(tag)
            layered.tags.learn(tag, version, here=True)
        messages: list[Message] = [{"op": "tag", "tag": tag, "version": version}]
        if kind == "clear":
            layered.tags.resume(suspended)  # every entry is stale now
            messages.append({"op": "clear"})
            if l2 is not None:
                try:
                    l2.drop_entries()  # already stale; this frees the memory
                except StoreUnavailableError as exc:
                    layered.l2_failed("clear", exc)
        return version, messages

    def _apply_here(self, operation: Operation, *, landed: bool) -> None:
        """This process's part: drop its L1 copies, or (a tag whose version L2
        did not bump) stop trusting every entry that carries it."""
        kind, argument, _ = operation
        dropped = resources_of(operation)
        if dropped is not None:
            self._drop_l1(dropped)
        elif kind == "clear":
            self._clear_l1()
        if not landed and kind in ("tag", "clear"):
            self.layered.tags.suspend(EVERYTHING if kind == "clear" else argument)

    # -- what could not be applied ----------------------------------------------------------

    def _in_this_process(self) -> None:
        """New locks in a forked child: a thread of the parent may have held
        them, and it does not exist here. The debts are the child's too."""
        if self._generation != fork_generation():
            self._settling = threading.Lock()
            self.owed.after_fork()
            self._generation = fork_generation()

    def _owe(self, debt: Debt) -> None:
        self._in_this_process()
        first = not self.owed
        self.owed.owe(debt)
        self.layered.stats.count_reason("errors", "invalidation_deferred")
        if first:
            logger.warning("a cache invalidation could not reach Redis; it is applied when Redis is back")

    def settle(self, *, redis_answered: bool = False) -> None:
        """Apply the owed invalidations, oldest first, once the L2 cool-down is
        over (or at once when Redis just ``redis_answered``). Never raises;
        returns at once when another thread is settling."""
        if not self.owed or (self.layered.cooling_down() and not redis_answered):
            return
        self._in_this_process()
        if not self._settling.acquire(blocking=False):
            return
        try:
            while (debt := self.owed.take()) is not None:
                try:
                    if debt.messages is None:
                        _, messages = self._apply_to_l2(debt.operation)
                        self._apply_here(debt.operation, landed=True)
                    else:
                        messages = list(debt.messages)
                except StoreUnavailableError as exc:
                    self.owed.give_back(debt)
                    self.layered.l2_failed("invalidate", exc)
                    return
                unsent = self._publish_all(messages)
                if unsent:
                    self.owed.give_back(Debt(debt.operation, unsent))
                    return
                self.owed.landed()
            logger.info("owed cache invalidations applied")
            self.layered.l2_answered()
        finally:
            self._settling.release()

    # -- this process's L1 ------------------------------------------------------------

    def _drop_l1(self, matches: Callable[[str], bool]) -> None:
        layered = self.layered
        layered.l1_changes += 1  # first: a fill that began before this is dropped
        layered.l1.delete_where(lambda key: matches(resource_of(key)))

    def _clear_l1(self) -> None:
        self.layered.l1_changes += 1  # first: a fill that began before this is dropped
        self.layered.l1.clear()

    def _forget_everything(self) -> None:
        self._clear_l1()
        self.layered.tags.forget()

    # -- across processes ---------------------------------------------------------------------

    def _publish_all(self, messages: list[Message]) -> tuple[Message, ...]:
        """Send ``messages`` to the other processes; those Redis did not take
        (the first failure stops the rest)."""
        if self._redis is None or self._channel is None:
            return ()
        for index, message in enumerate(messages):
            try:
                self._redis.publish(self._channel, json.dumps({**message, "origin": self._origin}).encode())
            except StoreUnavailableError as exc:
                self.layered.l2_failed("publish", exc)
                return tuple(messages[index:])
        return ()

    def listen(self) -> None:
        """Apply other processes' invalidations to this process's L1."""
        if self._redis is None or self._channel is None:
            return
        self._redis.subscriber.on_gap(self._lost)
        self._redis.subscribe(self._channel, self._on_message)

    def _lost(self) -> None:
        self._forget_everything()
        self.layered.stats.count_reason("errors", "subscription_lost")
        self.settle(redis_answered=True)  # back after a loss, Redis answers (at a loss: one try)

    def _on_message(self, raw: bytes) -> None:
        message = json.loads(raw)
        self.layered.stats.count("invalidations_received")
        operation = message.get("op")
        if operation == "tag":
            self.layered.tags.learn(str(message["tag"]), int(message["version"]))
        elif operation == "clear":
            self._clear_l1()
        elif operation in ("key", "glob", "regex"):
            argument = message["key"] if operation == "key" else message["pattern"]
            dropped = resources_of((operation, str(argument), int(message.get("flags", 0))))
            if dropped is not None:
                self._drop_l1(dropped)


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
