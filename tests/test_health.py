"""The health blueprint and the admin protection every admin endpoint uses."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from flask import request
from flask.testing import FlaskClient

from flask_resilience import Resilience, admin_required
from flask_resilience.problems import PROBLEM_CONTENT_TYPE
from flask_resilience.state import get_state
from tests.conftest import MakeApp
from tests.services import free_port

TOKEN = "s3cret-admin-token-for-tests"


def test_health_ok_with_redis_and_postgres_up(make_app: MakeApp, redis_url: str, postgres_url: str) -> None:
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url, RESILIENCE_AUDIT_DATABASE_URI=postgres_url)
    response = app.test_client().get("/api/health")
    assert response.status_code == 200
    body = response.json
    assert body is not None
    assert body["status"] == "ok"
    assert "version" not in body  # public unless RESILIENCE_HEALTH_SHOW_VERSION
    assert body["uptime_seconds"] >= 0
    assert body["checks"]["redis"]["status"] == "up"
    assert body["checks"]["database"]["status"] == "up"
    assert response.headers["Cache-Control"] == "no-store"


def test_health_without_dependencies_reports_none(make_app: MakeApp) -> None:
    app, _ = make_app()
    response = app.test_client().get("/api/health/")
    assert response.status_code == 200
    assert response.json is not None and response.json["checks"] == {}


@pytest.mark.parametrize("database", ["sqlite_url", "mysql_url"])
def test_health_checks_other_databases(
    make_app: MakeApp, request: pytest.FixtureRequest, database: str
) -> None:
    app, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=request.getfixturevalue(database))
    response = app.test_client().get("/api/health")
    assert response.status_code == 200
    assert response.json is not None and response.json["checks"]["database"]["status"] == "up"


def test_health_uses_the_flask_sqlalchemy_engine(make_app: MakeApp, postgres_url: str) -> None:
    from flask_sqlalchemy import SQLAlchemy

    app, _ = make_app(SQLALCHEMY_DATABASE_URI=postgres_url)
    db = SQLAlchemy(app)
    response = app.test_client().get("/api/health")
    assert response.status_code == 200
    assert response.json is not None and response.json["checks"]["database"]["status"] == "up"
    with app.app_context():
        db.engine.dispose()


def test_health_503_names_redis_when_its_port_is_dead(make_app: MakeApp, postgres_url: str) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    app, _ = make_app(
        RESILIENCE_REDIS_URL=dead,
        RESILIENCE_AUDIT_DATABASE_URI=postgres_url,
        RESILIENCE_HEALTH_CRITICAL="redis",
    )
    response = app.test_client().get("/api/health")
    assert response.status_code == 503
    body = response.json
    assert body is not None
    assert body["status"] == "unavailable"
    assert body["failing"] == ["redis"]
    assert body["checks"]["redis"] == {
        "status": "down",
        "critical": True,
        "latency_ms": body["checks"]["redis"]["latency_ms"],
        "error": "StoreUnavailableError",
    }
    assert body["checks"]["database"]["status"] == "up"


def test_health_503_names_the_database_when_it_is_down(make_app: MakeApp, redis_url: str) -> None:
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"
    app, _ = make_app(
        RESILIENCE_REDIS_URL=redis_url, RESILIENCE_AUDIT_DATABASE_URI=dead, RESILIENCE_AUDIT_SPILL_PATH="off"
    )
    response = app.test_client().get("/api/health")
    assert response.status_code == 503
    assert response.json is not None and response.json["failing"] == ["database"]


def test_health_shows_failure_details_to_admins_only(make_app: MakeApp) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    app, _ = make_app(RESILIENCE_REDIS_URL=dead, RESILIENCE_ADMIN_TOKEN=TOKEN)
    client = app.test_client()
    public = client.get("/api/health").json
    admin = client.get("/api/health", headers={"Authorization": f"Bearer {TOKEN}"}).json
    assert public is not None and admin is not None
    assert "detail" not in public["checks"]["redis"]
    assert "Connection refused" in admin["checks"]["redis"]["detail"]


def _problem(client: FlaskClient, path: str, headers: Mapping[str, str] | None = None) -> dict[str, object]:
    response = client.get(path, headers=headers or {})
    assert response.content_type == PROBLEM_CONTENT_TYPE
    body = response.json
    assert body is not None
    assert body["status"] == response.status_code
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert {"type", "title", "detail"} <= set(body)
    result: dict[str, object] = body
    return result


def test_admin_endpoints_closed_when_nothing_is_configured(make_app: MakeApp) -> None:
    app, _ = make_app()
    client = app.test_client()
    body = _problem(client, "/api/health/dashboard", {"Authorization": "Bearer anything-at-all-here"})
    assert body["status"] == 403
    assert body["type"] == "urn:flask-resilience:problem:admin-disabled"


def test_admin_token_missing_wrong_and_right(make_app: MakeApp) -> None:
    app, _ = make_app(RESILIENCE_ADMIN_TOKEN=TOKEN)
    client = app.test_client()
    missing = client.get("/api/health/dashboard")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert (
        _problem(client, "/api/health/dashboard")["type"] == "urn:flask-resilience:problem:admin-unauthorized"
    )
    for wrong in (f"Bearer {TOKEN}x", f"Basic {TOKEN}", "Bearer short"):
        body = _problem(client, "/api/health/dashboard", {"Authorization": wrong})
        assert body["status"] == 403
    right = client.get("/api/health/dashboard", headers={"Authorization": f"Bearer {TOKEN}"})
    assert right.status_code == 200
    assert right.json is not None and "stores" in right.json["features"]


def test_a_non_ascii_admin_token_works_as_a_server_delivers_it(make_app: MakeApp) -> None:
    # A WSGI server hands header values over as Latin-1 text: the UTF-8 bytes
    # of "schlüssel" arrive as "schlÃ¼ssel", which never matched the token.
    token = "geheimer-schlüssel-für-admins"
    app, _ = make_app(RESILIENCE_ADMIN_TOKEN=token)
    client = app.test_client()
    for sent, status in (
        (token.encode("utf-8").decode("latin-1"), 200),  # as a WSGI server delivers it
        (token, 200),  # as text, from a test client
        ("geheimer-schlüssel-für-admin!".encode().decode("latin-1"), 403),
    ):
        response = client.get("/api/health/dashboard", headers={"Authorization": f"Bearer {sent}"})
        assert response.status_code == status, sent


def test_an_admin_token_read_with_a_trailing_newline_still_matches(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A secret mounted from a file usually ends in a newline; a bearer token
    # never holds whitespace, and the one sent is stripped: so it never matched.
    monkeypatch.setenv("RESILIENCE_ADMIN_TOKEN", f"{TOKEN}\n")
    app, _ = make_app()
    assert app.config["RESILIENCE_ADMIN_TOKEN"] == TOKEN
    response = app.test_client().get("/api/health/dashboard", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200


def test_custom_admin_check(make_app: MakeApp) -> None:
    extension = Resilience()

    @extension.admin_check
    def is_admin() -> bool:
        return request.headers.get("X-Role") == "admin"

    app, _ = make_app(extension)
    client = app.test_client()
    assert client.get("/api/health/dashboard", headers={"X-Role": "admin"}).status_code == 200
    assert _problem(client, "/api/health/dashboard", {"X-Role": "user"})["status"] == 403


def test_custom_check_and_token_both_admit(make_app: MakeApp) -> None:
    extension = Resilience()
    extension.admin_check(lambda: request.headers.get("X-Role") == "admin")
    app, _ = make_app(extension, RESILIENCE_ADMIN_TOKEN=TOKEN)
    client = app.test_client()
    assert client.get("/api/health/dashboard", headers={"X-Role": "admin"}).status_code == 200
    assert (
        client.get("/api/health/dashboard", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    )
    assert client.get("/api/health/dashboard").status_code == 401


def test_public_stats_hide_per_user_figures(make_app: MakeApp) -> None:
    app, _ = make_app(RESILIENCE_HEALTH_PUBLIC=True, RESILIENCE_ADMIN_TOKEN=TOKEN)
    seen: list[bool] = []

    def provider(include_private: bool) -> dict[str, object]:
        seen.append(include_private)
        return {"total": 3, **({"per_user": {"alice": 3}} if include_private else {})}

    get_state(app).stats_providers["demo"] = provider
    client = app.test_client()
    public = client.get("/api/health/dashboard")
    assert public.status_code == 200
    assert public.json is not None and public.json["features"]["demo"] == {"total": 3}
    admin = client.get("/api/health/dashboard", headers={"Authorization": f"Bearer {TOKEN}"})
    assert admin.json is not None and admin.json["features"]["demo"]["per_user"] == {"alice": 3}
    assert seen == [False, True]


def test_a_failing_stats_provider_does_not_break_the_dashboard(make_app: MakeApp) -> None:
    app, _ = make_app(RESILIENCE_ADMIN_TOKEN=TOKEN)

    def broken(_include_private: bool) -> dict[str, object]:
        raise KeyError("oops")

    get_state(app).stats_providers["broken"] = broken
    response = app.test_client().get("/api/health/dashboard", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.json is not None and response.json["features"]["broken"] == {"error": "KeyError"}


def test_admin_required_protects_app_views(make_app: MakeApp) -> None:
    app, _ = make_app(RESILIENCE_ADMIN_TOKEN=TOKEN)

    @app.post("/admin/rebuild")
    @admin_required
    def rebuild() -> str:
        return "done"

    client = app.test_client()
    assert client.post("/admin/rebuild").status_code == 401
    assert client.post("/admin/rebuild", headers={"Authorization": f"Bearer {TOKEN}"}).data == b"done"


def test_dashboard_reports_the_store_backend(make_app: MakeApp, redis_url: str, key_prefix: str) -> None:
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url, RESILIENCE_ADMIN_TOKEN=TOKEN)
    body = app.test_client().get("/api/health/dashboard", headers={"Authorization": f"Bearer {TOKEN}"}).json
    assert body is not None
    assert body["features"]["stores"]["backend"] == "redis"
    assert body["features"]["stores"]["key_prefix"] == key_prefix


def test_metrics_in_prometheus_format(make_app: MakeApp, redis_url: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    extension = Resilience()
    breaker = extension.circuit_breaker("partner", failure_threshold=1)
    app, _ = make_app(extension, RESILIENCE_REDIS_URL=redis_url, RESILIENCE_ADMIN_TOKEN=TOKEN)

    def fail() -> None:
        raise OSError("down")

    with pytest.raises(OSError, match="down"):
        breaker.call(fail)
    client = app.test_client()
    assert client.get("/api/health/metrics").status_code == 401
    response = client.get("/api/health/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for sample in family.samples
    }
    assert samples[("resilience_circuit_state", (("circuit", "partner"), ("state", "OPEN")))] == 1.0
    assert (
        samples[("resilience_circuit_calls_total", (("circuit", "partner"), ("outcome", "failure")))] == 1.0
    )
    assert ("resilience_cache_lookups_total", (("result", "miss"),)) in samples
    assert ("resilience_audit_queue_size", ()) in samples
    assert ("resilience_idempotency_requests_total", (("outcome", "replay"),)) in samples


def test_sqlalchemy_database_uri_without_flask_sqlalchemy_is_used(make_app: MakeApp, sqlite_url: str) -> None:
    app, _ = make_app(SQLALCHEMY_DATABASE_URI=sqlite_url)
    response = app.test_client().get("/api/health")
    assert response.json is not None and response.json["checks"]["database"]["status"] == "up"
