"""Request id and principal."""

from __future__ import annotations

import re

import pytest
from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from flask_login import LoginManager, UserMixin, login_user

from flask_resilience import Principal, Resilience, current_principal, current_request_id
from tests.conftest import MakeApp

GENERATED = re.compile(r"^[0-9a-f]{32}$")


def _app_with_echo_views(make_app: MakeApp, **config: object) -> tuple[Flask, Resilience]:
    app, extension = make_app(**config)

    @app.get("/whoami")
    def whoami() -> ResponseReturnValue:
        principal = current_principal()
        return jsonify(
            request_id=current_request_id(),
            principal=None if principal is None else principal.key,
        )

    @app.get("/boom")
    def boom() -> ResponseReturnValue:
        raise RuntimeError("view failed")

    return app, extension


@pytest.mark.parametrize("incoming", ["abc-123", "req:1.2_3", "A" * 128])
def test_valid_incoming_request_id_is_kept_and_echoed(make_app: MakeApp, incoming: str) -> None:
    app, _ = _app_with_echo_views(make_app)
    response = app.test_client().get("/whoami", headers={"X-Request-ID": incoming})
    assert response.json is not None and response.json["request_id"] == incoming
    assert response.headers["X-Request-ID"] == incoming


@pytest.mark.parametrize("incoming", ["", "has space", "A" * 129, "semi;colon", "new\\nline", "ünï"])
def test_invalid_incoming_request_id_is_replaced(make_app: MakeApp, incoming: str) -> None:
    app, _ = _app_with_echo_views(make_app)
    response = app.test_client().get("/whoami", headers={"X-Request-ID": incoming})
    assert GENERATED.match(response.headers["X-Request-ID"])
    assert response.json is not None and response.json["request_id"] == response.headers["X-Request-ID"]


def test_request_id_is_generated_and_unique(make_app: MakeApp) -> None:
    app, _ = _app_with_echo_views(make_app)
    client = app.test_client()
    ids = {client.get("/whoami").headers["X-Request-ID"] for _ in range(20)}
    assert len(ids) == 20
    assert all(GENERATED.match(i) for i in ids)


def test_request_id_echoed_on_404(make_app: MakeApp) -> None:
    app, _ = _app_with_echo_views(make_app)
    response = app.test_client().get("/missing", headers={"X-Request-ID": "lost-1"})
    assert response.status_code == 404
    assert response.headers["X-Request-ID"] == "lost-1"


def test_request_id_echoed_on_500(make_app: MakeApp) -> None:
    app, _ = _app_with_echo_views(make_app, PROPAGATE_EXCEPTIONS=False)
    response = app.test_client().get("/boom", headers={"X-Request-ID": "broken-1"})
    assert response.status_code == 500
    assert response.headers["X-Request-ID"] == "broken-1"
    assert GENERATED.match(app.test_client().get("/boom").headers["X-Request-ID"])


def test_request_id_header_name_is_configurable(make_app: MakeApp) -> None:
    app, _ = _app_with_echo_views(make_app, RESILIENCE_REQUEST_ID_HEADER="X-Correlation-ID")
    response = app.test_client().get("/whoami", headers={"X-Correlation-ID": "corr-9"})
    assert response.headers["X-Correlation-ID"] == "corr-9"


def test_anonymous_request_has_no_principal(make_app: MakeApp) -> None:
    app, _ = _app_with_echo_views(make_app)
    response = app.test_client().get("/whoami")
    assert response.json is not None and response.json["principal"] is None


class User(UserMixin):  # type: ignore[misc]
    def __init__(self, user_id: str) -> None:
        self.id = user_id


def test_principal_from_flask_login(make_app: MakeApp) -> None:
    app, _ = _app_with_echo_views(make_app)
    manager = LoginManager(app)
    manager.user_loader(User)

    @app.post("/login/<user_id>")
    def login(user_id: str) -> ResponseReturnValue:
        login_user(User(user_id))
        return "", 204

    client = app.test_client()
    client.post("/login/42")
    response = client.get("/whoami")
    assert response.json is not None and response.json["principal"] == "user:42"
    other = app.test_client()
    other.post("/login/43")
    response = other.get("/whoami")
    assert response.json is not None and response.json["principal"] == "user:43"
    anonymous = app.test_client().get("/whoami")
    assert anonymous.json is not None and anonymous.json["principal"] is None


def test_principal_from_decorated_loader(make_app: MakeApp) -> None:
    extension = Resilience()

    @extension.principal_loader
    def loader() -> str | None:
        from flask import request

        return request.headers.get("X-User")

    app, _ = make_app(extension)

    @app.get("/whoami")
    def whoami() -> ResponseReturnValue:
        principal = current_principal()
        return jsonify(principal=None if principal is None else principal.key)

    client = app.test_client()
    assert client.get("/whoami", headers={"X-User": "alice"}).json == {"principal": "user:alice"}
    assert client.get("/whoami").json == {"principal": None}


def user_from_header() -> str | None:
    from flask import request

    return request.headers.get("X-Config-User")


def test_principal_from_configured_loader_import_string(make_app: MakeApp) -> None:
    app, _ = _app_with_echo_views(make_app, RESILIENCE_PRINCIPAL_LOADER="tests.test_context:user_from_header")
    response = app.test_client().get("/whoami", headers={"X-Config-User": "bob"})
    assert response.json is not None and response.json["principal"] == "user:bob"


def test_authorization_without_principal_gets_a_credential_hash(make_app: MakeApp) -> None:
    app, _ = _app_with_echo_views(make_app)
    client = app.test_client()

    def principal_for(header: str) -> str:
        response = client.get("/whoami", headers={"Authorization": header})
        assert response.json is not None
        value: str = response.json["principal"]
        return value

    first = principal_for("Bearer token-a")
    assert first.startswith("credential:")
    assert "token-a" not in first
    assert principal_for("Bearer token-a") == first
    assert principal_for("Bearer token-b") != first
    assert principal_for("Basic dXNlcjpwYXNz") != first


def test_credential_hash_is_keyed_by_the_app_secret(make_app: MakeApp) -> None:
    first, _ = _app_with_echo_views(make_app, SECRET_KEY="secret-one")
    second, _ = _app_with_echo_views(make_app, SECRET_KEY="secret-two")
    headers = {"Authorization": "Bearer same-token"}
    one = first.test_client().get("/whoami", headers=headers).json
    two = second.test_client().get("/whoami", headers=headers).json
    assert one is not None and two is not None
    assert one["principal"] != two["principal"]


def test_loader_wins_over_authorization_hash(make_app: MakeApp) -> None:
    app, _ = _app_with_echo_views(make_app, RESILIENCE_PRINCIPAL_LOADER=lambda: "carol")
    response = app.test_client().get("/whoami", headers={"Authorization": "Bearer x"})
    assert response.json is not None and response.json["principal"] == "user:carol"


def test_principal_user_id() -> None:
    assert Principal("user", "7").user_id == "7"
    assert Principal("credential", "ab").user_id is None


def test_a_request_id_header_the_view_set_is_replaced_not_doubled(make_app: MakeApp) -> None:
    app, _ = make_app()

    @app.get("/own")
    def own() -> ResponseReturnValue:
        return jsonify(ok=True), 200, {"x-request-id": "from-the-view"}

    response = app.test_client().get("/own", headers={"X-Request-ID": "incoming-1"})
    assert response.headers.getlist("X-Request-ID") == ["incoming-1"]


def test_the_extension_registers_no_request_hooks_unless_a_feature_needs_them(make_app: MakeApp) -> None:
    app, extension = make_app()
    assert not app.before_request_funcs and not app.after_request_funcs
    extension.audit_blueprint("/api/admin")  # URL-prefix auditing needs one, added on demand
    assert len(app.after_request_funcs[None]) == 1
    extension.audit_blueprint("/api/other")
    assert len(app.after_request_funcs[None]) == 1
