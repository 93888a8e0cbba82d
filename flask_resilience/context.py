"""Who is calling and which request this is, shared by every feature.

The request id is fixed by the request middleware (:mod:`.middleware`) and
kept in the WSGI environ; the principal is worked out when asked, and kept on
the request object once the view is dispatched (see :func:`current_principal`).
"""

from __future__ import annotations

import hashlib
import hmac
import random
import re
from dataclasses import dataclass
from typing import Any

from flask import current_app, request

from .config import PRINCIPAL_LOADER, REQUEST_ID_HEADER
from .state import get_state

_KEPT = "_resilience_principal"  # on the request object, once dispatched
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(frozen=True)
class Principal:
    """The caller a request acts for.

    ``kind`` is ``"user"`` for an id from a loader or Flask-Login, and
    ``"credential"`` for a keyed hash of an ``Authorization`` header that no
    loader recognised (so two credentials never share one principal).
    """

    kind: str
    id: str

    @property
    def key(self) -> str:
        """A string that scopes stored data to this caller."""
        return f"{self.kind}:{self.id}"

    @property
    def user_id(self) -> str | None:
        return self.id if self.kind == "user" else None


REQUEST_ID_ENVIRON = "flask_resilience.request_id"
"""Where the request middleware keeps the request's id in the WSGI environ."""


def new_request_id() -> str:
    """A new request id: 32 hex digits. A correlation id, not a secret: the
    module-level generator is reseeded in every forked worker and is far
    cheaper than os.urandom, which costs tens of microseconds on some VMs."""
    return random.getrandbits(128).to_bytes(16).hex()


def request_id_from(incoming: str | None) -> str:
    """A valid incoming id as it is, else a new one."""
    if incoming is not None and _VALID_REQUEST_ID.fullmatch(incoming):
        return incoming
    return new_request_id()


def current_request_id() -> str:
    """The id of the current request: a valid incoming one, else a new one."""
    environ = request.environ
    request_id: str | None = environ.get(REQUEST_ID_ENVIRON)
    if request_id is None:  # a request context made without the middleware (tests, scripts)
        header = get_state().config[REQUEST_ID_HEADER]
        request_id = environ[REQUEST_ID_ENVIRON] = request_id_from(request.headers.get(header))
    return request_id


def current_principal() -> Principal | None:
    """The caller of the current request, or None for an anonymous one.

    Order: the extension's ``@principal_loader``, ``RESILIENCE_PRINCIPAL_LOADER``,
    the Flask-Login user, then a hash of the ``Authorization`` header.

    Asked before the view is dispatched (by a ``before_request`` hook), the
    answer is worked out anew each time and never kept: the app's own auth
    hook may not have run yet, and the loader may still read the previous
    request's ``g`` (Flask reuses an app context already pushed). Once the
    cache or idempotency has asked at dispatch (:func:`dispatch_principal`),
    that user is the request's for the rest of it.
    """
    current = request._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup
    kept: Principal | None = current.__dict__.get(_KEPT)
    return kept if kept is not None else _resolve_principal(current.environ)


def dispatch_principal() -> Principal | None:
    """The caller, asked as the view is dispatched (every ``before_request``
    hook has run): a user is kept on the request object (its own: not ``g``,
    not the environ a sub-request may copy) for the rest of the request, so
    the cache's scope, idempotency's scope and the audit log agree."""
    current = request._get_current_object()  # type: ignore[attr-defined]
    kept: Principal | None = current.__dict__.get(_KEPT)
    if kept is not None:
        return kept
    principal = _resolve_principal(current.environ)
    if principal is not None and principal.kind == "user":
        current.__dict__[_KEPT] = principal
    return principal


def _resolve_principal(environ: dict[str, Any]) -> Principal | None:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    state = get_state(app)
    loader = state.hooks.principal_loader or state.config[PRINCIPAL_LOADER]
    if loader is not None:
        user_id = loader()
    elif "login_manager" in app.__dict__:  # set by Flask-Login's init_app
        user_id = _flask_login_user_id()
    else:
        user_id = None
    if user_id is not None and user_id != "" and not isinstance(user_id, bool):  # a loader's False: nobody
        return Principal("user", str(user_id))
    # What request.headers.get("Authorization") reads, without its lookups.
    authorization = environ.get("HTTP_AUTHORIZATION")
    if isinstance(authorization, str) and authorization:
        return Principal("credential", _credential_hash(authorization))
    return None


def _flask_login_user_id() -> str | None:
    try:
        # Optional dependency: only apps that use Flask-Login have it.
        from flask_login import current_user  # noqa: PLC0415
    except ImportError:
        return None
    if current_user is None or not getattr(current_user, "is_authenticated", False):
        return None
    user_id = current_user.get_id()
    return None if user_id is None else str(user_id)


def _credential_hash(authorization: str) -> str:
    # Keyed with the app's secret when it has one, so a stored principal does
    # not let anyone test guesses of a token offline.
    secret = current_app.secret_key
    data = authorization.encode("utf-8", "surrogateescape")
    if secret:
        key = secret if isinstance(secret, bytes) else str(secret).encode()
        digest = hmac.new(key, data, hashlib.sha256).hexdigest()
    else:
        digest = hashlib.sha256(data).hexdigest()
    return digest[:32]
