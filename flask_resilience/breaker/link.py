"""The seam between a breaker and the circuit state it may share.

A breaker holds one :class:`Link`, picked once when ``init_app`` configures
the registry: :data:`LOCAL_LINK` (nothing shared: every method says "decide
locally") or a Redis link from ``shared.py``. The breaker asks its link at the
few moments a shared circuit needs Redis (a refusal looked at closely, a
failure, an operator change) and never branches on which kind it holds; the
link mirrors decisions back through the :class:`Mirror` methods. Neither
``breaker.py`` nor ``shared.py`` imports the other: both import this module.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .config import BreakerConfig, Outcome
from .states import State


class Admission(enum.Enum):
    """What shared storage decided about a call that needed a closer look."""

    REFUSED = enum.auto()
    PASS = enum.auto()  # an ordinary call: the circuit is (again) closed
    TRIAL = enum.auto()  # a HALF_OPEN trial holding ``token``


@dataclass(frozen=True, slots=True)
class Decision:
    admission: Admission
    token: str
    state: State
    retry_after: float | None


class Mirror(Protocol):
    """What a link sees of its breaker."""

    name: str

    @property
    def config(self) -> BreakerConfig: ...

    def adopt(self, state: State, until: float, fresh: Callable[[], bool], source: str = "shared") -> None:
        """Take on a state decided in shared storage, if ``fresh()`` (asked under
        the breaker's lock) says it is not older than one already taken.
        ``source`` is ``"local"`` when this process's own call decided it."""

    def mark_stale(self) -> None:
        """Read the shared state again before the next call."""

    def count_storage_error(self) -> None: ...


class Link(Protocol):
    """How one breaker reaches its shared state. Each method that may fail
    returns None/False when the breaker must decide locally instead."""

    storage: str
    wall_clock: bool  # shared circuits compare times across hosts

    def sync(self) -> bool:
        """Mirror the stored state (a new process, a lost message); False
        when storage did not answer."""

    def admit(self, now: float) -> Decision | None:
        """Admission for an OPEN circuit past its deadline or a HALF_OPEN one."""

    def record(self, now: float, outcome: Outcome, slow: bool, bad: bool, hold: float | None) -> bool:
        """Count an ordinary call; True when the shared side took the decision."""

    def finish_trial(self, token: str, now: float, outcome: Outcome, bad: bool, hold: float | None) -> bool:
        """Let a shared trial's outcome decide; True when storage decided."""

    def set_state(self, state: State, now: float) -> bool:
        """Store an operator's transition for every process; False when
        storage failed (the change holds in this process only)."""


class _LocalLink:
    """Nothing is shared: the breaker decides everything in this process."""

    storage = "local"
    wall_clock = False

    def sync(self) -> bool:
        return True

    def admit(self, now: float) -> Decision | None:
        return None

    def record(self, now: float, outcome: Outcome, slow: bool, bad: bool, hold: float | None) -> bool:
        return False

    def finish_trial(self, token: str, now: float, outcome: Outcome, bad: bool, hold: float | None) -> bool:
        return False

    def set_state(self, state: State, now: float) -> bool:
        return True


LOCAL_LINK: Link = _LocalLink()


class Sharing(Protocol):
    """Where an app's breakers share their state; one per registry."""

    location: str  # what a second app must match to share the same breakers

    def link(self, breaker: Mirror) -> Link: ...

    def listen(self) -> None:
        """Start mirroring changes other processes publish."""

    def mark_all_stale(self) -> None: ...


class LocalSharing:
    location = "local"

    def link(self, breaker: Mirror) -> Link:
        return LOCAL_LINK

    def listen(self) -> None:
        return None

    def mark_all_stale(self) -> None:
        return None
