"""A completed request's stored response, replayed byte for byte and marked
as a replay (``X-Idempotency-Replayed``, ``X-Original-Timestamp``)."""

from __future__ import annotations

import functools
import weakref
from datetime import UTC, datetime

from flask import Response
from werkzeug.datastructures import Headers

from .protocol import Completed


def replay(record: Completed, header: str, key: str, *, reused: bool = False) -> Response:
    """The stored response, byte for byte, marked as a replay.

    ``reused``: the record is the memory layer's, replayed again and again:
    its headers are built and checked once, then copied for each replay.
    """
    stored = record.response
    built = _built.get(id(record)) if reused else None
    if built is None or built[0]() is not record or built[1] != header or built[2] != key:
        headers = Headers(_replay_headers(record, header, key))  # checks every value once
        if not reused:
            return Response(stored.body, status=stored.status, headers=headers)
        if len(_built) >= 1024:
            _built.clear()
        built = _built[id(record)] = (weakref.ref(record), header, key, headers)
    headers = Headers()
    headers._list = built[3]._list.copy()  # checked values, in werkzeug's own storage
    return Response(stored.body, status=stored.status, headers=headers)


# id(record) -> (the record, weakly; header; key; its replay headers, checked)
_built: dict[int, tuple[weakref.ref[Completed], str, str, Headers]] = {}


def _replay_headers(record: Completed, header: str, key: str) -> list[tuple[str, str]]:
    stored = record.response
    replaced = _replaced(header)
    return [
        *((name, value) for name, value in stored.headers if name.lower() not in replaced),
        (header, key),
        ("X-Idempotency-Replayed", "true"),
        ("X-Original-Timestamp", _timestamp(stored.created_at)),
    ]


@functools.lru_cache(maxsize=16)
def _replaced(header: str) -> frozenset[str]:
    """The headers a replay sets (any stored ones of those names are dropped)."""
    return frozenset({header.lower(), "x-idempotency-replayed", "x-original-timestamp"})


@functools.lru_cache(maxsize=256)
def _timestamp(created_at: float) -> str:
    """ISO 8601 in UTC; cached, as hot keys replay the same record many times."""
    return datetime.fromtimestamp(created_at, UTC).isoformat().replace("+00:00", "Z")
