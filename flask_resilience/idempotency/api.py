"""The seed's replay-protection functions, as thin calls on the current app."""

from __future__ import annotations

from .service import AppIdempotency, IdempotencyStats


def invalidate_idempotency_key(key: str, user_id: str | int | None = None) -> int:
    """Forget ``key`` (for one user, or for everyone), in the store and every
    process's memory layer; returns how many records were removed."""
    return AppIdempotency.of().invalidate(key, None if user_id is None else str(user_id))


def clear_all_idempotency_keys() -> int:
    return AppIdempotency.of().clear()


def get_replay_protection_stats() -> IdempotencyStats:
    """Requests, first executions, replays, replay rate, conflicts, mismatches,
    store errors, per endpoint, memory entries."""
    return AppIdempotency.of().stats()


def reset_replay_protection_stats() -> None:
    AppIdempotency.of().reset_stats()
