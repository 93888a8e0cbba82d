"""Invalidations this process could not deliver yet, kept until Redis answers.

An invalidation has two steps: L2 (drop a generation, bump a tag counter,
SCAN-delete) and the message that tells the other processes' L1. A *debt*
is the part still to do: the whole operation when L2 failed, or only the
messages when L2 took it but the publish failed (redoing the L2 step would
invalidate again, fleet-wide, at every retry).
"""

from __future__ import annotations

import fnmatch
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .keys import bound_resource

# (kind, argument, regex flags); kind is "key", "tag", "glob", "regex" or "clear".
Operation = tuple[str, str, int]
Message = dict[str, Any]
CLEAR: Operation = ("clear", "", 0)


def matcher(pattern: str | re.Pattern[str]) -> Callable[[str], bool]:
    """Whether a resource key matches a glob (``str``) or a compiled regex."""
    if isinstance(pattern, str):
        return lambda resource: fnmatch.fnmatchcase(resource, pattern)
    return lambda resource: pattern.search(resource) is not None


def stored_names(resource: str) -> frozenset[str]:
    """Where ``resource`` may be stored: as given (data keys), and cut to its
    bounded form (view resources longer than ``keys.MAX_RESOURCE``)."""
    return frozenset((resource, bound_resource(resource)))


def resources_of(operation: Operation) -> Callable[[str], bool] | None:
    """The resources a key or pattern invalidation drops (None for tags and clear)."""
    kind, argument, flags = operation
    if kind == "key":
        names = stored_names(argument)
        return lambda resource: resource in names
    if kind == "glob":
        return matcher(argument)
    if kind == "regex":
        return matcher(re.compile(argument, flags))
    return None


@dataclass(frozen=True)
class Debt:
    """``operation`` still to apply; ``messages`` is None when its L2 step is
    owed too, else the messages alone that did not go out."""

    operation: Operation
    messages: tuple[Message, ...] | None = None

    @property
    def whole(self) -> bool:
        return self.messages is None


class OwedInvalidations:
    """The debts of one app's cache in this process, oldest first. Thread-safe."""

    def __init__(self, max_owed: int = 1000) -> None:
        self.max_owed = max_owed  # distinct debts kept; past that one whole clear stands for them all
        self._lock = threading.Lock()
        self._debts: dict[Operation, Debt] = {}
        self._landing: Debt | None = None
        self._blocked: list[Callable[[str], bool]] = []  # resources whose L2 entries are not to be read

    def __len__(self) -> int:
        return len(self._debts) + (self._landing is not None)

    def owe(self, debt: Debt) -> None:
        """Keep ``debt`` (a whole one replaces one of messages only)."""
        with self._lock:
            owed = self._debts.get(CLEAR)
            if owed is not None and owed.whole and debt.whole:
                return  # a whole clear owed covers the L2 step of everything owed after it
            known = self._debts.get(debt.operation)
            if known is not None and known.whole:
                return
            if known is None and len(self._debts) >= self.max_owed:
                self._debts.clear()
                debt = Debt(CLEAR)
            self._debts[debt.operation] = debt
            self._refresh()

    def take(self) -> Debt | None:
        """The oldest debt, now being landed (its resources stay blocked until
        :meth:`landed` or :meth:`give_back`)."""
        with self._lock:
            if self._landing is not None or not self._debts:
                return None
            operation = next(iter(self._debts))
            self._landing = self._debts.pop(operation)
            self._refresh()
            return self._landing

    def landed(self) -> None:
        with self._lock:
            self._landing = None
            self._refresh()

    def give_back(self, debt: Debt) -> None:
        """Landing ``debt`` failed: it is the oldest again (unless a whole debt
        for the same operation came meanwhile)."""
        with self._lock:
            self._landing = None
            if debt.whole and debt.operation == CLEAR:
                self._debts = {CLEAR: debt}  # it covers everything owed since
            elif debt.operation not in self._debts:
                self._debts = {debt.operation: debt, **self._debts}
            self._refresh()

    def after_fork(self) -> None:
        """In a forked child: a new lock, and the debt a parent's thread was
        landing is owed again (that thread does not exist here)."""
        self._lock = threading.Lock()
        landing, self._landing = self._landing, None
        if landing is not None and landing.operation not in self._debts:
            self._debts = {landing.operation: landing, **self._debts}
        self._refresh()

    def blocks(self, resource: str) -> bool:
        """Whether L2's entry for ``resource`` may predate an owed invalidation."""
        blocked = self._blocked
        return bool(blocked) and any(matches(resource) for matches in blocked)

    def _refresh(self) -> None:
        debts = [*self._debts.values(), *([self._landing] if self._landing is not None else [])]
        found = (resources_of(debt.operation) for debt in debts if debt.whole)
        self._blocked = [matches for matches in found if matches is not None]
