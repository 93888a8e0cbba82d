"""A circuit's states, the error a refused call raises, and a trial permit."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING


class State(enum.StrEnum):
    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"
    FORCED_OPEN = "FORCED_OPEN"
    DISABLED = "DISABLED"
    METRICS_ONLY = "METRICS_ONLY"


PASS_THROUGH = frozenset({State.CLOSED, State.DISABLED, State.METRICS_ONLY})
"""States that admit every call without a permit."""


class CircuitOpenError(Exception):
    """The breaker refused the call. ``retry_after`` is in seconds, or None
    when the circuit is held open by an operator."""

    # No __init__ of its own: BaseException's C constructor keeps the three
    # values in ``args``, which makes a rejection several times cheaper.
    args: tuple[str, State, float | None]

    if TYPE_CHECKING:

        def __init__(self, name: str, state: State, retry_after: float | None) -> None: ...

    @property
    def name(self) -> str:
        return self.args[0]

    @property
    def state(self) -> State:
        return self.args[1]

    @property
    def retry_after(self) -> float | None:
        return self.args[2]

    def __str__(self) -> str:
        # Built when read, not when raised: rejections must stay cheap.
        when = "" if self.retry_after is None else f"; retry after {self.retry_after:.1f} s"
        return f"circuit {self.name!r} is {self.state.value}{when}"


class Trial:
    """A HALF_OPEN trial permit."""

    __slots__ = ("shared", "token")

    def __init__(self, token: str, shared: bool) -> None:
        self.token = token
        self.shared = shared
