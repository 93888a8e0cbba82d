"""The circuit breaker state machine.

::

    CLOSED --(failures / rates reach a threshold)--> OPEN
    OPEN --(timeout elapsed; a caller takes a trial permit)--> HALF_OPEN
    HALF_OPEN --(success_threshold successful trials)--> CLOSED
    HALF_OPEN --(a failed trial)--> OPEN

plus the operator states FORCED_OPEN (reject all), DISABLED (pass all, record
nothing) and METRICS_ONLY (pass all, record, never trip).

No lock is held while the protected function runs: a short lock guards the
bookkeeping before and after. In CLOSED a call reads one attribute to be
admitted. HALF_OPEN hands out at most ``half_open_max_calls`` trial permits,
each a lease that lapses after ``timeout`` seconds so a hung trial cannot
wedge the circuit. With shared storage, trip decisions and trial permits are
made in Redis (see ``shared.py``) and this object mirrors them; when Redis
fails it decides on its own.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from ..signals import circuit_state_changed
from .config import BreakerConfig, Outcome, build_config
from .states import PASS_THROUGH, CircuitOpenError, State, Trial
from .window import SlidingWindow

if TYPE_CHECKING:
    from types import TracebackType

    from .shared import SharedState, Verdict

logger = logging.getLogger("flask_resilience")

P = ParamSpec("P")
R = TypeVar("R")


class CircuitBreaker:
    """One named circuit. Create it through ``Resilience.circuit_breaker``."""

    def __init__(
        self, name: str, config: BreakerConfig, *, explicit: Mapping[str, Any] | None = None
    ) -> None:
        self.name = name
        self._explicit = dict(explicit or {})
        self._lock = threading.Lock()
        self._state = State.CLOSED
        self._open_until = 0.0
        self._trials: dict[str, float] = {}
        self._trial_successes = 0
        self._last_failure_at: float | None = None
        self._last_failure_wall: float | None = None
        self._last_transition_wall: float | None = None
        self._shared: SharedState | None = None
        self._shared_version = -1
        self._needs_sync = False
        self._fast = False
        self._unreported = [0, 0]  # calls and slow calls not yet sent to shared storage
        self._active: contextvars.ContextVar[tuple[tuple[Trial | None, float], ...]] = contextvars.ContextVar(
            f"flask_resilience_breaker_{name}", default=()
        )
        self._apply_config(config)
        self._reset_counters()

    # -- configuration -------------------------------------------------------

    @property
    def config(self) -> BreakerConfig:
        return self._config

    def now(self) -> float:
        """This breaker's clock, for the ``started`` argument of :meth:`release`."""
        return self._clock()

    @property
    def explicit(self) -> Mapping[str, Any]:
        """The parameters this breaker was created with (they win over app defaults)."""
        return self._explicit

    def _apply_config(self, config: BreakerConfig) -> None:
        self._config = config
        self._clock: Callable[[], float] = config.clock or (
            time.time if self._shared is not None else time.monotonic
        )
        self._window = SlidingWindow(config.monitoring_period)
        self._refresh_fast()

    def reconfigure(self, defaults: Mapping[str, Any], shared: SharedState | None, *, disabled: bool) -> None:
        """Apply app-level defaults and storage (from ``init_app``); explicit
        parameters given at creation win over ``defaults``."""
        config = build_config(defaults, self._explicit)
        with self._lock:
            self._shared = shared
            self._needs_sync = shared is not None
            if disabled:
                self._state = State.DISABLED
            self._apply_config(config)

    # -- the protected call ----------------------------------------------------

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` under the breaker.

        Raises :class:`CircuitOpenError` when rejected, unless a ``fallback``
        is configured, whose result is returned instead.
        """
        if self._fast:
            # CLOSED with count-based rules only: a success changes nothing but
            # a counter, so it takes no lock and reads no clock.
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                self._fast_failure(exc)
                raise
            self._count_fast_success()
            return result
        fallback = self._config.fallback
        try:
            trial = self._admit()
        except CircuitOpenError:  # refused after a closer look (HALF_OPEN full, shared state)
            if fallback is None:
                raise
            return cast(R, fallback(*args, **kwargs))
        if isinstance(trial, tuple):
            if fallback is None:
                raise CircuitOpenError(*trial)
            return cast(R, fallback(*args, **kwargs))
        started = self._clock()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self.release(trial, started, self._config.classify(exc))
            raise
        self.release(trial, started, self._result_outcome(result))
        return result

    async def call_async(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """``await fn(*args, **kwargs)`` under the breaker; see :meth:`call`."""
        try:
            trial = self.acquire()
        except CircuitOpenError:
            fallback = self._config.fallback
            if fallback is None:
                raise
            result = fallback(*args, **kwargs)
            return cast(R, await result if inspect.isawaitable(result) else result)
        started = self._clock()
        try:
            value = await fn(*args, **kwargs)
        except BaseException as exc:
            self.release(trial, started, self._config.classify(exc))
            raise
        self.release(trial, started, self._result_outcome(value))
        return value

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Use the breaker as a decorator on a sync or ``async def`` function."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await self.call_async(fn, *args, **kwargs)

            return cast(Callable[P, R], async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if self._fast:  # call()'s lock-free path, inlined: decorators are the common use
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    self._fast_failure(exc)
                    raise
                self._count_fast_success()
                return result
            return self.call(fn, *args, **kwargs)

        return wrapper

    def __enter__(self) -> CircuitBreaker:
        trial = self.acquire()
        self._active.set((*self._active.get(), (trial, self._clock())))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        *rest, (trial, started) = self._active.get()
        self._active.set(tuple(rest))
        self.release(trial, started, Outcome.SUCCESS if exc is None else self._config.classify(exc))

    async def __aenter__(self) -> CircuitBreaker:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def _fast_failure(self, exc: BaseException) -> None:
        now = self._clock()
        self.release(None, now, self._config.classify(exc))

    def _refresh_fast(self) -> None:
        """Whether :meth:`call` may take the lock-free success path."""
        config = self._config
        self._fast = (
            (self._state is State.CLOSED or self._state is State.METRICS_ONLY)
            and not self._needs_sync
            and config.slow_call_duration is None
            and config.failure_rate_threshold is None
            and config.result_is_failure is None
        )

    def _result_outcome(self, result: object) -> Outcome:
        predicate = self._config.result_is_failure
        return Outcome.FAILURE if predicate is not None and predicate(result) else Outcome.SUCCESS

    # -- admission -------------------------------------------------------------

    def acquire(self) -> Trial | None:
        """Admit a call: None for an ordinary call, a :class:`Trial` in
        HALF_OPEN; raises :class:`CircuitOpenError` when refused. Every
        admitted call must be followed by :meth:`release`."""
        admitted = self._admit()
        if isinstance(admitted, tuple):
            # Raised here, never held in a variable: a held exception would tie
            # this frame and its traceback into a cycle for the collector.
            raise CircuitOpenError(*admitted)
        return admitted

    def _admit(self) -> Trial | tuple[str, State, float | None] | None:
        """Like :meth:`acquire`, but an outright refusal is returned (the
        error's arguments), not raised: refusing is the common case in an outage."""
        if self._needs_sync:
            self._sync()
        if self._state in PASS_THROUGH:
            return None
        refused = self._refused()
        if refused is not None:
            return refused
        return self._acquire_guarded(self._clock())

    def _refused(self) -> tuple[str, State, float | None] | None:
        """Why a call is refused outright (OPEN before its deadline,
        FORCED_OPEN), counted; None when admission needs a closer look.
        No lock: the state and its deadline are each read once."""
        state = self._state
        if state is State.FORCED_OPEN:
            self._count_rejection()
            return self.name, state, None
        if state is State.OPEN:
            remaining = self._open_until - self._clock()
            if remaining > 0:
                self._count_rejection()
                return self.name, state, remaining
        return None

    def _acquire_guarded(self, now: float) -> Trial | None:
        with self._lock:
            state = self._state
            if state is State.OPEN and now < self._open_until:
                self._count_rejection()
                raise CircuitOpenError(self.name, state, self._open_until - now)
            if state is State.FORCED_OPEN:
                self._count_rejection()
                raise CircuitOpenError(self.name, state, None)
            if state in PASS_THROUGH:
                return None
        shared = self._shared
        admission = shared.acquire(self, now) if shared is not None else None
        if admission is None:
            return self._acquire_local_trial(now)
        kind, token, verdict = admission
        self.apply_verdict(verdict)
        if kind == 0:
            with self._lock:
                self._count_rejection()
            raise CircuitOpenError(self.name, verdict.state, verdict.retry_after(now))
        if kind == 1:
            return None
        with self._lock:
            self._trials[token] = now + self._config.timeout
        return Trial(token, shared=True)

    def _acquire_local_trial(self, now: float) -> Trial | None:
        changes: list[tuple[State, State]] = []
        with self._lock:
            if self._state is State.OPEN:
                if now < self._open_until:
                    self._count_rejection()
                    raise CircuitOpenError(self.name, self._state, self._open_until - now)
                changes.append(self._transition(State.HALF_OPEN, now))
            if self._state is not State.HALF_OPEN:
                return None
            for token, expires in list(self._trials.items()):
                if expires <= now:  # a hung trial gives its permit back
                    del self._trials[token]
            if len(self._trials) >= self._config.half_open_max_calls:
                self._count_rejection()
                retry_after = max(0.0, min(self._trials.values()) - now)
                error = CircuitOpenError(self.name, State.HALF_OPEN, retry_after)
            else:
                token = uuid.uuid4().hex
                self._trials[token] = now + self._config.timeout
                error = None
        self._announce(changes, "local")
        if error is not None:
            raise error
        return Trial(token, shared=False)

    # -- outcomes --------------------------------------------------------------

    def release(
        self, trial: Trial | None, started: float, outcome: Outcome, *, hold_open: float | None = None
    ) -> None:
        """Record the outcome of an admitted call that started at ``started``
        (this breaker's clock). ``hold_open`` (seconds, e.g. from Retry-After)
        opens the circuit at once for at least that long."""
        now = self._clock()
        config = self._config
        slow = config.slow_call_duration is not None and now - started >= config.slow_call_duration
        bad = outcome is Outcome.FAILURE or slow or hold_open is not None
        changes: list[tuple[State, State]] = []
        report = None
        with self._lock:
            if self._state is State.DISABLED:
                return
            self._count(outcome, slow)
            if trial is not None:
                if not trial.shared:
                    changes = self._finish_local_trial(trial, outcome, bad, now, hold_open)
            elif outcome is not Outcome.IGNORED:
                if self._last_failure_at is not None and now - self._last_failure_at >= config.reset_timeout:
                    self._window.clear()
                self._window.record(now, failure=outcome is Outcome.FAILURE, slow=slow)
                if outcome is Outcome.FAILURE:
                    self._last_failure_at = now
                if self._shared is not None:
                    if bad or self._batch_due():
                        report = self._take_unreported(outcome, slow)
                    else:
                        self._unreported[0] += 1
                elif bad and self._state is State.CLOSED:
                    changes = self._trip_if_due(now, hold_open)
        if trial is not None and trial.shared:
            self._finish_shared_trial(trial, outcome, bad, now, hold_open)
        elif report is not None:
            self._report(report, now, hold_open)
        self._announce(changes, "local")

    def _count(self, outcome: Outcome, slow: bool) -> None:
        self._calls += 1
        if outcome is Outcome.SUCCESS:
            self._successes += 1
        elif outcome is Outcome.FAILURE:
            self._failures += 1
            self._last_failure_wall = time.time()
        else:
            self._ignored += 1
        if slow:
            self._slow_calls += 1

    def _should_trip(self, now: float) -> bool:
        config = self._config
        if self._window.failures(now) >= config.failure_threshold:
            return True
        if config.failure_rate_threshold is None and config.slow_call_duration is None:
            return False
        totals = self._window.totals(now)
        if totals.calls < config.minimum_calls:
            return False
        if config.failure_rate_threshold is not None and totals.failure_rate >= config.failure_rate_threshold:
            return True
        return config.slow_call_duration is not None and totals.slow_rate >= config.slow_call_rate_threshold

    def _trip_if_due(self, now: float, hold_open: float | None) -> list[tuple[State, State]]:
        """Under the lock: open a CLOSED circuit when a rule says so or the
        remote side asked for a pause (``hold_open``)."""
        if self._state is not State.CLOSED:
            return []
        if self._should_trip(now):
            return [self._transition(State.OPEN, now, max(self._config.timeout, hold_open or 0.0))]
        if hold_open is not None:
            return [self._transition(State.OPEN, now, hold_open)]
        return []

    def _finish_local_trial(
        self, trial: Trial, outcome: Outcome, bad: bool, now: float, hold_open: float | None
    ) -> list[tuple[State, State]]:
        """Under the lock: let a trial's outcome decide HALF_OPEN."""
        if self._trials.pop(trial.token, None) is None or outcome is Outcome.IGNORED:
            return []  # the lease lapsed (its result no longer decides) or it was cancelled
        if self._state is not State.HALF_OPEN:
            return []
        if bad:
            return [self._transition(State.OPEN, now, max(self._config.timeout, hold_open or 0.0))]
        self._trial_successes += 1
        if self._trial_successes < self._config.success_threshold:
            return []
        return [self._transition(State.CLOSED, now)]

    def _finish_shared_trial(
        self, trial: Trial, outcome: Outcome, bad: bool, now: float, hold_open: float | None
    ) -> None:
        shared = self._shared
        verdict = None
        if shared is not None:
            verdict = shared.finish_trial(
                self, now, token=trial.token, outcome=outcome, bad=bad, hold=hold_open
            )
        if verdict is not None:
            with self._lock:
                self._trials.pop(trial.token, None)
            self.apply_verdict(verdict)
            return
        with self._lock:  # storage failed: decide locally
            changes = self._finish_local_trial(trial, outcome, bad, now, hold_open)
        self._announce(changes, "local")

    # -- shared storage ------------------------------------------------------------

    def _batch_due(self) -> bool:
        # With rate rules the shared window needs the calls too; send them in batches.
        config = self._config
        uses_rates = config.failure_rate_threshold is not None or config.slow_call_duration is not None
        return uses_rates and self._unreported[0] + 1 >= 100

    def _take_unreported(self, outcome: Outcome, slow: bool) -> tuple[int, int, int]:
        calls, slow_calls = self._unreported
        self._unreported = [0, 0]
        return calls + 1, int(outcome is Outcome.FAILURE), slow_calls + int(slow)

    def _report(self, report: tuple[int, int, int], now: float, hold_open: float | None) -> None:
        shared = self._shared
        verdict = None
        if shared is not None:
            calls, failures, slow = report
            verdict = shared.report(self, now, calls=calls, failures=failures, slow=slow, hold=hold_open)
        if verdict is not None:
            self.apply_verdict(verdict)
            return
        with self._lock:
            changes = self._trip_if_due(now, hold_open)
        self._announce(changes, "local")

    def _sync(self) -> None:
        self._needs_sync = False
        shared = self._shared
        verdict = shared.fetch(self) if shared is not None else None
        if verdict is not None:
            self.apply_verdict(verdict)
        with self._lock:
            self._refresh_fast()

    def mark_stale(self) -> None:
        """Shared state may have changed unseen (new process, lost pub/sub):
        read it again before the next call."""
        if self._shared is not None:
            self._needs_sync = True
            self._fast = False

    def apply_verdict(self, verdict: Verdict) -> None:
        """Mirror a state decided in shared storage."""
        changes: list[tuple[State, State]] = []
        with self._lock:
            if verdict.version < self._shared_version:
                return
            self._shared_version = verdict.version
            if verdict.state is State.OPEN:
                self._open_until = verdict.until
            if verdict.state is not self._state:
                changes.append(self._transition(verdict.state, self._clock()))
        self._announce(changes, "shared")

    # -- transitions -----------------------------------------------------------------

    def _transition(self, new: State, now: float, open_for: float | None = None) -> tuple[State, State]:
        """Change state (``open_for`` seconds when opening; default ``timeout``).

        The caller holds the lock and announces the change after releasing it.
        """
        old = self._state
        self._state = new
        self._refresh_fast()
        self._last_transition_wall = time.time()
        self._trial_successes = 0
        if new is State.OPEN and open_for is not None:
            self._open_until = now + open_for
        if new is not State.HALF_OPEN:
            self._trials.clear()
        if new is State.CLOSED or new is State.DISABLED:
            self._window.clear()
            self._last_failure_at = None
        return old, new

    def _announce(self, changes: list[tuple[State, State]], source: str) -> None:
        for old, new in changes:
            if old is new:
                continue
            level = logging.WARNING if new in (State.OPEN, State.FORCED_OPEN) else logging.INFO
            logger.log(level, "circuit %r: %s -> %s (%s)", self.name, old.value, new.value, source)
            circuit_state_changed.send(self, name=self.name, old=old, new=new, source=source)

    def _set_operator_state(self, new: State) -> None:
        with self._lock:
            change = self._transition(new, self._clock(), self._config.timeout)
            if new is State.CLOSED:
                self._reset_counters()
        shared = self._shared
        if shared is not None:
            verdict = shared.set_state(self, new, self._clock())
            if verdict is not None:
                with self._lock:
                    self._shared_version = max(self._shared_version, verdict.version)
        self._announce([change], "local")

    def force_open(self) -> None:
        """Reject every call until :meth:`reset` (FORCED_OPEN)."""
        self._set_operator_state(State.FORCED_OPEN)

    def disable(self) -> None:
        """Let every call through and record nothing (DISABLED)."""
        self._set_operator_state(State.DISABLED)

    def metrics_only(self) -> None:
        """Let every call through, record it, never trip (METRICS_ONLY)."""
        self._set_operator_state(State.METRICS_ONLY)

    def reset(self) -> None:
        """Back to CLOSED with an empty window and zeroed statistics."""
        self._set_operator_state(State.CLOSED)

    def set_state(self, state: State | str) -> None:
        """Operator transition by name: CLOSED, FORCED_OPEN, DISABLED or METRICS_ONLY."""
        actions = {
            State.CLOSED: self.reset,
            State.FORCED_OPEN: self.force_open,
            State.DISABLED: self.disable,
            State.METRICS_ONLY: self.metrics_only,
        }
        try:
            actions[State(state)]()
        except (ValueError, KeyError):
            raise ValueError(
                f"cannot set a circuit to {state!r}; use one of {', '.join(s.value for s in actions)}"
            ) from None

    # -- statistics ------------------------------------------------------------------

    def _reset_counters(self) -> None:
        # Successes on the lock-free path; next() on itertools.count is atomic.
        self._fast_successes = itertools.count()
        self._count_fast_success = self._fast_successes.__next__
        self._calls = self._successes = self._failures = self._ignored = 0
        self._slow_calls = 0
        self._rejections = itertools.count()
        self._count_rejection = self._rejections.__next__
        self._storage_errors = 0

    def count_storage_error(self) -> None:
        with self._lock:
            self._storage_errors += 1

    @property
    def state(self) -> State:
        """The state now; an OPEN circuit whose timeout has passed reads HALF_OPEN."""
        state = self._state
        if state is State.OPEN and self._clock() >= self._open_until:
            return State.HALF_OPEN
        return state

    @property
    def is_healthy(self) -> bool:
        """False while the circuit rejects calls (OPEN, HALF_OPEN, FORCED_OPEN)."""
        return self._state in PASS_THROUGH

    def stats(self) -> dict[str, object]:
        now = self._clock()
        with self._lock:
            fast = _current(self._fast_successes)
            calls, successes = self._calls + fast, self._successes + fast
            totals = self._window.totals(now)
            until_trial = max(0.0, self._open_until - now) if self._state is State.OPEN else None
            return {
                "name": self.name,
                "state": self.state.value,
                "storage": "redis" if self._shared is not None else "local",
                "calls": calls,
                "successes": successes,
                "failures": self._failures,
                "ignored": self._ignored,
                "rejections": _current(self._rejections),
                "slow_calls": self._slow_calls,
                "window": {
                    "calls": totals.calls,
                    "failures": totals.failures,
                    "slow_calls": totals.slow,
                    "failure_rate": round(totals.failure_rate, 2),
                },
                "failure_rate": round(100.0 * self._failures / calls, 2) if calls else 0.0,
                "last_failure_at": _iso(self._last_failure_wall),
                "last_transition_at": _iso(self._last_transition_wall),
                "seconds_until_trial": None if until_trial is None else round(until_trial, 3),
                "trials_in_flight": len(self._trials),
                "storage_errors": self._storage_errors,
            }


def _current(counter: itertools.count[int]) -> int:
    # Its repr, "count(N)", is the one way to read a count without advancing it.
    return int(repr(counter)[6:-1])


def _iso(wall: float | None) -> str | None:
    if wall is None:
        return None
    return datetime.fromtimestamp(wall, UTC).isoformat()
