"""Keeping a running request's claim alive, and finishing completions Redis refused.

One :class:`LeaseKeeper` thread per process (a ``ProcessLocalWorker``)
serves every app in it:

- every held lease is renewed each third of its length (compare-and-set on
  the owner's in-flight value), so a live request keeps its key however long
  its view takes, and a dead process stops renewing: its key is free within
  one lease;
- a completion that failed because the store did not answer is retried off
  the request path with backoff (the lease stays renewed meanwhile, so no
  retry runs the view again); after ``MAX_ATTEMPTS`` it is given up and
  counted. The residual window: if the store stays unreachable longer than
  the retries, the claim expires one lease later and a retry then runs again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..lifecycle import ProcessLocalWorker
from ..stores.redis import StoreUnavailableError
from .records import Records

logger = logging.getLogger("flask_resilience.idempotency")

MAX_ATTEMPTS = 8
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0


@dataclass(eq=False)
class Lease:
    """One request's claim: renewed until dropped."""

    records: Records
    record_key: str
    claimed: bytes
    seconds: float
    count: Callable[[str], None]  # counts "lease_renewals", "lease_lost", ...
    due: float = field(default=0.0)
    # A completion waiting to be stored: (value, ttl, attempts made).
    pending: tuple[bytes, float, int] | None = None


class LeaseKeeper(ProcessLocalWorker):
    """The per-process thread that renews leases and retries completions."""

    def __init__(self) -> None:
        super().__init__("flask-resilience-idempotency-leases")
        self.reset_process()

    def reset_process(self) -> None:
        self._lock = threading.Lock()
        self._leases: set[Lease] = set()

    def hold(self, lease: Lease) -> None:
        self.in_this_process()  # first: a new process resets the table we add to
        lease.due = time.monotonic() + lease.seconds / 3
        with self._lock:
            self._leases.add(lease)
        self.ensure_running()

    def drop(self, lease: Lease) -> None:
        with self._lock:
            self._leases.discard(lease)

    def complete_later(self, lease: Lease, value: bytes, ttl: float) -> None:
        """Store ``value`` for ``lease`` from the background thread, with retries."""
        self.in_this_process()
        with self._lock:
            lease.pending = (value, ttl, 0)
            lease.due = time.monotonic() + FIRST_BACKOFF
            self._leases.add(lease)
        self.ensure_running()
        self.wake()

    def run(self) -> None:
        while not self.stopping:
            now = time.monotonic()
            with self._lock:
                due = [lease for lease in self._leases if lease.due <= now]
            for lease in due:
                self._serve(lease)
            with self._lock:
                next_due = min((lease.due for lease in self._leases), default=now + 1.0)
            if self.wait(max(0.0, next_due - time.monotonic())):
                break

    def flush(self) -> None:
        """At shutdown: one last attempt for every waiting completion."""
        with self._lock:
            waiting = [lease for lease in self._leases if lease.pending is not None]
        for lease in waiting:
            self._complete(lease, final=True)

    def _serve(self, lease: Lease) -> None:
        if lease.pending is not None:
            self._complete(lease, final=False)
            if lease.pending is None:
                return
        try:
            renewed = lease.records.renew(lease.record_key, lease.claimed, lease.seconds)
        except StoreUnavailableError as exc:
            logger.warning("could not renew an idempotency lease: %s", exc)
            renewed = True  # try again at the next beat; the lease may still hold
        with self._lock:
            # The request may have finished meanwhile (its record is no longer
            # the claim): that is not a lost lease.
            held = lease in self._leases
        if not held:
            return
        lease.count("lease_renewals" if renewed else "lease_lost")
        if not renewed:
            self.drop(lease)
            return
        lease.due = time.monotonic() + lease.seconds / 3
        if lease.pending is not None:
            attempts = lease.pending[2]
            lease.due = min(lease.due, time.monotonic() + min(MAX_BACKOFF, FIRST_BACKOFF * 2**attempts))

    def _complete(self, lease: Lease, *, final: bool) -> None:
        assert lease.pending is not None
        value, ttl, attempts = lease.pending
        lease.count("completion_retries")
        try:
            stored = lease.records.complete(lease.record_key, lease.claimed, value, ttl)
        except StoreUnavailableError as exc:
            attempts += 1
            if final or attempts >= MAX_ATTEMPTS:
                logger.error("gave up storing an idempotency record after %d attempts: %s", attempts, exc)
                lease.count("completions_lost")
                self.drop(lease)
                lease.pending = None
            else:
                lease.pending = (value, ttl, attempts)
            return
        lease.pending = None
        self.drop(lease)
        if not stored:
            lease.count("lease_lost")


keeper = LeaseKeeper()
"""This process's one lease keeper, shared by every app."""
