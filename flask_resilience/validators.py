"""Parsers for configuration values: each returns the parsed value or raises
:class:`Invalid` saying what was expected (``config.resolve`` adds the key)."""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class Invalid(ValueError):
    """Raised by a parser; the message says what was expected."""


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise Invalid("expected a boolean (true/false/1/0)")


def _number(value: object, kind: type[int] | type[float]) -> float:
    if isinstance(value, bool):
        raise Invalid(f"expected a {kind.__name__}, not a boolean")
    if isinstance(value, (int, float)):
        number = value
    elif isinstance(value, str):
        try:
            number = kind(value.strip())
        except ValueError:
            raise Invalid(f"expected a {kind.__name__}") from None
    else:
        raise Invalid(f"expected a {kind.__name__}")
    if not math.isfinite(number):  # JSON in the environment reads "Infinity" and "NaN"
        raise Invalid(f"expected a finite {kind.__name__}")
    if kind is int and number != int(number):
        raise Invalid("expected an integer")
    return number


def positive_int(value: object) -> int:
    number = int(_number(value, int))
    if number <= 0:
        raise Invalid("expected an integer greater than 0")
    return number


def check_ttl(ttl: object) -> None:
    """For decorator and method arguments: None, or whole seconds > 0 (ValueError)."""
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0):
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")


def positive_number(value: object) -> float:
    number = float(_number(value, float))
    if not number > 0:
        raise Invalid("expected a number greater than 0")
    return number


def optional_str(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise Invalid("expected a string")
    return value


def database_url(value: object) -> str | None:
    url = optional_str(value)
    if url is not None:
        from sqlalchemy.engine import make_url  # noqa: PLC0415
        from sqlalchemy.exc import ArgumentError  # noqa: PLC0415

        try:
            make_url(url)
        except ArgumentError:
            raise Invalid(
                "expected an SQLAlchemy database URL such as postgresql+psycopg://user@host/db"
            ) from None
    return url


def redis_url(value: object) -> str | None:
    url = optional_str(value)
    if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
        raise Invalid("expected a redis://, rediss:// or unix:// URL")
    return url


def key_prefix(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise Invalid("expected a non-empty string")
    # Braces would break the hash tags that keep related keys in one cluster slot.
    if any(ch in value for ch in "{}*?[] \t\r\n"):
        raise Invalid("must not contain braces, glob characters or whitespace")
    return value


def url_prefix(value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/") or value.endswith("/"):
        raise Invalid("expected a path starting with '/' and not ending with '/'")
    return value


def admin_token(value: object) -> str | None:
    token = optional_str(value)
    if token is not None:
        # A bearer token holds no whitespace; a secret read from a file often ends in a newline.
        token = token.strip() or None
    if token is not None and len(token) < 16:
        raise Invalid("an admin token must be at least 16 characters long")
    return token


_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]+$")


def header_name(value: object) -> str:
    if not isinstance(value, str) or not _HEADER_NAME.match(value):
        raise Invalid("expected an HTTP header name")
    return value


ClusterNodes = tuple[tuple[str, int], ...]


def cluster_nodes(value: object) -> bool | ClusterNodes:
    """``False``, ``True`` (use the nodes in the Redis URL) or ``host:port`` nodes."""
    if isinstance(value, str) and ":" in value:
        value = [part for part in value.split(",") if part.strip()]
    if isinstance(value, Sequence) and not isinstance(value, str):
        nodes = []
        for node in value:
            host, sep, port = str(node).strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise Invalid("expected cluster nodes as 'host:port' entries")
            nodes.append((host, int(port)))
        if not nodes:
            raise Invalid("expected at least one 'host:port' cluster node")
        return tuple(nodes)
    return boolean(value)


def optional_callable(value: object) -> Callable[..., Any] | None:
    """A callable, or a ``"module:attribute"`` import string naming one."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        module_name, sep, attribute = value.partition(":")
        if not sep:
            raise Invalid("expected 'module:attribute'")
        try:
            value = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise Invalid(f"cannot import it ({exc})") from None
    if not callable(value):
        raise Invalid("expected a callable")
    return value


def breaker_defaults(value: object) -> dict[str, Any]:
    """A mapping of parameter names; the breaker checks the parameters
    themselves (``breaker.config.defaults_from_config``)."""
    if not isinstance(value, Mapping) or not all(isinstance(name, str) for name in value):
        raise Invalid("expected a mapping of circuit breaker parameters")
    return dict(value)


def header_names(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)):
        raise Invalid("expected a list of header names")
    for name in value:
        header_name(name)
    return tuple(value)


def removed_allow_list(value: object) -> tuple[str, ...]:
    """RESILIENCE_CACHE_STORED_HEADERS named headers to store besides an
    allow-list; every end-to-end header is stored now, so a value means a
    configuration written for the old behaviour."""
    if header_names(value):
        raise Invalid(
            "removed: every end-to-end header is stored now; list headers never to store "
            "in RESILIENCE_CACHE_DENIED_HEADERS"
        )
    return ()


def flask_caching_cache(value: object) -> object | None:
    if value is None:
        return None
    # Looked up on the class: Cache.cache is a property that needs an app context.
    if not all(hasattr(type(value), name) for name in ("get", "set", "delete_many", "cache")):
        raise Invalid(
            "expected a flask_caching.Cache instance (Flask-Caching comes with the flask-caching extra: "
            "pip install 'Flask-Resilience[flask-caching]')"
        )
    return value


def serializer(value: object) -> object | None:
    if value is None:
        return None
    if not (callable(getattr(value, "dumps", None)) and callable(getattr(value, "loads", None))):
        raise Invalid("expected an object with dumps(value) -> bytes and loads(bytes) -> value")
    return value


def string_list(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) and item for item in value):
        raise Invalid("expected a list of names")
    return tuple(value)


def optional_string_list(value: object) -> tuple[str, ...] | None:
    return None if value is None else string_list(value)


def one_of(*choices: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if not isinstance(value, str) or value.lower() not in choices:
            raise Invalid(f"expected one of {', '.join(choices)}")
        return value.lower()

    return parse
