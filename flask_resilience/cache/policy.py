"""What ``@cached`` says about one view, and the keys of the URLs it has seen."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from flask import Request

from .keys import full_key, request_resource, variant

_MEMO_ENTRIES = 1024  # remembered keys per view
_MEMO_URL_LENGTH = 256  # longer requests (path, query, host, root, principal) are keyed afresh

# (path, raw query, scheme, host, root, principal)
_Memo = tuple[str, str, str | None, str | None, str, str | None]


@dataclass(frozen=True)
class ViewPolicy:
    ttl: int | None
    tags: tuple[str, ...]
    prefix: str
    key_func: Callable[[Request], str] | None
    condition: Callable[[Request], bool] | None
    per_user: bool
    query_args: tuple[str, ...] | None
    statuses: frozenset[int]
    vary_host: bool
    front: bool | None = None  # None: RESILIENCE_CACHE_FRONT decides
    # The same requests come back, and their keys are a pure function of these.
    keys: dict[_Memo, tuple[str, str]] = field(default_factory=dict, compare=False, repr=False)

    def allows_front(self, everywhere: bool) -> bool:
        """Whether the front tier may answer for this view: opted in, and
        nothing about the caller or the request decides its answer."""
        wanted = everywhere if self.front is None else self.front
        return wanted and not self.per_user and self.condition is None and self.key_func is None

    def keys_for(
        self, current: Request, scheme: str | None, host: str | None, root: str, principal: str | None
    ) -> tuple[str, str]:
        """The request's resource and key (views without ``key_func``),
        remembered for short URLs."""
        path, query = current.path, current.environ.get("QUERY_STRING", "")
        memo = (path, query, scheme, host, root, principal)
        known = self.keys.get(memo)
        if known is None:
            resource = request_resource(current, self.prefix, self.query_args)
            text = variant(scheme=scheme, host=host, principal=principal, root=root)
            known = (resource, full_key(text, resource))
            size = len(path) + len(query) + len(host or "") + len(root) + len(principal or "")
            if size <= _MEMO_URL_LENGTH:  # every part counts: a client sends the Host too
                if len(self.keys) >= _MEMO_ENTRIES:
                    self.keys.clear()  # random URLs: start over rather than grow
                self.keys[memo] = known
        return known
