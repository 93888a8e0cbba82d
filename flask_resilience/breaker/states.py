"""A circuit's states, the error a refused call raises, and a trial permit."""

from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING

from ..signals import circuit_state_changed

logger = logging.getLogger("flask_resilience.breaker")


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


class OperatorControls:
    """The transitions an operator makes by hand, mixed into the breaker.

    Each returns True when every process will see the change, False when
    shared storage could not be reached: then it holds in this process only,
    until the shared state is read again.
    """

    def _set_operator_state(self, new: State) -> bool:
        raise NotImplementedError

    def force_open(self) -> bool:
        """Reject every call until ``reset()`` (FORCED_OPEN)."""
        return self._set_operator_state(State.FORCED_OPEN)

    def disable(self) -> bool:
        """Let every call through and record nothing (DISABLED)."""
        return self._set_operator_state(State.DISABLED)

    def metrics_only(self) -> bool:
        """Let every call through, record it, never trip (METRICS_ONLY)."""
        return self._set_operator_state(State.METRICS_ONLY)

    def reset(self) -> bool:
        """Back to CLOSED with an empty window and zeroed statistics."""
        return self._set_operator_state(State.CLOSED)

    def set_state(self, state: State | str) -> bool:
        """Operator transition by name: CLOSED, FORCED_OPEN, DISABLED or METRICS_ONLY."""
        actions = {
            State.CLOSED: self.reset,
            State.FORCED_OPEN: self.force_open,
            State.DISABLED: self.disable,
            State.METRICS_ONLY: self.metrics_only,
        }
        try:
            action = actions[State(state)]
        except (ValueError, KeyError):
            raise ValueError(
                f"cannot set a circuit to {state!r}; use one of {', '.join(s.value for s in actions)}"
            ) from None
        return action()


class Trial:
    """A HALF_OPEN trial permit."""

    __slots__ = ("shared", "token")

    def __init__(self, token: str, shared: bool) -> None:
        self.token = token
        self.shared = shared


def announce(circuit: object, name: str, changes: list[tuple[State, State]], source: str) -> None:
    """Log and signal a circuit's state changes (made under its lock, announced after)."""
    for old, new in changes:
        if old is new:
            continue
        level = logging.WARNING if new in (State.OPEN, State.FORCED_OPEN) else logging.INFO
        logger.log(level, "circuit %r: %s -> %s (%s)", name, old.value, new.value, source)
        circuit_state_changed.send(circuit, name=name, old=old, new=new, source=source)
