"""Cache keys: an injective encoding of everything a stored response stands for.

A key has two parts:

* the **resource** ``prefix:path?query``: what :func:`invalidate_cache` and
  pattern invalidation name. Every component is percent-encoded, so ``#``,
  ``?``, ``&``, ``=``, ``%`` and ``|`` inside the path or a query value can
  never be mistaken for a separator; repeated query parameters keep their
  order (``?a=1&a=2`` is not ``?a=2&a=1``), different names are sorted.
* the **variant**: scheme and host (unless ``vary_host=False``), the
  principal or an explicit anonymous marker, and the values of the headers
  the response varies on. It is encoded the same way and hashed to a fixed
  length (BLAKE2b, 128 bits).

The key is ``variant-digest:resource``; a resource longer than
:data:`MAX_RESOURCE` characters is cut and completed by its own digest.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Sequence
from urllib.parse import quote, unquote_to_bytes

from flask import Request

MAX_RESOURCE = 256
DIGEST_LENGTH = 32  # hex characters of a variant digest
_PATH_SAFE = "/-._~!$'()*+,;:@"  # '&', '=', '?', '#', '%', '|' are always encoded
_VALUE_SAFE = "-._~"
_PLAIN = re.compile(r"[A-Za-z0-9/\-._~!$'()*+,;:@]*")  # what _PATH_SAFE leaves as it is
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9\-._~]*")
_PLAIN_QUERY = re.compile(r"[A-Za-z0-9\-._~=&]*")  # nothing to decode: no '%', '+' or ';'


def encode_part(text: str) -> str:
    """Percent-encode ``text`` but for unreserved characters (UTF-8; a lone
    surrogate is encoded, not refused)."""
    if _PLAIN_VALUE.fullmatch(text):
        return text  # the common case, without the cost of quote()
    return quote(text.encode("utf-8", "surrogatepass"), safe=_VALUE_SAFE)


def encode_path(text: str) -> str:
    """As :func:`encode_part`, leaving ``/`` and the path's sub-delimiters
    (never ``?``, ``#``, ``%``, ``&``, ``=`` or ``|``)."""
    if _PLAIN.fullmatch(text):
        return text
    return quote(text.encode("utf-8", "surrogatepass"), safe=_PATH_SAFE)


def resource_key(prefix: str, path: str, query: Sequence[tuple[str, str]]) -> str:
    """``prefix:path?name=value&...``; ``query`` in request order.

    Parameters are grouped by name (sorted), each name's values keeping
    their order: the order of different names does not change what a view
    sees, the order of one name's values does.
    """
    key = f"{encode_part(prefix)}:{encode_path(path)}"
    if query:
        ordered = sorted(query, key=lambda pair: pair[0])  # stable: values keep their order
        key += "?" + "&".join(f"{encode_part(name)}={encode_part(value)}" for name, value in ordered)
    return bound_resource(key)


def custom_resource_key(prefix: str, value: str) -> str:
    """``prefix:value`` for a view's ``key_func`` result."""
    return bound_resource(f"{encode_part(prefix)}:{encode_path(value)}")


def bound_resource(key: str) -> str:
    """``key`` as stored: cut and completed by its digest when longer than
    :data:`MAX_RESOURCE` (view resources are stored so)."""
    if len(key) <= MAX_RESOURCE:
        return key
    # '#' never occurs in an encoded key, so a cut key cannot equal a short one.
    return key[:128] + "#h=" + hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def variant(
    *,
    scheme: str | None,
    host: str | None,
    principal: str | None,
    vary: Sequence[tuple[str, str | None]] = (),
    root: str = "",
) -> str:
    """The encoded variant: ``s=..|h=..|u=..`` (``u=-`` when anonymous),
    ``|r=..`` after the host for an app mounted below ``/`` (``SCRIPT_NAME``:
    every URL a view builds starts with it) and, with ``vary``,
    ``|v=name=value,...`` (a header absent: its name alone)."""
    parts = []
    if scheme is not None:
        parts.append("s=" + encode_part(scheme))
    if host is not None:
        parts.append("h=" + encode_part(host))
    if root:
        parts.append("r=" + encode_part(root))
    parts.append("u=-" if principal is None else "u=p" + encode_part(principal))
    if vary:
        values = (
            encode_part(name.lower()) + ("" if value is None else "=" + encode_part(value))
            for name, value in vary
        )
        parts.append("v=" + ",".join(values))
    return "|".join(parts)


def full_key(variant_text: str, resource: str) -> str:
    """The key of one stored entry: its variant's digest and its resource."""
    return f"{_variant_digest(variant_text)}:{resource}"


@functools.lru_cache(maxsize=4096)
def _variant_digest(variant_text: str) -> str:
    # Most requests share a handful of variants (scheme, host, anonymous).
    return hashlib.blake2b(variant_text.encode(), digest_size=DIGEST_LENGTH // 2).hexdigest()


def resource_of(key: str) -> str:
    """The resource part of a key made by :func:`full_key`."""
    return key[DIGEST_LENGTH + 1 :]


DATA_VARIANT = "d"  # data-cache entries have no request to vary on


def query_pairs(query_string: str) -> list[tuple[str, str]] | None:
    """The ``(name, value)`` pairs of a raw ``QUERY_STRING``, in request order,
    when it needs no decoding (then each name's values are those of werkzeug's
    ``request.args``, in the same order); None otherwise."""
    if not _PLAIN_QUERY.fullmatch(query_string):
        return None
    pairs = []
    for piece in query_string.split("&"):
        if piece:  # werkzeug skips empty pieces; a piece without '=' has an empty value
            name, _, value = piece.partition("=")
            pairs.append((name, value))
    return pairs


def _decodable(query_string: str) -> bool:
    """Whether werkzeug can build ``request.args``: the raw bytes must be UTF-8
    (percent-encoded bytes that are not are kept encoded by its parser)."""
    if query_string.isascii():
        return True
    try:
        query_string.encode("latin-1").decode()
    except UnicodeError:  # bad input from the client, not a failure here
        return False
    return True


def _raw_name(piece: str) -> str | None:
    """The decoded name of one raw ``name=value`` piece; None when it is not UTF-8."""
    try:
        # The raw text is the request's bytes as latin-1 (WSGI): back to bytes, then UTF-8.
        return unquote_to_bytes(piece.partition("=")[0].replace("+", " ").encode("latin-1")).decode()
    except UnicodeError:
        return None


def _raw_allowed(query_string: str, query_args: Iterable[str]) -> str:
    """The raw pieces of ``query_string`` whose name is in ``query_args``,
    grouped by name (names sorted, each name's pieces in request order)."""
    allowed = frozenset(query_args)
    named = [(_raw_name(piece), piece) for piece in query_string.split("&") if piece]
    kept = [(name, piece) for name, piece in named if name is not None and name in allowed]
    kept.sort(key=lambda pair: pair[0])  # stable: each name's pieces keep their order
    return "&".join(piece for _name, piece in kept)


def request_resource(request: Request, prefix: str, query_args: Iterable[str] | None) -> str:
    """The resource key of ``request``: its path and query (``query_args``
    limits which parameters count; clients cannot inject key material)."""
    query_string: str = request.environ.get("QUERY_STRING", "")
    if not query_string:
        return resource_key(prefix, request.path, ())
    pairs = query_pairs(query_string)
    if pairs is None:  # percent-encoded or '+': werkzeug decodes it
        if not _decodable(query_string):
            # request.args cannot be built; key on the raw text ('#' never
            # occurs in an encoded key, so no decoded query can spell this),
            # of the parameters query_args lets count.
            raw = query_string if query_args is None else _raw_allowed(query_string, query_args)
            return bound_resource(
                f"{encode_part(prefix)}:{encode_path(request.path)}?#raw={encode_part(raw)}"
            )
        pairs = list(request.args.items(multi=True))
    if query_args is not None:
        allowed = frozenset(query_args)
        pairs = [pair for pair in pairs if pair[0] in allowed]
    return resource_key(prefix, request.path, pairs)


def vary_values(request: Request, names: Sequence[str]) -> tuple[tuple[str, str | None], ...]:
    """The request's values of the headers ``names`` (sorted, lower-case)."""
    headers = request.headers
    return tuple((name, headers.get(name)) for name in sorted({name.lower() for name in names}))
