"""The idempotency-key protocol, without a web framework.

What a request's key is, where its record lives, what its fingerprint
covers, what to do with a key that already has a record, and whether a
finished request's response is kept. The Flask glue (``views.py``) maps
these decisions to responses; nothing here imports Flask.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote_plus

if TYPE_CHECKING:
    from ..responses import StoredResponse

_PRINTABLE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?")
_SF_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\\"])*)"')

ON_ERROR_CHOICES = ("store", "release")
FINGERPRINT_CHOICES = ("raw", "json")
# Answers that say the view refused to act (and the client should retry as
# is); everything else the view answers is the key's outcome.
RELEASED_STATUSES = frozenset({409, 429})


class InvalidKey(ValueError):
    """The header value is not an acceptable key; ``str()`` says why."""


def parse_key(value: str) -> str:
    """The key in a header value, taken as sent: bare, or an RFC 8941 string.

    A key is 1 to 255 printable ASCII characters and neither starts nor ends
    with a space (a padded key is refused rather than silently trimmed, so two
    different header values are never one key). Raises :class:`InvalidKey`.
    """
    if value.startswith('"'):
        match = _SF_STRING.fullmatch(value)
        if match is None:
            raise InvalidKey("the quoted key is not a valid structured-field string")
        value = match.group(1).replace('\\"', '"').replace("\\\\", "\\")
    if not _PRINTABLE.fullmatch(value):
        raise InvalidKey("a key is 1 to 255 printable ASCII characters, with no space at its start or end")
    return value


def digest(*parts: str | bytes) -> str:
    """SHA-256 of the parts, each terminated by NUL (so parts never run together)."""
    encoded = [part.encode("utf-8", "surrogateescape") if isinstance(part, str) else part for part in parts]
    encoded.append(b"")  # the last part's NUL
    return hashlib.sha256(b"\x00".join(encoded)).hexdigest()


@functools.lru_cache(maxsize=1024)
def _route_digest(route: str) -> str:
    return digest(route)[:16]


@functools.lru_cache(maxsize=4096)
def _scope_digest(scope: str) -> str:
    # The same callers come back: their scope is hashed once, not per request.
    return digest(scope)[:32]


@functools.lru_cache(maxsize=4096)
def record_key(scope: str, key: str, route: str) -> str:
    """Where a key's record lives: the caller's scope, the key and the route.

    The method is not part of it: the same key on another method is the same
    key reused for a different request (422), as the draft says. Cached:
    retries of a hot key come back with the same three strings.
    """
    return f"{_scope_digest(scope)}:{digest(key)[:32]}:{_route_digest(route)}"


def user_pattern(user_id: str | None, key: str) -> str:
    """A glob over record keys: one key of one user (or of every caller)."""
    scope = "*" if user_id is None else digest(f"user:{user_id}")[:32]
    return f"{scope}:{digest(key)[:32]}:*"


def canonical_query(query: str) -> str:
    """The query with parameters grouped by name (names in any order mean the
    same) while each name's values keep the order they were sent in.

    Pairs are grouped by the name the app reads (decoded: ``%61`` and ``a``
    are one name), and kept as sent.
    """
    if not query:
        return ""
    pairs = query.split("&")
    return "&".join(sorted(pairs, key=lambda pair: unquote_plus(pair.partition("=")[0], errors="replace")))


def canonical_json(body: bytes) -> bytes | None:
    """A JSON body re-serialised with sorted keys and no spaces, or None when
    the body is not JSON (or too deep to read)."""
    try:
        return json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except (ValueError, RecursionError):
        return None


def fingerprint(
    method: str, path: str, query: str, content_type: str | None, body: bytes, *, mode: str = "raw"
) -> str:
    """What the request meant: method, path, query, media type and body.

    ``mode="json"`` compares JSON bodies by their content, not their bytes.
    """
    if mode == "json":
        body = canonical_json(body) or body
    if "\x00" in path:
        # A decoded path may hold NUL (``%00``), the parts' terminator: it could
        # shift a field into the next one. Such a path goes in hex, under a
        # first part no HTTP method can be (a method is a token: no space).
        hex_path = path.encode("utf-8", "surrogateescape").hex()
        return digest("nul path", method, hex_path, canonical_query(query), content_type or "", body)
    return digest(method, path, canonical_query(query), content_type or "", body)


@dataclass(frozen=True)
class InFlight:
    """A first request holds the key (until ``owner`` completes or releases it)."""

    fingerprint: str
    owner: str


@dataclass(frozen=True)
class Completed:
    """The key's outcome: the stored response, until ``expires_at`` (wall clock)."""

    fingerprint: str
    expires_at: float
    response: StoredResponse


@dataclass(frozen=True)
class Unreadable:
    """A record this version cannot read: another envelope version (a newer
    server during a rolling upgrade) or damaged bytes. It may say the request
    ran, so it is never taken for an absent record."""


Record = Completed | InFlight | Unreadable


class Decision(enum.Enum):
    PROCEED = "proceed"  # nothing holds the key: this request claimed it
    REPLAY = "replay"  # completed with the same request: send its response
    IN_PROGRESS = "in_progress"  # the same request still runs elsewhere: 409
    MISMATCH = "mismatch"  # the key was used for a different request: 422
    UNREADABLE = "unreadable"  # this version cannot read the record: 503, the request does not run


def decide(existing: Record | None, fingerprint: str, now: float) -> Decision:
    """What to do with a request whose key already has ``existing``."""
    if existing is None or (isinstance(existing, Completed) and existing.expires_at <= now):
        return Decision.PROCEED
    if isinstance(existing, Unreadable):
        return Decision.UNREADABLE
    if existing.fingerprint != fingerprint:
        return Decision.MISMATCH
    if isinstance(existing, Completed):
        return Decision.REPLAY
    return Decision.IN_PROGRESS


class Keep(enum.Enum):
    STORE = "store"  # the response is the key's outcome
    NOT_KEPT = "not_kept"  # the view ran but its response cannot be kept: store a problem saying so
    RELEASE = "release"  # give the key back: the request may run again


def keep(status: int, *, streamed: bool, size: int, max_bytes: int, on_error: str) -> Keep:
    """Whether a finished view's response is stored (Stripe's contract by default).

    Once the view ran its outcome is the key's: 2xx, 3xx, 4xx and 5xx are
    stored; a response that cannot be kept (streamed, or over ``max_bytes``)
    is replaced by a problem saying so. ``on_error="release"`` gives the key
    back instead for 5xx and unkeepable responses (views that are safe to run
    again). 409 and 429 from the view mean it refused to act: released.
    """
    if status in RELEASED_STATUSES:
        return Keep.RELEASE
    if on_error == "release" and status >= 500:
        return Keep.RELEASE
    if streamed or size > max_bytes:
        return Keep.RELEASE if on_error == "release" else Keep.NOT_KEPT
    return Keep.STORE


def check_choice(name: str, value: str | None, choices: Iterable[str]) -> None:
    """Raise ValueError unless ``value`` is None or one of ``choices``."""
    allowed = tuple(choices)
    if value is not None and value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
