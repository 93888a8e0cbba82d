"""Storage the features share: in-process memory, Redis, SQL."""

from .memory import MemoryStats, MemoryStore
from .redis import RedisStore, StoreUnavailableError

__all__ = ["MemoryStats", "MemoryStore", "RedisStore", "StoreUnavailableError"]
