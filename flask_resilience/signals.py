"""Blinker signals for state changes, so apps can log, alert or audit them."""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

circuit_state_changed = _signals.signal("circuit-state-changed")
"""Sent with the breaker as sender and ``name``, ``old``, ``new`` (``State``)
and ``source`` (``"local"``, or ``"shared"`` when another process decided it)."""
