"""Circuit state shared by every worker process through Redis.

Each decision that changes a circuit is one Lua script, so it is atomic
across processes and hosts: recording a failure (and opening the circuit when
a rule trips), taking a HALF_OPEN trial permit (a lease in a sorted set, so a
crashed or hung worker's permit lapses), finishing a trial, and an operator
change. A script that changes the state publishes it; every process mirrors
the new state from that message, so a circuit opened by one worker is
rejected by the others without a Redis round trip per call.

What costs a round trip: a failed or slow call, a call that finds the circuit
OPEN past its timeout or HALF_OPEN, and (only with rate rules) one report per
100 successful calls. A successful call in CLOSED costs none.

Times are milliseconds of the breakers' clock, which for shared circuits is
the wall clock (monotonic clocks are not comparable across hosts).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..stores.redis import RedisStore, StoreUnavailableError
from .config import Outcome
from .states import State

if TYPE_CHECKING:
    from .breaker import CircuitBreaker

logger = logging.getLogger("flask_resilience")

_READ_STATE = """
local st = redis.call('HMGET', KEYS[1], 's', 'u', 'v', 'lf')
local state = st[1] or 'CLOSED'
local version = tonumber(st[3] or '0')
"""

_CHANGE_STATE = """
local function change(new_state, until_ms)
  version = version + 1
  redis.call('HSET', KEYS[1], 's', new_state, 'u', until_ms, 'v', version, 'n', 0)
  redis.call('DEL', KEYS[3])
  if new_state ~= 'OPEN' and new_state ~= 'HALF_OPEN' then
    redis.call('DEL', KEYS[2])
    redis.call('HDEL', KEYS[1], 'lf')
  end
  redis.call('PUBLISH', ARGV[1], cjson.encode({name = ARGV[2], s = new_state, u = until_ms, v = version}))
  return {new_state, tostring(until_ms), version}
end
"""

# KEYS: state, window, permits. ARGV: channel, name, now, calls, failures,
# slow, failure_threshold, window_ms (0: none), slices, rate (-1: none),
# minimum_calls, slow_rate (-1: none), timeout_ms, hold_ms (-1: none), reset_timeout_ms
_REPORT = (
    _READ_STATE
    + _CHANGE_STATE
    + """
if state ~= 'CLOSED' and state ~= 'METRICS_ONLY' then return {state, st[2] or '0', version} end
local now = tonumber(ARGV[3])
local window_ms = tonumber(ARGV[8])
local slices = tonumber(ARGV[9])
local last_failure = tonumber(st[4] or '-1')
if last_failure >= 0 and now - last_failure >= tonumber(ARGV[15]) then redis.call('DEL', KEYS[2]) end
local slice = 0
if window_ms > 0 then slice = math.floor(now / (window_ms / slices)) end
local calls, failures, slow = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if calls > 0 then redis.call('HINCRBY', KEYS[2], 'c' .. slice, calls) end
if failures > 0 then
  redis.call('HINCRBY', KEYS[2], 'f' .. slice, failures)
  redis.call('HSET', KEYS[1], 'lf', now)
end
if slow > 0 then redis.call('HINCRBY', KEYS[2], 's' .. slice, slow) end
local totals = {c = 0, f = 0, s = 0}
local fields = redis.call('HGETALL', KEYS[2])
for i = 1, #fields, 2 do
  local n = tonumber(string.sub(fields[i], 2))
  if window_ms > 0 and n <= slice - slices then
    redis.call('HDEL', KEYS[2], fields[i])
  else
    local kind = string.sub(fields[i], 1, 1)
    totals[kind] = totals[kind] + tonumber(fields[i + 1])
  end
end
redis.call('PEXPIRE', KEYS[2], window_ms > 0 and window_ms or tonumber(ARGV[15]))
if state == 'METRICS_ONLY' then return {state, '0', version} end
local trip = totals.f >= tonumber(ARGV[7])
if not trip and totals.c >= tonumber(ARGV[11]) and totals.c > 0 then
  local rate, slow_rate = tonumber(ARGV[10]), tonumber(ARGV[12])
  trip = (rate >= 0 and 100 * totals.f / totals.c >= rate)
    or (slow_rate >= 0 and 100 * totals.s / totals.c >= slow_rate)
end
local hold = tonumber(ARGV[14])
if trip then return change('OPEN', now + math.max(tonumber(ARGV[13]), hold)) end
if hold >= 0 then return change('OPEN', now + hold) end
return {state, '0', version}
"""
)

# KEYS: state, window, permits. ARGV: channel, name, now, max_calls, lease_ms, token.
# Returns {admission (0 deny, 1 pass, 2 trial), state, until_ms, version}.
_ACQUIRE = (
    _READ_STATE
    + _CHANGE_STATE
    + """
local now = tonumber(ARGV[3])
if state == 'FORCED_OPEN' then return {0, state, '0', version} end
if state == 'OPEN' then
  local until_ms = tonumber(st[2] or '0')
  if now < until_ms then return {0, state, st[2], version} end
  change('HALF_OPEN', 0)
  state = 'HALF_OPEN'
end
if state ~= 'HALF_OPEN' then return {1, state, '0', version} end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[4]) then
  local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  return {0, state, first[2], version}
end
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[6])
redis.call('PEXPIRE', KEYS[3], 2 * tonumber(ARGV[5]))
return {2, state, '0', version}
"""
)

# KEYS: state, window, permits. ARGV: channel, name, now, token, outcome,
# success_threshold, timeout_ms, hold_ms (-1: none)
_FINISH_TRIAL = (
    _READ_STATE
    + _CHANGE_STATE
    + """
local removed = redis.call('ZREM', KEYS[3], ARGV[4])
if removed == 0 or state ~= 'HALF_OPEN' or ARGV[5] == 'ignored' then return {state, st[2] or '0', version} end
local now = tonumber(ARGV[3])
if ARGV[5] == 'failure' then return change('OPEN', now + math.max(tonumber(ARGV[7]), tonumber(ARGV[8]))) end
if redis.call('HINCRBY', KEYS[1], 'n', 1) < tonumber(ARGV[6]) then return {state, '0', version} end
return change('CLOSED', 0)
"""
)

# KEYS: state, window, permits. ARGV: channel, name, state, until_ms
_SET_STATE = _READ_STATE + _CHANGE_STATE + "return change(ARGV[3], tonumber(ARGV[4]))\n"


@dataclass(frozen=True)
class Verdict:
    """A circuit state as decided in Redis. ``until`` is when an OPEN circuit
    allows a trial, or when a refused HALF_OPEN caller may find a free permit."""

    state: State
    until: float
    version: int

    def retry_after(self, now: float) -> float | None:
        if self.state is State.FORCED_OPEN:
            return None
        return max(0.0, self.until - now)

    @classmethod
    def from_reply(cls, reply: Sequence[Any]) -> Verdict:
        state, until_ms, version = reply
        return cls(State(_text(state)), float(_text(until_ms)) / 1000, int(version))


class SharedState:
    """The Redis side of every shared breaker of one app."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.channel = store.channel("breakers")
        self._report = store.script(_REPORT)
        self._acquire = store.script(_ACQUIRE)
        self._finish = store.script(_FINISH_TRIAL)
        self._set_state = store.script(_SET_STATE)
        self._healthy = True

    def _keys(self, name: str) -> list[str]:
        slot = f"breaker:{name}"
        return [self.store.key(part, slot=slot) for part in ("state", "window", "permits")]

    def _run(self, breaker: CircuitBreaker, call: Callable[[], Any]) -> Any | None:
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

    def report(
        self, breaker: CircuitBreaker, now: float, *, calls: int, failures: int, slow: int, hold: float | None
    ) -> Verdict | None:
        config = breaker.config
        args = [
            self.channel, breaker.name, _ms(now), calls, failures, slow, config.failure_threshold,
            _ms(config.monitoring_period or 0), 10,
            -1 if config.failure_rate_threshold is None else config.failure_rate_threshold,
            config.minimum_calls,
            -1 if config.slow_call_duration is None else config.slow_call_rate_threshold,
            _ms(config.timeout), -1 if hold is None else _ms(hold), _ms(config.reset_timeout),
        ]  # fmt: skip
        reply = self._run(
            breaker, lambda: self.store.run_script(self._report, self._keys(breaker.name), args)
        )
        return None if reply is None else Verdict.from_reply(reply)

    def acquire(self, breaker: CircuitBreaker, now: float) -> tuple[int, str, Verdict] | None:
        """``(admission, token, verdict)``: admission 0 refuses, 1 admits an
        ordinary call, 2 admits a trial holding ``token``."""
        token = uuid.uuid4().hex
        config = breaker.config
        args = [self.channel, breaker.name, _ms(now), config.half_open_max_calls, _ms(config.timeout), token]
        reply = self._run(
            breaker, lambda: self.store.run_script(self._acquire, self._keys(breaker.name), args)
        )
        if reply is None:
            return None
        admission, *verdict = reply
        return int(admission), token, Verdict.from_reply(verdict)

    def finish_trial(
        self,
        breaker: CircuitBreaker,
        now: float,
        *,
        token: str,
        outcome: Outcome,
        bad: bool,
        hold: float | None,
    ) -> Verdict | None:
        result = "ignored" if outcome is Outcome.IGNORED else ("failure" if bad else "success")
        config = breaker.config
        args = [
            self.channel, breaker.name, _ms(now), token, result, config.success_threshold,
            _ms(config.timeout), -1 if hold is None else _ms(hold),
        ]  # fmt: skip
        reply = self._run(
            breaker, lambda: self.store.run_script(self._finish, self._keys(breaker.name), args)
        )
        return None if reply is None else Verdict.from_reply(reply)

    def set_state(self, breaker: CircuitBreaker, state: State, until: float) -> Verdict | None:
        args = [self.channel, breaker.name, state.value, _ms(until) if state is State.OPEN else 0]
        reply = self._run(
            breaker, lambda: self.store.run_script(self._set_state, self._keys(breaker.name), args)
        )
        return None if reply is None else Verdict.from_reply(reply)

    def fetch(self, breaker: CircuitBreaker) -> Verdict | None:
        """The stored state. Also makes sure this process listens for changes
        (it runs first in a freshly forked worker, even outside a request)."""
        self.store.subscriber.ensure_running()
        key = self._keys(breaker.name)[0]
        reply = self._run(breaker, lambda: self.store.hash_get(key, ["s", "u", "v"]))
        if reply is None:
            return None
        state, until_ms, version = reply
        return Verdict(
            State(_text(state or b"CLOSED")), float(_text(until_ms or b"0")) / 1000, int(version or 0)
        )

    def listen(self, lookup: Callable[[str], CircuitBreaker | None], on_gap: Callable[[], None]) -> None:
        """Mirror published changes into this process's breakers."""

        def handle(message: bytes) -> None:
            data = json.loads(message)
            breaker = lookup(str(data["name"]))
            if breaker is not None:
                verdict = Verdict(State(data["s"]), float(data["u"]) / 1000, int(data["v"]))
                breaker.apply_verdict(verdict)

        self.store.subscriber.on_gap(on_gap)
        self.store.subscribe(self.channel, handle)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
