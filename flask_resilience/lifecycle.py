"""Process lifecycle: background workers that belong to one process, and exit.

Every background service (the pub/sub listener, the write-behind queue, the
audit writer, lease renewal) is a :class:`ProcessLocalWorker`: its thread
starts lazily on first use in the process that uses it, so an app created
before gunicorn forks still works in every worker, and after a fork the
child starts afresh instead of believing it owns its parent's thread.

:func:`fork_generation` is the one fork detector: a counter bumped in every
forked child, cheaper than ``os.getpid()`` on every request (a system call,
and a slow one on some virtual machines) and just as exact.

:func:`install_signal_hook` is the one SIGTERM hook, installed for every
background service: the handler only sets a flag and wakes the workers (no
I/O: it may interrupt a request that holds a worker's lock), then lets the
process end as it would have: the previous handler runs (gunicorn's worker
finishes its request and exits), and where SIGTERM would have killed the
process outright it exits instead, so ``atexit`` stores what is pending.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import weakref
from collections.abc import Callable
from types import FrameType

logger = logging.getLogger("flask_resilience")

_generation = 0
_fork_callbacks: list[Callable[[], None]] = []
_terminating = False
_workers: weakref.WeakSet[ProcessLocalWorker] = weakref.WeakSet()


def _forked() -> None:
    global _generation, _terminating  # noqa: PLW0603 (one process-wide state is the point)
    _generation += 1
    _terminating = False
    for callback in list(_fork_callbacks):
        try:
            callback()
        except Exception:
            logger.exception("after-fork callback %r failed", callback)


def on_fork(callback: Callable[[], None]) -> None:
    """Run ``callback()`` in every forked child, right after the fork."""
    _fork_callbacks.append(callback)


os.register_at_fork(after_in_child=_forked)


def fork_generation() -> int:
    """Bumped in every forked child: per-process state compares the
    generation it was made in with this one."""
    return _generation


def terminating() -> bool:
    """Whether this process received SIGTERM (workers then finish promptly)."""
    return _terminating


class _ExitGuard:
    """``with no_exit:`` in the main thread: a SIGTERM that arrives inside
    exits only when the block ends (an entry half-way into the journal and
    the queue, a batch half-way into the database, is finished first)."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending: int | None = None

    def __enter__(self) -> None:
        if threading.get_ident() == _MAIN_THREAD:
            self.depth += 1

    def __exit__(self, *_exc: object) -> None:
        if threading.get_ident() == _MAIN_THREAD:
            self.depth -= 1
            if not self.depth and self.pending is not None:
                code, self.pending = self.pending, None
                raise SystemExit(code)


_MAIN_THREAD = threading.main_thread().ident
no_exit = _ExitGuard()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global _terminating  # noqa: PLW0603
    _terminating = True
    for worker in list(_workers):
        worker.wake_from_signal()
    previous = getattr(_on_sigterm, "previous", signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        # What SIGTERM would have done, except that atexit runs.
        if no_exit.depth:
            no_exit.pending = 128 + signum
        else:
            raise SystemExit(128 + signum)


def install_signal_hook() -> None:
    """Hook SIGTERM (once per process; only the main thread may)."""
    if threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGTERM)
    if current is _on_sigterm:
        return
    _on_sigterm.previous = current  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, _on_sigterm)


class _Wakeup:
    """An event a signal handler may set: it never blocks on a lock the
    interrupted code might hold."""

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._flag = False

    def set(self) -> None:
        with self._condition:
            self._flag = True
            self._condition.notify_all()

    def set_from_signal(self) -> None:
        self._flag = True  # seen by the next wait() even if the notify below is skipped
        # Held by the interrupted thread itself only inside set(), which notifies anyway.
        if self._condition.acquire(timeout=0.05):
            try:
                self._condition.notify_all()
            finally:
                self._condition.release()

    def wait(self, timeout: float | None) -> None:
        with self._condition:
            if not self._flag:
                self._condition.wait(timeout)
            self._flag = False


class ProcessLocalWorker:
    """One background thread per process, started on demand.

    Subclasses implement :meth:`run` (loop until :attr:`stopping`, sleeping in
    :meth:`wait`), may implement :meth:`flush` (drain synchronously; called by
    ``stop(flush=True)`` after the thread ended) and :meth:`reset_process`
    (forget state that belonged to the parent process; called before first
    use in each process). ``stop()`` is idempotent, and a worker used again
    after ``stop()`` starts again, so nothing submitted late is stranded.
    """

    daemon = True  # stop() flushes at shutdown and at exit, so a daemon loses nothing

    def __init__(self, name: str) -> None:
        self.name = name
        self._generation = _generation
        self._start_lock = threading.Lock()
        self._wake = _Wakeup()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._alive = False  # set before the thread starts, cleared when it ends: no lock to read
        _workers.add(self)

    # -- for subclasses ------------------------------------------------------------

    def run(self) -> None:
        """The thread's body: loop until :attr:`stopping`."""
        raise NotImplementedError

    def flush(self) -> None:
        """Finish pending work in the calling thread (default: nothing)."""

    def reset_process(self) -> None:
        """Forget per-process state inherited from a parent (default: nothing)."""

    def wants_thread(self) -> bool:
        """Whether :meth:`ensure_running` should start the thread now."""
        return True

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def wait(self, timeout: float | None) -> bool:
        """Sleep up to ``timeout`` seconds or until woken; True when stopping."""
        if self._stopping.is_set():
            return True
        self._wake.wait(timeout)
        return self._stopping.is_set()

    # -- for callers -----------------------------------------------------------------

    def in_this_process(self) -> None:
        """Reset inherited state once in a new process (cheap; call before use)."""
        if self._generation != _generation:
            # New locks and events: the parent's may have been held by a thread
            # that does not exist here.
            self._start_lock = threading.Lock()
            self._wake = _Wakeup()
            self._stopping = threading.Event()
            self._thread = None
            self._alive = False
            self.reset_process()
            self._generation = _generation

    def ensure_running(self) -> None:
        """Start this process's thread unless it runs or is not wanted yet."""
        self.in_this_process()
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        if not self.wants_thread():
            return
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._stopping.clear()
                self._thread = threading.Thread(target=self._main, name=self.name, daemon=self.daemon)
                self._alive = True
                self._thread.start()

    def is_running(self) -> bool:
        """Whether this process's thread runs (cheap: for every request)."""
        return self._alive and self._generation == _generation

    def wake(self) -> None:
        self._wake.set()

    def wake_from_signal(self) -> None:
        """:meth:`wake` for a signal handler (never blocks)."""
        self._wake.set_from_signal()

    def stop(self, flush: bool = True, timeout: float = 30.0) -> None:
        """Stop the thread (waiting up to ``timeout`` s), then flush what is left."""
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if (
            thread is not None
            and thread.is_alive()
            and self._generation == _generation
            and thread is not threading.current_thread()
        ):
            thread.join(timeout)
        self._thread = None
        self._alive = False
        if flush:
            self.flush()

    def _main(self) -> None:
        try:
            self.run()
        except Exception:
            logger.exception("background worker %s stopped on an error", self.name)
        finally:
            if self._thread is threading.current_thread():
                self._alive = False
