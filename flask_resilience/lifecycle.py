"""Process lifecycle: background workers that belong to one process, and exit.

Every background service (the pub/sub listener, the write-behind queue, the
audit writer, lease renewal) is a :class:`ProcessLocalWorker`: its thread
starts lazily on first use in the process that uses it, so an app created
before gunicorn forks still works in every worker, and after a fork the
child starts afresh instead of believing it owns its parent's thread.

:func:`fork_generation` is the one fork detector: a counter bumped in every
forked child, cheaper than ``os.getpid()`` on every request (a system call,
and a slow one on some virtual machines) and just as exact.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

logger = logging.getLogger("flask_resilience")

_generation = 0
_fork_callbacks: list[Callable[[], None]] = []


def _forked() -> None:
    global _generation  # noqa: PLW0603 (one process-wide counter is the point)
    _generation += 1
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
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

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
        if self._wake.wait(timeout):
            self._wake.clear()
        return self._stopping.is_set()

    # -- for callers -----------------------------------------------------------------

    def in_this_process(self) -> None:
        """Reset inherited state once in a new process (cheap; call before use)."""
        if self._generation != _generation:
            # New locks and events: the parent's may have been held by a thread
            # that does not exist here.
            self._start_lock = threading.Lock()
            self._wake = threading.Event()
            self._stopping = threading.Event()
            self._thread = None
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
                self._thread.start()

    def is_running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive() and self._generation == _generation

    def wake(self) -> None:
        self._wake.set()

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
        if flush:
            self.flush()

    def _main(self) -> None:
        try:
            self.run()
        except Exception:
            logger.exception("background worker %s stopped on an error", self.name)
