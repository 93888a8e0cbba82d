"""The ways to put code under a breaker, all built on ``acquire()``/``release()``:
``await breaker.call_async(fn)``, ``with``/``async with breaker:``, and the
decorator for functions, coroutines and (async) generators.

A generator is admitted when it is created (so an open circuit refuses it at
once) and its outcome is recorded when iteration ends: exhausted is a
success, an exception raised inside it counts as the breaker's config says,
and a generator closed early (``GeneratorExit``) is a cancellation. One that
is created and never iterated holds a HALF_OPEN trial until the trial's lease
lapses.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, ParamSpec, Self, TypeVar, cast

from .config import BreakerConfig, Outcome
from .states import CircuitOpenError, State, Trial

if TYPE_CHECKING:
    from ..histograms import Timings

# On the lock-free path (CLOSED, count-based rules) the call after every
# SAMPLE-th success is timed and stands for SAMPLE calls in the duration
# histogram (an estimate: racing threads may each take the sample); two clock
# reads on every call would nearly double that path's cost. Failures there
# are not timed. Calls on every other path are each timed.
SAMPLE = 32
_SAMPLE_MASK = SAMPLE - 1  # a power of two: a mask is cheaper than %

if TYPE_CHECKING:
    from types import TracebackType

P = ParamSpec("P")
R = TypeVar("R")
Y = TypeVar("Y")
S = TypeVar("S")


class Protection:
    """Mixed into :class:`~.breaker.CircuitBreaker`: every way to call through it."""

    if TYPE_CHECKING:
        _fast: bool
        _config: BreakerConfig
        _clock: Callable[[], float]
        _active: contextvars.ContextVar[tuple[tuple[Trial | None, float], ...]]

        @property
        def config(self) -> BreakerConfig: ...
        def now(self) -> float: ...
        def acquire(self) -> Trial | None: ...
        def release(
            self,
            trial: Trial | None,
            started: float,
            outcome: Outcome,
            *,
            hold_open: float | None = None,
            timed: bool = True,
        ) -> None: ...
        def _admit(self) -> Trial | tuple[str, State, float | None] | None: ...

        _count_fast_success: Callable[[], int]
        _sample_next: bool
        durations: Timings

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` under the breaker.

        Raises :class:`CircuitOpenError` when rejected, unless a ``fallback``
        is configured, whose result is returned instead.
        """
        if self._fast:
            # CLOSED with count-based rules only: a success changes nothing but
            # a counter, so it takes no lock and (but for the timed sample) reads no clock.
            if self._sample_next:
                return self._timed_fast_call(fn, *args, **kwargs)
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                self._fast_failure(exc)
                raise
            if not self._count_fast_success() & _SAMPLE_MASK:
                self._sample_next = True
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
            self.release(trial, started, self.error_outcome(exc))
            raise
        self.release(trial, started, self.result_outcome(result))
        return result

    def _timed_fast_call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """The lock-free path's timed sample: its duration stands for SAMPLE calls."""
        self._sample_next = False
        began = perf_counter_ns()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self.durations.observe_sample(perf_counter_ns() - began, SAMPLE)
            self._fast_failure(exc)
            raise
        self.durations.observe_sample(perf_counter_ns() - began, SAMPLE)
        self._count_fast_success()
        return result

    def _fast_failure(self, exc: BaseException) -> None:
        now = self._clock()
        self.release(None, now, self.error_outcome(exc), timed=False)

    def error_outcome(self, exc: BaseException) -> Outcome:
        """How an exception caught right where ``fn`` was called counts.

        A TypeError whose traceback stops at the calling frame was raised by
        the call itself (wrong arguments), before ``fn`` ran: the caller's
        mistake, never a failure of the remote side.
        """
        traceback = exc.__traceback__
        if isinstance(exc, TypeError) and traceback is not None and traceback.tb_next is None:
            return Outcome.IGNORED
        return self._config.classify(exc)

    def result_outcome(self, result: object) -> Outcome:
        predicate = self._config.result_is_failure
        return Outcome.FAILURE if predicate is not None and predicate(result) else Outcome.SUCCESS

    async def call_async(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """``await fn(*args, **kwargs)`` under the breaker; see ``call``."""
        try:
            trial = self.acquire()
        except CircuitOpenError:
            fallback = self.config.fallback
            if fallback is None:
                raise
            result = fallback(*args, **kwargs)
            return cast(R, await result if inspect.isawaitable(result) else result)
        started = self.now()
        try:
            value = await fn(*args, **kwargs)
        except BaseException as exc:
            self.release(trial, started, self.error_outcome(exc))
            raise
        self.release(trial, started, self.result_outcome(value))
        return value

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Use the breaker as a decorator on a function, an ``async def``
        function, or a (sync or async) generator function."""
        if inspect.isasyncgenfunction(fn):
            return cast(Callable[P, R], self._async_generator_wrapper(fn))
        if inspect.isgeneratorfunction(fn):
            return cast(Callable[P, R], self._generator_wrapper(fn))
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await self.call_async(fn, *args, **kwargs)

            return cast(Callable[P, R], async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if self._fast:  # call()'s lock-free path, inlined: decorators are the common use
                if self._sample_next:
                    return self._timed_fast_call(fn, *args, **kwargs)
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    self._fast_failure(exc)
                    raise
                if not self._count_fast_success() & _SAMPLE_MASK:
                    self._sample_next = True
                return result
            return self.call(fn, *args, **kwargs)

        return wrapper

    def _admit_iteration(self, make: Callable[[], Y]) -> tuple[Y, Trial | None, float]:
        trial = self.acquire()
        started = self.now()
        try:
            iterator = make()
        except BaseException:  # wrong arguments: not the remote side's doing
            self.release(trial, started, Outcome.IGNORED)
            raise
        return iterator, trial, started

    def _generator_wrapper(self, fn: Callable[P, Generator[Y, S, R]]) -> Callable[P, Generator[Y, S, R]]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Generator[Y, S, R]:
            generator, trial, started = self._admit_iteration(lambda: fn(*args, **kwargs))
            return self._guard(generator, trial, started)

        return wrapper

    def _guard(
        self, generator: Generator[Y, S, R], trial: Trial | None, started: float
    ) -> Generator[Y, S, R]:
        try:
            result = yield from generator
        except BaseException as exc:
            self.release(trial, started, self.config.classify(exc))
            raise
        self.release(trial, started, self.result_outcome(result))
        return result

    def _async_generator_wrapper(
        self, fn: Callable[P, AsyncGenerator[Y, S]]
    ) -> Callable[P, AsyncGenerator[Y, S]]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> AsyncGenerator[Y, S]:
            generator, trial, started = self._admit_iteration(lambda: fn(*args, **kwargs))
            return self._guard_async(generator, trial, started)

        return wrapper

    async def _guard_async(
        self, generator: AsyncGenerator[Y, S], trial: Trial | None, started: float
    ) -> AsyncGenerator[Y, S]:
        try:
            item = await anext(generator)
            while True:
                try:
                    sent = yield item
                except GeneratorExit:
                    await generator.aclose()
                    raise
                except BaseException as thrown:  # athrow() from the consumer: pass it in
                    item = await generator.athrow(thrown)
                else:
                    item = await generator.asend(sent)
        except StopAsyncIteration:
            self.release(trial, started, Outcome.SUCCESS)
        except BaseException as exc:
            self.release(trial, started, self.config.classify(exc))
            raise

    def __enter__(self) -> Self:
        trial = self.acquire()
        self._active.set((*self._active.get(), (trial, self.now())))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        *rest, (trial, started) = self._active.get()
        self._active.set(tuple(rest))
        self.release(trial, started, Outcome.SUCCESS if exc is None else self.config.classify(exc))

    async def __aenter__(self) -> Self:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)
