"""A breaker's parameters, their defaults (the seed's) and their validation."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import BREAKER_DEFAULTS, Config

if TYPE_CHECKING:
    from .window import SlidingWindow

ExceptionTypes = tuple[type[BaseException], ...]

# Neither success nor failure: the call was stopped, not answered.
CANCELLATION: ExceptionTypes = (asyncio.CancelledError, KeyboardInterrupt, GeneratorExit, SystemExit)


class Outcome(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    IGNORED = "ignored"


@dataclass(frozen=True)
class BreakerConfig:
    """Times are in seconds, rates in percent.

    The circuit opens when ``failure_threshold`` failures happen within the
    last ``monitoring_period`` seconds (``None``: no window, failures count
    until ``reset_timeout`` seconds pass without one), or, when set, when the
    failure rate or the slow-call rate over at least ``minimum_calls`` calls
    in the window reaches its threshold. After ``timeout`` seconds OPEN it
    lets ``half_open_max_calls`` trial calls through at once; each trial holds
    its permit for at most ``timeout`` seconds. ``success_threshold``
    successful trials close it; a failed trial opens it again.
    """

    failure_threshold: int = 5
    monitoring_period: float | None = 10.0
    timeout: float = 60.0
    success_threshold: int = 2
    reset_timeout: float = 300.0
    half_open_max_calls: int = 1
    failure_rate_threshold: float | None = None
    minimum_calls: int = 10
    slow_call_duration: float | None = None
    slow_call_rate_threshold: float = 100.0
    expected_exceptions: ExceptionTypes = (Exception,)
    ignored_exceptions: ExceptionTypes = ()
    is_failure: Callable[[BaseException], bool] | None = None
    result_is_failure: Callable[[Any], bool] | None = None
    fallback: Callable[..., Any] | None = None
    max_retry_after: float | None = None
    clock: Callable[[], float] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _at_least_one("failure_threshold", self.failure_threshold)
        _at_least_one("success_threshold", self.success_threshold)
        _at_least_one("half_open_max_calls", self.half_open_max_calls)
        _at_least_one("minimum_calls", self.minimum_calls)
        _seconds("timeout", self.timeout, _ONE_HOUR)
        _seconds("reset_timeout", self.reset_timeout, _ONE_DAY)
        if self.monitoring_period is not None:
            _seconds("monitoring_period", self.monitoring_period, _ONE_HOUR)
        if self.max_retry_after is not None:
            _positive("max_retry_after", self.max_retry_after)
        if self.slow_call_duration is not None:
            _positive("slow_call_duration", self.slow_call_duration)
        _percent("slow_call_rate_threshold", self.slow_call_rate_threshold)
        if self.failure_rate_threshold is not None:
            _percent("failure_rate_threshold", self.failure_rate_threshold)
        uses_rates = self.failure_rate_threshold is not None or self.slow_call_duration is not None
        if uses_rates and self.monitoring_period is None:
            raise ValueError("failure_rate_threshold and slow_call_duration need a monitoring_period")
        for name in ("is_failure", "result_is_failure", "fallback", "clock"):
            hook = getattr(self, name)
            if hook is not None and not callable(hook):  # JSON configuration holds only strings
                raise ValueError(f"{name} must be callable, got {hook!r}")
        for name in ("expected_exceptions", "ignored_exceptions"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(
                isinstance(t, type) and issubclass(t, BaseException) for t in value
            ):
                raise ValueError(f"{name} must be a tuple of exception classes, got {value!r}")

    def classify(self, exc: BaseException) -> Outcome:
        """How a raised exception counts: cancellation and ignored ones not at all."""
        if isinstance(exc, CANCELLATION + self.ignored_exceptions):
            return Outcome.IGNORED
        if self.is_failure is not None:
            return Outcome.FAILURE if self.is_failure(exc) else Outcome.SUCCESS
        return Outcome.FAILURE if isinstance(exc, self.expected_exceptions) else Outcome.SUCCESS

    @property
    def retry_after_cap(self) -> float:
        """The longest a ``Retry-After`` may hold the circuit open."""
        return self.max_retry_after if self.max_retry_after is not None else 10 * self.timeout

    def now(self) -> float:
        return (self.clock or time.monotonic)()

    def trips(self, window: SlidingWindow, now: float) -> bool:
        """Whether the calls in ``window`` open a CLOSED circuit."""
        if window.failures(now) >= self.failure_threshold:
            return True
        if self.failure_rate_threshold is None and self.slow_call_duration is None:
            return False
        totals = window.totals(now)
        if totals.calls < self.minimum_calls:
            return False
        if self.failure_rate_threshold is not None and totals.failure_rate >= self.failure_rate_threshold:
            return True
        return self.slow_call_duration is not None and totals.slow_rate >= self.slow_call_rate_threshold


PARAMETERS = frozenset(f.name for f in dataclasses.fields(BreakerConfig))


def build_config(defaults: Mapping[str, Any], explicit: Mapping[str, Any]) -> BreakerConfig:
    """The effective config: ``explicit`` over ``defaults`` over the seed's defaults."""
    unknown = sorted((set(defaults) | set(explicit)) - PARAMETERS)
    if unknown:
        raise TypeError(f"unknown circuit breaker parameter(s): {', '.join(unknown)}")
    values = {**defaults, **explicit}
    for name in ("expected_exceptions", "ignored_exceptions"):
        if isinstance(values.get(name), type):
            values[name] = (values[name],)
        elif isinstance(values.get(name), list):
            values[name] = tuple(values[name])
    return BreakerConfig(**values)


def validate_defaults(defaults: object) -> dict[str, Any]:
    """Check ``RESILIENCE_BREAKER_DEFAULTS`` (raises ValueError naming the problem)."""
    if not isinstance(defaults, Mapping):
        raise ValueError("expected a mapping of circuit breaker parameters")
    unknown = sorted(set(defaults) - PARAMETERS)
    if unknown:
        raise ValueError(f"unknown circuit breaker parameter(s): {', '.join(unknown)}")
    build_config(defaults, {})
    return dict(defaults)


def defaults_from_config(config: Config) -> dict[str, Any]:
    """``RESILIENCE_BREAKER_DEFAULTS`` checked against the breaker's
    parameters (the config table only knows it is a mapping); raises
    ValueError naming the key and the value."""
    defaults = config[BREAKER_DEFAULTS]
    try:
        return validate_defaults(defaults)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{BREAKER_DEFAULTS.key}={defaults!r} is invalid: {exc}") from None


def _at_least_one(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer of at least 1, got {value!r}")


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a number of seconds greater than 0, got {value!r}")


_ONE_HOUR = 3_600
_ONE_DAY = 86_400


def _seconds(name: str, value: object, limit: int) -> None:
    """A duration in seconds. Beyond ``limit`` it is almost surely the seed's
    milliseconds (timeout 60000, monitoringPeriod 10000, resetTimeout 300000)."""
    _positive(name, value)
    if isinstance(value, (int, float)) and value > limit:
        unit = "one hour" if limit == _ONE_HOUR else "one day"
        raise ValueError(
            f"{name}={value!r} is over {unit}: durations are in seconds, not milliseconds "
            f"(did you mean {name}={value / 1000:g}?)"
        )


def _percent(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 100:
        raise ValueError(f"{name} must be a percentage in (0, 100], got {value!r}")
