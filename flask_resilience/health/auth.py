"""Who may use the admin endpoints.

Allowed: the app's ``@resilience.admin_check`` returns True, or the request
carries ``Authorization: Bearer <RESILIENCE_ADMIN_TOKEN>``. With neither
configured every admin endpoint answers 403: closed by default.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
from collections.abc import Callable
from typing import TypeVar, cast

from flask import request

from ..config import ADMIN_TOKEN, HEALTH_PUBLIC
from ..problems import Problem
from ..state import get_state

F = TypeVar("F", bound=Callable[..., object])
logger = logging.getLogger("flask_resilience.health")


def _digest(value: str) -> bytes:
    # Comparing digests keeps the comparison constant-time in the token's length too.
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def _token_matches(credentials: str, token: str) -> bool:
    """Whether the client sent ``token``. WSGI servers decode header bytes as
    Latin-1, so a UTF-8 token arrives as mojibake: its bytes are compared
    too, as well as the text as given (a test client, an ASGI bridge)."""
    expected = _digest(token)
    as_text = hmac.compare_digest(_digest(credentials), expected)
    try:
        raw = credentials.encode("latin-1")
    except UnicodeEncodeError:
        return as_text
    return hmac.compare_digest(hashlib.sha256(raw).digest(), expected) or as_text


def check_admin() -> None:
    """Return when the caller is an admin; raise a 401/403 :class:`Problem` otherwise."""
    state = get_state()
    custom_check = state.hooks.admin_check
    token = state.config[ADMIN_TOKEN]
    if custom_check is None and token is None:
        raise Problem(
            403,
            "admin-disabled",
            "Admin access is not configured",
            "Set RESILIENCE_ADMIN_TOKEN or register @resilience.admin_check to use this endpoint.",
        )
    if custom_check is not None and custom_check():
        return
    if token is None:
        raise Problem(403, "admin-forbidden", "Forbidden", "The admin check refused this request.")
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if not credentials:
        raise Problem(
            401,
            "admin-unauthorized",
            "Authentication required",
            "Send 'Authorization: Bearer <admin token>'.",
            headers={"WWW-Authenticate": 'Bearer realm="flask-resilience"'},
        )
    if scheme.lower() != "bearer" or not _token_matches(credentials.strip(), token):
        raise Problem(403, "admin-forbidden", "Forbidden", "The admin token is not valid.")


def is_admin() -> bool:
    """True when :func:`check_admin` would let the request through.

    An app's admin check that raises (``current_user.is_admin`` on an
    anonymous user) means "not an admin" here: the public probes ask this
    question, and a load balancer must get their answer, not a 500.
    """
    try:
        check_admin()
    except Problem:
        return False
    except Exception:
        logger.exception("the admin check raised; treating the caller as not an admin")
        return False
    return True


def admin_required(view: F) -> F:
    """Decorate a view so that only admins reach it."""

    @functools.wraps(view)
    def wrapper(*args: object, **kwargs: object) -> object:
        check_admin()
        return view(*args, **kwargs)

    return cast(F, wrapper)


def stats_access() -> bool:
    """Gate for statistics endpoints; returns whether per-user figures may be shown.

    Admins see everything. With ``RESILIENCE_HEALTH_PUBLIC`` anyone sees the
    figures that name no user; otherwise non-admins get the 401/403.
    """
    if is_admin():
        return True
    if get_state().config[HEALTH_PUBLIC]:
        return False
    check_admin()
    return True
