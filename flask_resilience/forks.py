"""Which process generation this is: a counter bumped in every forked child.

Cheaper than comparing ``os.getpid()`` on every request (a system call, and
a slow one on some virtual machines), and just as exact: per-process state
(listener threads, queues, engines) compares the generation it was made in.
"""

from __future__ import annotations

import os

_generation = 0


def _forked() -> None:
    global _generation  # noqa: PLW0603 (one process-wide counter is the point)
    _generation += 1


os.register_at_fork(after_in_child=_forked)


def generation() -> int:
    return _generation
