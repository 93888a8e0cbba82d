"""One protected request that holds the claim on its key, from claim to outcome."""

from __future__ import annotations

import logging
import time
from typing import Protocol

from flask import Response

from ..problems import Problem
from ..responses import StoredResponse
from ..stores.redis import StoreUnavailableError
from .leases import Lease, keeper
from .protocol import Completed, Keep, keep
from .records import completed_value
from .service import AppIdempotency

logger = logging.getLogger("flask_resilience.idempotency")


class FlightOptions(Protocol):
    """What a flight reads of ``@idempotent``'s options."""

    @property
    def ttl(self) -> int | None: ...

    @property
    def on_error(self) -> str | None: ...

    @property
    def header(self) -> str: ...


def crash_problem() -> Problem:
    return Problem(
        500,
        "internal-server-error",
        "Internal Server Error",
        "The request failed while it ran. It is not run again for this idempotency key.",
    )


def not_kept_problem() -> Problem:
    return Problem(
        413,
        "idempotency-response-not-kept",
        "Response could not be kept",
        "The request ran, but its response was streamed or too large to keep for replays. "
        "It is not run again for this idempotency key.",
    )


class Flight:
    """The claim, kept alive by the lease keeper until the outcome is stored."""

    def __init__(
        self,
        service: AppIdempotency,
        options: FlightOptions,
        *,
        key: str,
        record_key: str,
        fingerprint: str,
        endpoint: str,
        scope: str | None,
    ) -> None:
        self.service = service
        self.ttl = options.ttl or service.ttl
        self.on_error = options.on_error or service.on_error
        self.header = options.header
        self.key = key
        self.record_key = record_key
        self.fingerprint = fingerprint
        self.endpoint = endpoint
        self.scope = scope  # the principal's key, None when anonymous
        self._lease: Lease | None = None
        self.done = False

    def claimed(self, claimed: bytes) -> None:
        """This request holds the key: renew its lease while the view runs."""
        service = self.service
        self._lease = Lease(
            service.records,
            self.record_key,
            claimed,
            service.lease,
            lambda name: service.counters.count(name, self.endpoint),
        )
        keeper.hold(self._lease)

    def finish(self, response: Response) -> Response:
        """Keep the view's response as the key's outcome (or give the key back), and mark it."""
        if self.done:
            return response
        self.done = True
        size = 0 if response.is_streamed else len(response.get_data())
        decision = keep(
            response.status_code,
            streamed=response.is_streamed,
            size=size,
            max_bytes=self.service.max_body_bytes,
            on_error=self.on_error,
        )
        if decision is Keep.RELEASE:
            self._release()
        elif decision is Keep.STORE:
            self._store(StoredResponse.capture(response, self.service.headers, self.service.clock()))
        else:
            self._store(self._problem(not_kept_problem()))
        response.headers[self.header] = self.key
        response.headers["X-Idempotency-Replayed"] = "false"
        return response

    def crashed(self) -> None:
        """The view raised and nothing handled it: its outcome is a 500 (or,
        with ``on_error="release"``, the key is given back)."""
        if self.done:
            return
        self.done = True
        if self.on_error == "release":
            self._release()
        else:
            self._store(self._problem(crash_problem()))

    def _problem(self, problem: Problem) -> StoredResponse:
        return StoredResponse.capture(problem.to_response(), self.service.headers, self.service.clock())

    def _store(self, stored: StoredResponse) -> None:
        service, lease = self.service, self._lease
        assert lease is not None
        record = Completed(self.fingerprint, stored.created_at + self.ttl, stored)
        value = completed_value(record)
        if not service.records.fits(value):  # kept, it would push out every record, then itself
            record = Completed(
                self.fingerprint, stored.created_at + self.ttl, self._problem(not_kept_problem())
            )
            value = completed_value(record)
        keeper.drop(lease)  # before completing: a renewal racing the completion is not a lost lease
        written_at = time.monotonic()  # an invalidation after this must not leave a copy
        try:
            kept = service.records.complete(self.record_key, lease.claimed, value, self.ttl)
        except StoreUnavailableError as exc:
            # The view ran: its response must reach the client now. Store it
            # from the background, keeping the lease alive meanwhile.
            service.counters.count("store_errors", self.endpoint)
            logger.warning("idempotency record for %s not stored yet, retrying: %s", self.endpoint, exc)
            keeper.complete_later(lease, value, self.ttl)
            return
        if kept:
            service.memory.put(self.record_key, record, written_at)
        else:
            service.counters.count("lease_lost", self.endpoint)

    def _release(self) -> None:
        lease = self._lease
        assert lease is not None
        keeper.drop(lease)
        try:
            self.service.records.release(self.record_key, lease.claimed)
        except StoreUnavailableError:
            self.service.counters.count("store_errors", self.endpoint)
