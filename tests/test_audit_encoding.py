"""The fast encoders on the audit path write exactly the bytes of the plain ``json`` calls.

``chain.canonical`` runs a C encoder built once, and the COPY path a JSON
encoder built once; the chain's hashes (and so every stored log) depend on
these bytes, so they are checked against the reference calls over arbitrary
values, not just a vector.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from flask_resilience.audit.chain import HASHED, canonical
from flask_resilience.audit.store import copy_values
from flask_resilience.audit.table import audit_log

_COLUMNS = [column.name for column in audit_log.columns]

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()  # lone surrogates included: escaped the same way
    | st.builds(Decimal, st.integers())  # not JSON: default=str
    | st.builds(uuid.UUID, st.uuids().map(str))
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_times = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30)) | st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
).map(lambda moment: moment.astimezone(timezone(timedelta(hours=5, minutes=30))))


def _reference_stamp(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat()
    return value


def _reference_canonical(row: dict[str, Any]) -> bytes:
    values = [_reference_stamp(row[name]) if name.endswith("_at") else row[name] for name in HASHED]
    return json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str).encode()


@settings(max_examples=200, deadline=None)
@given(
    values=st.fixed_dictionaries({name: _json for name in HASHED if not name.endswith("_at")}),
    occurred_at=_times,
    logged_at=_times | st.none(),
)
def test_canonical_is_the_reference_json_dumps(
    values: dict[str, Any], occurred_at: datetime, logged_at: datetime | None
) -> None:
    row = {**values, "occurred_at": occurred_at, "logged_at": logged_at, "prev_hash": "0" * 64}
    assert canonical(row) == _reference_canonical(row)


@settings(max_examples=150, deadline=None)
@given(changes=_json, details=_json, text=st.text())
def test_copy_values_are_the_columns_with_json_dumped_fields(changes: Any, details: Any, text: str) -> None:
    row: dict[str, Any] = dict.fromkeys(_COLUMNS, text)
    row.update(changes=changes, details=details, seq=3, http_status=None)
    expected = [row[name] for name in _COLUMNS]
    for name in ("changes", "details"):
        index = _COLUMNS.index(name)
        expected[index] = None if row[name] is None else json.dumps(row[name], default=str)
    assert copy_values(row) == expected
