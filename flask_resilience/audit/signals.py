"""Flush on SIGTERM, so a stopped process does not lose buffered entries.

gunicorn installs its own SIGTERM handling in workers and exits them
gracefully (so ``atexit`` flushes there); this handler covers plain
processes, where the default SIGTERM would kill without running ``atexit``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

logger = logging.getLogger("flask_resilience.audit")

_shutdowns: list[Callable[[], None]] = []
_lock = threading.Lock()


def install_sigterm_flush(shutdown: Callable[[], None]) -> None:
    """Run ``shutdown()`` on SIGTERM, then whatever SIGTERM did before.

    Only from the main thread (Python allows signal handlers nowhere else).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    with _lock:
        if shutdown not in _shutdowns:
            _shutdowns.append(shutdown)
        current = signal.getsignal(signal.SIGTERM)
        if getattr(current, "_flask_resilience", False):
            return
        previous = current

        def handler(signum: int, frame: FrameType | None) -> None:
            for flush in list(_shutdowns):
                try:
                    flush()
                except Exception:
                    logger.exception("flush on SIGTERM failed")
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)

        handler._flask_resilience = True  # type: ignore[attr-defined]
        signal.signal(signal.SIGTERM, handler)
