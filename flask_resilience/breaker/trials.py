"""HALF_OPEN trial permits held in this process."""

from __future__ import annotations

import uuid


class Trials:
    """Leases on trial permits, each lapsing ``lease`` seconds after it was
    taken so a hung trial cannot wedge the circuit, and the successful trials
    counted towards closing. Used under the breaker's lock."""

    def __init__(self) -> None:
        self.leases: dict[str, float] = {}
        self.successes = 0

    def __len__(self) -> int:
        return len(self.leases)

    def hold(self, token: str, until: float) -> None:
        self.leases[token] = until

    def take(self, now: float, limit: int, lease: float) -> str | float:
        """A new permit's token, or, when ``limit`` permits are out, the
        seconds until the first of them lapses."""
        for token, expires in list(self.leases.items()):
            if expires <= now:  # a hung trial gives its permit back
                del self.leases[token]
        if len(self.leases) >= limit:
            # A float even with a clock of whole seconds: the caller tells a
            # refusal from a token by its type.
            return float(max(0.0, min(self.leases.values()) - now))
        token = uuid.uuid4().hex
        self.leases[token] = now + lease
        return token

    def give_back(self, token: str) -> bool:
        """Whether ``token`` still held its permit (its result still decides)."""
        return self.leases.pop(token, None) is not None
