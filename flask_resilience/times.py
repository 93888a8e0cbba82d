"""Reading a moment an operator writes: ISO 8601 with any offset, or an age."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_AGE = re.compile(r"(\d{1,6})([dhms])")
_AGE_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def parse_moment(value: str, now: datetime) -> datetime:
    """``value`` as a naive UTC datetime; raises ValueError or OverflowError."""
    age = _AGE.fullmatch(value.strip())
    if age is not None:
        amount, unit = int(age.group(1)), age.group(2)
        moment = now - timedelta(**{_AGE_UNITS[unit]: amount})
    else:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.replace(tzinfo=None)
