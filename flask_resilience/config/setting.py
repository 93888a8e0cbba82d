"""A configuration key (:class:`Setting`) and an app's parsed values (:class:`Config`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One configuration key."""

    key: str
    default: T
    parse: Callable[[object], T]
    doc: str
    env: str | None = None

    @property
    def option(self) -> str:
        """The keyword accepted by ``Resilience(...)`` for this key."""
        return self.key.removeprefix("RESILIENCE_").lower()


class Config:
    """The parsed, validated configuration of one app; read-only."""

    def __init__(self, values: Mapping[str, object]) -> None:
        self._values = dict(values)

    def __getitem__(self, setting: Setting[T]) -> T:
        value: T = self._values[setting.key]  # type: ignore[assignment]
        return value
