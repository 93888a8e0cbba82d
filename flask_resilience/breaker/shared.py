"""Circuit state shared by every worker process through Redis.

Each decision that changes a circuit is one Lua script (``scripts.py``), so it
is atomic across processes and hosts: recording a failure (and opening the
circuit when a rule trips), taking a HALF_OPEN trial permit (a lease in a
sorted set, so a crashed or hung worker's permit lapses), finishing a trial,
and an operator change. A script that changes the state publishes it; every
process mirrors the new state from that message, so a circuit opened by one
worker is rejected by the others without a Redis round trip per call.

What costs a round trip: a failed or slow call, a call that finds the circuit
OPEN past its timeout or HALF_OPEN, and (only with rate rules) one report per
100 successful calls. A successful call in CLOSED costs none.

Times are milliseconds of the breakers' clock, which for shared circuits is
the wall clock (monotonic clocks are not comparable across hosts).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..lifecycle import fork_generation
from ..stores.redis import RedisStore, StoreUnavailableError, WrongTypeError
from . import scripts
from .config import Outcome
from .link import Admission, Decision, Link, Mirror
from .states import State

logger = logging.getLogger("flask_resilience.breaker")

_ADMISSIONS = (Admission.REFUSED, Admission.PASS, Admission.TRIAL)
_BATCH = 100  # successful calls reported at once when rate rules need them


@dataclass(frozen=True)
class Verdict:
    """A circuit state as decided in Redis. ``until`` is when an OPEN circuit
    allows a trial, or when a refused HALF_OPEN caller may find a free permit;
    ``epoch`` names the life of the stored state the ``version`` counts in."""

    state: State
    until: float
    version: int
    epoch: str

    def retry_after(self, now: float) -> float | None:
        if self.state is State.FORCED_OPEN:
            return None
        return max(0.0, self.until - now)

    @classmethod
    def from_reply(cls, reply: Sequence[Any]) -> Verdict:
        state, until_ms, version, epoch = reply
        return cls(State(_text(state)), float(_text(until_ms)) / 1000, int(version), _text(epoch))


class RedisSharing:
    """The Redis side of every shared breaker of one app."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.location = f"redis {store.prefix}"
        self.channel = store.channel("breakers")
        self.report = store.script(scripts.REPORT)
        self.acquire = store.script(scripts.ACQUIRE)
        self.finish = store.script(scripts.FINISH_TRIAL)
        self.set_state = store.script(scripts.SET_STATE)
        self._links: dict[str, RedisLink] = {}
        self._healthy = True
        self._origin = ""
        self._origin_generation = -1

    @property
    def origin(self) -> str:
        """This process's name in published changes (new in every forked child)."""
        if self._origin_generation != fork_generation():
            self._origin, self._origin_generation = uuid.uuid4().hex, fork_generation()
        return self._origin

    def link(self, breaker: Mirror) -> Link:
        link = RedisLink(self, breaker)
        self._links[breaker.name] = link
        breaker.mark_stale()
        return link

    def keys(self, name: str) -> list[str]:
        slot = f"breaker:{name}"
        return [self.store.key(part, slot=slot) for part in ("state", "window", "permits")]

    def run(self, breaker: Mirror, call: Callable[[], Any]) -> Any | None:
        """``call()``'s reply, or None (counted and logged once) when Redis fails."""
        try:
            reply = call()
        except StoreUnavailableError as exc:
            breaker.count_storage_error()
            if self._healthy:
                logger.warning(
                    "circuit %r: shared state unavailable, deciding locally (%s)", breaker.name, exc
                )
            self._healthy = False
            return None
        if not self._healthy:
            logger.info("circuit %r: shared state reachable again", breaker.name)
            self._healthy = True
        return reply

    def listen(self) -> None:
        """Mirror published changes into this process's breakers."""

        def handle(message: bytes) -> None:
            data = json.loads(message)
            link = self._links.get(str(data["name"]))
            if link is not None and data.get("o") != self.origin:
                state, until, version = State(data["s"]), float(data["u"]) / 1000, int(data["v"])
                link.apply(Verdict(state, until, version, str(data.get("e", ""))))

        self.store.subscriber.on_gap(self.mark_all_stale)
        self.store.subscribe(self.channel, handle)

    def mark_all_stale(self) -> None:
        for link in list(self._links.values()):
            link.breaker.mark_stale()


class RedisLink:
    """One breaker's mirror of its shared state: the newest version seen (in
    its epoch) and the successful calls not yet reported."""

    storage = "redis"
    wall_clock = True

    def __init__(self, sharing: RedisSharing, breaker: Mirror) -> None:
        self.sharing = sharing
        self.breaker = breaker
        self._lock = threading.Lock()
        self._version = -1
        self._epoch: str | None = None
        self._unreported = 0  # successful calls not yet sent (rate rules only)

    def apply(self, verdict: Verdict, source: str = "shared") -> None:
        """Mirror ``verdict`` unless a newer one of the same epoch was seen;
        ``source="local"`` for the answer to this process's own script, so the
        change is announced (and audited) by the process that decided it and
        heard as "shared" by the others."""

        def fresh() -> bool:
            if verdict.epoch == self._epoch and verdict.version < self._version:
                return False
            self._epoch, self._version = verdict.epoch, verdict.version
            return True

        self.breaker.adopt(verdict.state, verdict.until, fresh, source)

    def _run(self, script: Any, args: list[Any]) -> Verdict | None:
        keys = self.sharing.keys(self.breaker.name)
        reply = self.sharing.run(self.breaker, lambda: self.sharing.store.run_script(script, keys, args))
        if reply is None:
            return None
        verdict = Verdict.from_reply(reply)
        self.apply(verdict, "local")
        return verdict

    def sync(self) -> bool:
        """Mirror the stored state. False when Redis did not answer; a state
        Redis holds damaged (another type, values that do not read) is
        counted and this copy kept. A state that is gone (a restart without
        persistence, a flush) reads as CLOSED, as every worker's admission
        script reads it: the shared store decides."""
        self.sharing.store.subscriber.ensure_running()  # first thing a freshly forked worker does
        key = self.sharing.keys(self.breaker.name)[0]

        def read() -> list[bytes | None] | None:
            try:
                return self.sharing.store.hash_get(key, _STATE_FIELDS)
            except WrongTypeError:
                return _DAMAGED

        reply = self.sharing.run(self.breaker, read)
        if reply is None:
            return False
        if reply is _DAMAGED:
            self.breaker.count_storage_error()
            return True
        state, until_ms, version, epoch = reply
        try:
            verdict = Verdict(
                State(_text(state or b"CLOSED")),
                float(_text(until_ms or b"0")) / 1000,
                int(version or 0),
                _text(epoch or b""),
            )
        except (ValueError, TypeError):
            self.breaker.count_storage_error()
            return True
        self.apply(verdict)
        return True

    def admit(self, now: float) -> Decision | None:
        token = uuid.uuid4().hex
        config = self.breaker.config
        args = [self.sharing.channel, self.breaker.name, _ms(now), config.half_open_max_calls,
                _ms(config.timeout), token, self.sharing.origin]  # fmt: skip
        keys = self.sharing.keys(self.breaker.name)
        reply = self.sharing.run(
            self.breaker, lambda: self.sharing.store.run_script(self.sharing.acquire, keys, args)
        )
        if reply is None:
            return None
        admission, *rest = reply
        verdict = Verdict.from_reply(rest)
        self.apply(verdict, "local")
        return Decision(_ADMISSIONS[int(admission)], token, verdict.state, verdict.retry_after(now))

    def record(self, now: float, outcome: Outcome, slow: bool, bad: bool, hold: float | None) -> bool:
        config = self.breaker.config
        uses_rates = config.failure_rate_threshold is not None or config.slow_call_duration is not None
        with self._lock:
            if not bad and not (uses_rates and self._unreported + 1 >= _BATCH):
                self._unreported += 1
                return True
            calls, self._unreported = self._unreported + 1, 0
        args = [
            self.sharing.channel, self.breaker.name, _ms(now), calls, int(outcome is Outcome.FAILURE),
            int(slow), config.failure_threshold, _ms(config.monitoring_period or 0), 10,
            -1 if config.failure_rate_threshold is None else config.failure_rate_threshold,
            config.minimum_calls,
            -1 if config.slow_call_duration is None else config.slow_call_rate_threshold,
            _ms(config.timeout), -1 if hold is None else _ms(hold), _ms(config.reset_timeout),
            self.sharing.origin,
        ]  # fmt: skip
        return self._run(self.sharing.report, args) is not None

    def finish_trial(self, token: str, now: float, outcome: Outcome, bad: bool, hold: float | None) -> bool:
        result = "ignored" if outcome is Outcome.IGNORED else ("failure" if bad else "success")
        config = self.breaker.config
        args = [
            self.sharing.channel, self.breaker.name, _ms(now), token, result, config.success_threshold,
            _ms(config.timeout), -1 if hold is None else _ms(hold), self.sharing.origin,
        ]  # fmt: skip
        return self._run(self.sharing.finish, args) is not None

    def set_state(self, state: State, now: float) -> bool:
        until = now + self.breaker.config.timeout
        args = [
            self.sharing.channel,
            self.breaker.name,
            state.value,
            _ms(until) if state is State.OPEN else 0,
            self.sharing.origin,
        ]
        return self._run(self.sharing.set_state, args) is not None


_STATE_FIELDS = ["s", "u", "v", "e"]
_DAMAGED: list[bytes | None] = []  # the state key holds another Redis type


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
