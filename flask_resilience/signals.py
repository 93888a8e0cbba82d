"""Blinker signals for state changes, so apps can log, alert or audit them."""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

circuit_state_changed = _signals.signal("circuit-state-changed")
"""Sent with the breaker as sender and ``name``, ``old``, ``new`` (``State``)
and ``source`` (``"local"``, or ``"shared"`` when another process decided it)."""

idempotency_conflict = _signals.signal("idempotency-conflict")
"""Sent with the app as sender when a duplicate arrives while the first
request with its key still runs (answered 409), with ``endpoint``,
``status`` and ``principal`` (the scope key, or None when anonymous)."""

idempotency_mismatch = _signals.signal("idempotency-mismatch")
"""Sent with the app as sender when a key is reused with a different request
(answered 422), with ``endpoint``, ``status`` and ``principal``."""
