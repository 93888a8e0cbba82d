"""Redaction applied to every entry before it is buffered.

Sensitive keys are masked at any depth of dicts and lists; card numbers that
pass the Luhn check and bearer tokens / JWTs are masked inside any string;
CR and LF are escaped so an entry cannot forge log lines; an app callable
may redact further.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

from .storable import clean

MASK = "[REDACTED]"

SENSITIVE_KEYS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "secret",
        "client_secret",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "authorization",
        "cookie",
        "set_cookie",
        "api_key",
        "apikey",
        "x_api_key",
        "private_key",
        "card_number",
        "cardnumber",
        "pan",
        "cvv",
        "cvc",
        "ssn",
        "session",
    }
)

# A run of digits (spaces or single dashes between them) that may hold a card
# number; not part of a longer word: no letter or digit of any script right
# before or after it, nor one joined to it by a dash (a UUID's groups). The
# digits inside a hash or a hex id are not a card, and masking them would
# alter the record (a purge anchor's hash once was).
_DIGIT_RUN = re.compile(r"(?<![^\W_])(?<![^\W_]-)\d(?:[ -]?\d){12,}(?![^\W_])(?!-[^\W_])")
_GROUP = re.compile(r"\d+")
# Runs of more groups than a card and a number or two around it (4-4-4-4-3
# with a quantity each side) are lists: cards in them are looked for run by run.
_MAX_GROUPS = 8
_CARD_IN_LIST = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}")


@functools.lru_cache(maxsize=4096)
def normalise_key(key: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", key.lower()).strip("_")


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        number = int(char)
        if index % 2 == 1:
            number *= 2
            if number > 9:
                number -= 9
        total += number
    return total % 10 == 0


def _mask_card(match: re.Match[str]) -> str:
    run = match.group(0)
    if run.count(" ") + run.count("-") >= _MAX_GROUPS:  # a list of numbers: cards are looked for as they come
        return _CARD_IN_LIST.sub(_mask_whole, run)
    return _mask_groups(run, [(found.start(), found.end(), found.group()) for found in _GROUP.finditer(run)])


def _mask_whole(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return f"[CARD ****{digits[-4:]}]" if luhn_valid(digits) else match.group(0)


def _mask_groups(run: str, groups: list[tuple[int, int, str]]) -> str:
    """Mask the card numbers among a few digit groups: spans of whole groups
    with 13 to 19 digits that pass the Luhn check, the longest first (so a
    quantity before or after a card does not hide it)."""
    cards = []
    for first in range(len(groups)):
        digits = ""
        for last in range(first, len(groups)):
            digits += groups[last][2]
            if len(digits) > 19:
                break
            if len(digits) >= 13 and luhn_valid(digits):
                cards.append((len(digits), first, last, digits))
    taken: list[tuple[int, int, str]] = []
    for _, first, last, digits in sorted(cards, key=lambda card: (-card[0], card[1])):
        if all(last < other[0] or first > other[1] for other in taken):
            taken.append((first, last, digits))
    pieces, position = [], 0
    for first, last, digits in sorted(taken):
        pieces += [run[position : groups[first][0]], f"[CARD ****{digits[-4:]}]"]
        position = groups[last][1]
    return "".join(pieces) + run[position:]


class Redactor:
    def __init__(
        self,
        extra_keys: Iterable[str] = (),
        hook: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        max_text: int = 10_000,
    ) -> None:
        self.keys = SENSITIVE_KEYS | {normalise_key(key) for key in extra_keys}
        self.hook = hook
        self.max_text = max_text
        # Per string key: its stored form and whether its value is masked
        # (the same few keys come back in every entry).
        self._key_plans: dict[str, tuple[str, bool]] = {}

    def text(self, value: str) -> str:
        """Mask secrets inside a string and escape CR/LF."""
        if len(value) < 7:  # too short for a token, a JWT or a card number
            if "\r" in value or "\n" in value:
                return value.replace("\r", "\\r").replace("\n", "\\n")
            return value
        # Cheap substring tests first: most strings hold none of these.
        if "eyJ" in value:
            value = _JWT.sub(MASK, value)
        lowered = value.lower()
        if "bearer" in lowered or "basic" in lowered:
            value = _BEARER.sub(lambda match: f"{match.group(1)} {MASK}", value)
        if len(value) >= 13:
            value = _DIGIT_RUN.sub(_mask_card, value)
        if "\r" in value or "\n" in value:
            value = value.replace("\r", "\\r").replace("\n", "\\n")
        if len(value) > self.max_text:
            value = value[: self.max_text] + f"...[truncated {len(value) - self.max_text} chars]"
        return value

    def value(self, value: Any, depth: int = 0) -> Any:
        """Redact a JSON-like value (dicts, lists, strings, numbers), made
        storable as JSON: lone surrogates (MariaDB's JSON_VALID refuses them)
        and NaN/Infinity (PostgreSQL's json refuses them) become text."""
        if depth > 32:
            return "[TOO DEEP]"
        kind = value.__class__  # the common exact types first, without isinstance chains
        if kind is str:
            return clean(self.text(value))
        if kind is int:
            return value if -(10**12) < value < 10**12 else self.text(str(value))
        if kind is bool or value is None:
            return value
        if kind is dict or isinstance(value, dict):
            redacted = {}
            plans = self._key_plans
            for key, item in value.items():
                plan = plans.get(key) if key.__class__ is str else None
                if plan is None:
                    plan = self._key_plan(key)
                redacted[plan[0]] = MASK if plan[1] else self.value(item, depth + 1)
            return redacted
        if isinstance(value, (list, tuple)):
            return [self.value(item, depth + 1) for item in value]
        if isinstance(value, str):
            return clean(self.text(value))
        if isinstance(value, float) and not math.isfinite(value):
            return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
        if value is None or isinstance(value, (bool, int, float)):
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**12:
                return self.text(str(value))  # a card number sent as a JSON number
            return value
        return self.text(repr(value))

    def _key_plan(self, key: Any) -> tuple[str, bool]:
        text = str(key)
        plan = (clean(text), normalise_key(text) in self.keys)
        if key.__class__ is str and len(self._key_plans) < 4096:
            self._key_plans[key] = plan
        return plan

    def fields(self, data: dict[str, Any]) -> dict[str, Any]:
        """Redact an entry's fields: structured ones deeply, text ones as text."""
        redacted = {}
        for name, item in data.items():
            if name in ("changes", "details") and item is not None:
                redacted[name] = self.value(item)
            elif isinstance(item, str) and name not in ("id", "event_type", "status", "severity"):
                redacted[name] = self.text(item)
            else:
                redacted[name] = item
        if self.hook is not None:
            redacted = self.hook(redacted)
        return redacted
