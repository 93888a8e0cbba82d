"""Login and logout with signed bearer tokens, and the principal loader.

Tokens are ``itsdangerous`` signatures of ``{"sub": user, "jti": id}``. A
logout revokes the token's id in the app's data cache (Redis when
configured), so every worker refuses it afterwards.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from flask import Blueprint, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue
from itsdangerous import BadSignature, URLSafeTimedSerializer

from flask_resilience import AuditEventType, AuditStatus, Problem, Resilience, log_auth_event

TOKEN_SECONDS = 3600


@dataclass(frozen=True)
class User:
    name: str
    password: str
    admin: bool = False


# Demo accounts; a real app checks a password hash in its user table.
USERS = {
    user.name: user
    for user in (
        User("alice", "alice-password"),
        User("bob", "bob-password"),
        User("admin", "admin-password", admin=True),
    )
}

auth_blueprint = Blueprint("auth", __name__, url_prefix="/api/auth")


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt="example-app-login")


def _revoked_key(token_id: str) -> str:
    return f"revoked-token:{token_id}"


def _resilience() -> Resilience:
    extension: Resilience = current_app.extensions["example_resilience"]
    return extension


def bearer_claims() -> dict[str, str] | None:
    """The current request's valid, unrevoked token claims, or None (once per request)."""
    if "example_claims" in g:
        claims: dict[str, str] | None = g.example_claims
        return claims
    claims = None
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token and token.isascii():
        try:
            loaded = _serializer().loads(token.strip(), max_age=TOKEN_SECONDS)
        except BadSignature:
            loaded = None
        if (
            isinstance(loaded, dict)
            and loaded.get("sub") in USERS
            and not _resilience().cache.get(_revoked_key(str(loaded.get("jti"))))
        ):
            claims = {"sub": str(loaded["sub"]), "jti": str(loaded.get("jti"))}
    g.example_claims = claims
    return claims


def current_user() -> User | None:
    claims = bearer_claims()
    return None if claims is None else USERS[claims["sub"]]


def require_user() -> User:
    user = current_user()
    if user is None:
        raise Problem(
            401,
            "login-required",
            "Login required",
            "Send 'Authorization: Bearer <token>' with a token from POST /api/auth/login.",
            headers={"WWW-Authenticate": 'Bearer realm="example"'},
        )
    return user


def install(resilience: Resilience) -> None:
    """Register the principal loader and the admin check on ``resilience``."""

    @resilience.principal_loader
    def load_principal() -> str | None:
        claims = bearer_claims()
        return None if claims is None else claims["sub"]

    @resilience.admin_check
    def is_admin() -> bool:
        user = current_user()
        return user is not None and user.admin


@auth_blueprint.post("/login")
def login() -> ResponseReturnValue:
    body = request.get_json(silent=True)  # None for anything but JSON (BoundedJSONProvider)
    name = body.get("username") if isinstance(body, dict) else None
    password = body.get("password") if isinstance(body, dict) else None
    user = USERS.get(name) if isinstance(name, str) else None
    if user is None or not isinstance(password, str) or not hmac.compare_digest(password, user.password):
        log_auth_event(
            AuditEventType.LOGIN_FAILED,
            details={"username": name if isinstance(name, str) else None},
            status=AuditStatus.FAILURE,
        )
        raise Problem(401, "login-failed", "Login failed", "Unknown user name or wrong password.")
    token = _serializer().dumps({"sub": user.name, "jti": secrets.token_urlsafe(12)})
    log_auth_event(AuditEventType.LOGIN, user_id=user.name)
    answer = {"token": token, "token_type": "Bearer", "expires_in": TOKEN_SECONDS, "admin": user.admin}
    return jsonify(answer)


@auth_blueprint.post("/logout")
def logout() -> ResponseReturnValue:
    user = require_user()
    claims = bearer_claims()
    assert claims is not None
    _resilience().cache.set(_revoked_key(claims["jti"]), True, ttl=TOKEN_SECONDS)
    log_auth_event(AuditEventType.LOGOUT, user_id=user.name)
    return jsonify(logged_out=True)
