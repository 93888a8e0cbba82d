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
made in Redis, reached through the breaker's :class:`~.link.Link` (see
``link.py``), and this object mirrors them; when Redis fails it decides on
its own.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..histograms import Timings
from .config import BreakerConfig, Outcome, build_config
from .counters import Counters, iso
from .link import LOCAL_LINK, Admission, Link
from .states import PASS_THROUGH, CircuitOpenError, OperatorControls, State, Trial, announce
from .trials import Trials
from .window import SlidingWindow
from .wrapping import Protection


class CircuitBreaker(Protection, OperatorControls):
    """One named circuit. Create it through ``Resilience.circuit_breaker``."""

    def __init__(
        self, name: str, config: BreakerConfig, *, explicit: Mapping[str, Any] | None = None
    ) -> None:
        self.name = name
        self._explicit = dict(explicit or {})
        self._lock = threading.Lock()
        self.durations = Timings()  # calls' durations, for the Prometheus histogram
        self._sample_next = False  # the lock-free path times its next call (see wrapping.SAMPLE)
        self._state = State.CLOSED
        self._open_until = 0.0
        self._trials = Trials()
        self._last_failure_at: float | None = None
        self._last_transition_wall: float | None = None
        self._link: Link = LOCAL_LINK
        self._needs_sync = False
        self._fast = False
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
            time.time if self._link.wall_clock else time.monotonic
        )
        self._window = SlidingWindow(config.monitoring_period)
        self._refresh_fast()

    def reconfigure(self, defaults: Mapping[str, Any], link: Link, *, disabled: bool) -> None:
        """Apply app-level defaults and storage (from ``init_app``); explicit
        parameters given at creation win over ``defaults``."""
        config = build_config(defaults, self._explicit)
        with self._lock:
            self._link = link
            if disabled:
                self._state = State.DISABLED
            self._apply_config(config)

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
        with self._lock:  # the state may have changed since the caller's unlocked look
            refused, passes = self._refused(), self._state in PASS_THROUGH
        if refused is not None:
            raise CircuitOpenError(*refused)
        if passes:
            return None
        decision = self._link.admit(now)
        if decision is None:
            return self._acquire_local_trial(now)
        if decision.admission is Admission.REFUSED:
            self._count_rejection()
            raise CircuitOpenError(self.name, decision.state, decision.retry_after)
        if decision.admission is Admission.PASS:
            return None
        with self._lock:
            self._trials.hold(decision.token, now + self._config.timeout)
        return Trial(decision.token, shared=True)

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
            permit = self._trials.take(now, self._config.half_open_max_calls, self._config.timeout)
            if isinstance(permit, float):
                self._count_rejection()
        announce(self, self.name, changes, "local")
        if isinstance(permit, float):
            raise CircuitOpenError(self.name, State.HALF_OPEN, permit)
        return Trial(permit, shared=False)

    # -- outcomes --------------------------------------------------------------

    def release(
        self,
        trial: Trial | None,
        started: float,
        outcome: Outcome,
        *,
        hold_open: float | None = None,
        timed: bool = True,
    ) -> None:
        """Record the outcome of an admitted call that started at ``started``
        (this breaker's clock; ``timed=False``: its duration is not observed).
        ``hold_open`` (seconds, e.g. from Retry-After) opens the circuit at
        once for at least that long, capped at the config's ``retry_after_cap``."""
        now = self._clock()
        if timed:
            self.durations.observe_seconds(now - started)
        config = self._config
        capped = hold_open is not None and hold_open > config.retry_after_cap
        if capped:
            hold_open = config.retry_after_cap
        slow = config.slow_call_duration is not None and now - started >= config.slow_call_duration
        bad = outcome is Outcome.FAILURE or slow or hold_open is not None
        with self._lock:
            if self._state is State.DISABLED:
                return
            self._counters.count(outcome, slow)
            self._counters.retry_after_capped += capped
            if trial is None and outcome is not Outcome.IGNORED:
                if self._last_failure_at is not None and now - self._last_failure_at >= config.reset_timeout:
                    self._window.clear()
                self._window.record(now, failure=outcome is Outcome.FAILURE, slow=slow)
                if outcome is Outcome.FAILURE:
                    self._last_failure_at = now
        if trial is not None:
            if not (trial.shared and self._link.finish_trial(trial.token, now, outcome, bad, hold_open)):
                with self._lock:  # a local trial, or storage failed: decide here
                    changes = self._finish_local_trial(trial, outcome, bad, now, hold_open)
                announce(self, self.name, changes, "local")
                return
            with self._lock:
                self._trials.give_back(trial.token)
        elif (
            outcome is not Outcome.IGNORED
            and not self._link.record(now, outcome, slow, bad, hold_open)
            and bad
        ):
            with self._lock:
                changes = self._trip_if_due(now, hold_open)
            announce(self, self.name, changes, "local")

    def _trip_if_due(self, now: float, hold_open: float | None) -> list[tuple[State, State]]:
        """Under the lock: open a CLOSED circuit when a rule says so or the
        remote side asked for a pause (``hold_open``)."""
        if self._state is not State.CLOSED:
            return []
        if self._config.trips(self._window, now):
            return [self._transition(State.OPEN, now, max(self._config.timeout, hold_open or 0.0))]
        if hold_open is not None:
            return [self._transition(State.OPEN, now, hold_open)]
        return []

    def _finish_local_trial(
        self, trial: Trial, outcome: Outcome, bad: bool, now: float, hold_open: float | None
    ) -> list[tuple[State, State]]:
        """Under the lock: let a trial's outcome decide HALF_OPEN."""
        if not self._trials.give_back(trial.token) or outcome is Outcome.IGNORED:
            return []  # the lease lapsed (its result no longer decides) or it was cancelled
        if self._state is not State.HALF_OPEN:
            return []
        if bad:
            return [self._transition(State.OPEN, now, max(self._config.timeout, hold_open or 0.0))]
        self._trials.successes += 1
        if self._trials.successes < self._config.success_threshold:
            return []
        return [self._transition(State.CLOSED, now)]

    # -- shared storage ------------------------------------------------------------

    def _sync(self, *, keep_pending: bool = False) -> bool:
        """Mirror the shared state; ``keep_pending``: a read that fails leaves a
        pending sync for the next call (a call's own read spends it: during an
        outage calls must not each pay a Redis timeout)."""
        pending = self._needs_sync
        self._needs_sync = False
        read = self._link.sync()
        if keep_pending and not read:
            self._needs_sync = pending
        with self._lock:
            self._refresh_fast()
        return read

    def refresh(self) -> bool:
        """Read the shared state now (a status page asks; a call would sync on
        its own): this process's copy may not have heard of a change yet.
        False when shared storage did not answer (the copy stays); True also
        when nothing is shared."""
        return self._sync(keep_pending=True)

    def mark_stale(self) -> None:
        """Shared state may have changed unseen (new process, lost pub/sub):
        read it again before the next call (a no-op read when nothing is shared)."""
        self._needs_sync = True
        self._fast = False

    def adopt(self, state: State, until: float, fresh: Callable[[], bool], source: str = "shared") -> None:
        """Mirror a state decided in shared storage, if ``fresh()`` agrees;
        ``source`` is ``"local"`` when this process's own call decided it."""
        changes: list[tuple[State, State]] = []
        with self._lock:
            if not fresh():
                return
            if state is State.OPEN:
                self._open_until = until
            if state is not self._state:
                changes.append(self._transition(state, self._clock()))
        announce(self, self.name, changes, source)

    # -- transitions -----------------------------------------------------------------

    def _transition(self, new: State, now: float, open_for: float | None = None) -> tuple[State, State]:
        """Change state (``open_for`` seconds when opening; default ``timeout``).

        The caller holds the lock and announces the change after releasing it.
        """
        old = self._state
        self._state = new
        self._refresh_fast()
        self._last_transition_wall = time.time()
        self._trials.successes = 0
        if new is State.OPEN and open_for is not None:
            self._open_until = now + open_for
        if new is not State.HALF_OPEN:
            self._trials.leases.clear()
        if new is State.CLOSED or new is State.DISABLED:
            self._window.clear()
            self._last_failure_at = None
        return old, new

    def _set_operator_state(self, new: State) -> bool:
        with self._lock:
            change = self._transition(new, self._clock(), self._config.timeout)
            if new is State.CLOSED:
                self._reset_counters()
        shared = self._link.set_state(new, self._clock())
        announce(self, self.name, [change], "local")
        return shared

    # -- statistics ------------------------------------------------------------------

    def _reset_counters(self) -> None:
        self._counters = Counters()
        # Bound once: the lock-free paths call them without an attribute chain.
        self._count_fast_success = self._counters.fast_successes.__next__
        self._count_rejection = self._counters.rejections.__next__

    def count_storage_error(self) -> None:
        with self._lock:
            self._counters.storage_errors += 1

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
            until_trial = max(0.0, self._open_until - now) if self._state is State.OPEN else None
            return {
                "name": self.name,
                "state": self.state.value,
                "storage": self._link.storage,
                **self._counters.snapshot(),
                "window": self._window.totals(now).as_dict(),
                "last_transition_at": iso(self._last_transition_wall),
                "seconds_until_trial": None if until_trial is None else round(until_trial, 3),
                "trials_in_flight": len(self._trials),
            }
