"""Reading a moment an operator writes: ISO 8601 with any offset, or an age."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_AGE = re.compile(r"(\d{1,6})([dhms])")
_AGE_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
# A time followed by a space and an offset: a "+05:00" typed unencoded in a
# URL, whose "+" query decoding turned into a space.
_SPACE_FOR_PLUS = re.compile(r"(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}(?::?\d{2})?)")


def parse_moment(value: str, now: datetime) -> datetime:
    """``value`` as a naive UTC datetime; raises ValueError or OverflowError."""
    age = _AGE.fullmatch(value.strip())
    if age is not None:
        amount, unit = int(age.group(1)), age.group(2)
        moment = now - timedelta(**{_AGE_UNITS[unit]: amount})
    else:
        moment = _from_iso(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.replace(tzinfo=None)


def _from_iso(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        lost_plus = _SPACE_FOR_PLUS.fullmatch(text)
        if lost_plus is None:
            raise
        return datetime.fromisoformat(f"{lost_plus.group(1)}+{lost_plus.group(2)}")
