"""``memoize`` for plain functions, as Flask-Caching offers it, over the data cache.

An entry's key is the function's module and qualified name plus a digest of an
injective encoding of its bound arguments (``f(1)``, ``f(a=1)`` and ``f()``
with default ``a=1`` share one entry; ``f(1)``, ``f(1.0)``, ``f(True)`` and
``f("1")`` do not). Arguments must be JSON-like (``None``, bool, int, float,
str, and lists, tuples and dicts of them): anything else raises TypeError,
since its ``repr`` is not a reliable identity. Values go through the data
cache's serializer (JSON: a tuple comes back as a list), never pickle.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from ..validators import check_ttl
from .tags import validate_tags

if TYPE_CHECKING:
    from .data import DataCache

P = ParamSpec("P")
R = TypeVar("R")
MEMO_ATTRIBUTE = "__resilience_memo__"


def _encode(value: object, where: str) -> object:
    """A JSON value that says the type of every part, so distinct arguments never meet."""
    if value is None:
        return ["n"]
    if isinstance(value, bool):
        return ["b", value]
    if isinstance(value, int):
        return ["i", str(value)]  # as text: JSON readers may round big integers
    if isinstance(value, float):
        return ["f", repr(value)]
    if isinstance(value, str):
        return ["s", value]
    if isinstance(value, (list, tuple)):
        kind = "l" if isinstance(value, list) else "t"
        return [kind, [_encode(item, where) for item in value]]
    if isinstance(value, dict):
        pairs = [[_encode(k, where), _encode(v, where)] for k, v in value.items()]
        pairs.sort(key=lambda pair: json.dumps(pair[0]))
        return ["d", pairs]
    raise TypeError(
        f"memoize keys on JSON-like arguments (None, bool, int, float, str, lists, tuples, dicts); "
        f"{where} is a {type(value).__name__}"
    )


@dataclass(frozen=True)
class Memo:
    """What identifies one memoized function's entries."""

    function: Callable[..., Any]
    name: str

    @classmethod
    def of(cls, function: Callable[..., Any]) -> Memo:
        return cls(function, f"{function.__module__}.{function.__qualname__}")

    @property
    def tag(self) -> str:
        """The tag every entry of this function carries (``delete_memoized(fn)``)."""
        return "memoize:" + hashlib.blake2b(self.name.encode(), digest_size=12).hexdigest()

    def key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The data-cache key of one call; TypeError when the arguments do not fit the function."""
        bound = inspect.signature(self.function).bind(*args, **kwargs)
        bound.apply_defaults()
        encoded = [[name, _encode(value, f"argument {name!r}")] for name, value in bound.arguments.items()]
        text = json.dumps([self.name, encoded], separators=(",", ":"))
        digest = hashlib.blake2b(text.encode(), digest_size=20).hexdigest()
        return f"memoize:{self.name}:{digest}"


def memoize(
    data: Callable[[], DataCache],
    ttl: int | None,
    tags: Iterable[str],
    unless: Callable[[], bool] | None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """The decorator; ``data`` finds the current app's data cache at call time."""
    check_ttl(ttl)
    tag_tuple = tuple(validate_tags(tags))

    def decorator(function: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
            raise TypeError("memoize caches plain functions' return values, not coroutines")
        memo = Memo.of(function)

        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if unless is not None and unless():
                return function(*args, **kwargs)
            key = memo.key(args, kwargs)
            return data().get_or_set(key, lambda: function(*args, **kwargs), ttl, (*tag_tuple, memo.tag))

        setattr(wrapper, MEMO_ATTRIBUTE, memo)
        return wrapper

    return decorator


def memo_of(function: Callable[..., Any]) -> Memo:
    """The identity of a function decorated with :func:`memoize`; TypeError for any other."""
    memo = getattr(function, MEMO_ATTRIBUTE, None)
    if not isinstance(memo, Memo):
        raise TypeError(f"{function!r} is not decorated with memoize")
    return memo
