"""Who is calling and which request this is, shared by every feature.

The request id is fixed by the request middleware (:mod:`.middleware`) and
kept in the WSGI environ; the principal is computed at most once per request
and kept in the WSGI environ too (a request's own, where ``g`` may be shared).
"""

from __future__ import annotations

import hashlib
import hmac
import random
import re
from dataclasses import dataclass

from flask import current_app, request

from .config import PRINCIPAL_LOADER, REQUEST_ID_HEADER
from .state import get_state

PRINCIPAL_ENVIRON = "flask_resilience.principal"
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


def request_id_from(incoming: str | None) -> str:
    """A valid incoming id as it is, else a new one."""
    if incoming is not None and _VALID_REQUEST_ID.fullmatch(incoming):
        return incoming
    # A correlation id, not a secret: the module-level generator is reseeded
    # in every forked worker and is far cheaper than os.urandom, which costs
    # tens of microseconds on some VMs.
    return f"{random.getrandbits(128):032x}"


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

    Only a user is kept for the rest of the request: asked before the app's
    auth hook has run (by an early hook), the answer is "anonymous" or a
    credential, and freezing it would put every caller in one scope.
    """
    # Kept on the request, not on ``g``: Flask reuses an app context (and its
    # ``g``) that is already pushed for the requests made inside it.
    environ = request.environ
    principal: Principal | None = environ.get(PRINCIPAL_ENVIRON)
    if principal is None or principal.kind != "user":
        principal = environ[PRINCIPAL_ENVIRON] = _resolve_principal(environ)
    return principal


def _resolve_principal(environ: dict[str, object]) -> Principal | None:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    state = get_state(app)
    loader = state.hooks.principal_loader or state.config[PRINCIPAL_LOADER]
    if loader is not None:
        user_id = loader()
    elif "login_manager" in app.__dict__:  # set by Flask-Login's init_app
        user_id = _flask_login_user_id()
    else:
        user_id = None
    if user_id is not None and user_id != "":
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
