"""The audit log against real SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy
from flask import Blueprint, Flask, abort, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import select, text

from flask_resilience import (
    AuditEntry,
    AuditEventType,
    AuditStatus,
    Resilience,
    audit_blueprint,
    audited,
    create_audit_log,
    get_audit_stats,
    log_auth_event,
    log_data_change,
    log_security_alert,
    reset_audit_stats,
    start_audit_log_flushing,
    stop_audit_log_flushing,
)
from flask_resilience.audit.migrate import downgrade, upgrade
from flask_resilience.audit.service import AppAudit, table_exists
from flask_resilience.audit.table import audit_log
from tests.clock import eventually
from tests.conftest import MakeApp

TOKEN = "audit-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="session")
def migrated_postgres(postgres_url: str) -> str:
    engine = sqlalchemy.create_engine(postgres_url)
    upgrade(engine)
    engine.dispose()
    return postgres_url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'audit.db'}"
        engine = sqlalchemy.create_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
        return
    postgres: str = request.getfixturevalue("migrated_postgres")
    engine = sqlalchemy.create_engine(postgres)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM resilience_audit_log"))
    engine.dispose()
    yield postgres


@pytest.fixture
def audit_app(make_app: MakeApp, database_url: str) -> tuple[Flask, Resilience]:
    return make_app(RESILIENCE_AUDIT_DATABASE_URI=database_url, RESILIENCE_ADMIN_TOKEN=TOKEN)


LIFECYCLE = ("CHAIN_OPENED", "CHAIN_CLOSED")  # a chain's own records, around the app's entries
RECORDED = audit_log.c.event_type.not_in(LIFECYCLE)


def rows(app: Flask) -> list[dict[str, Any]]:
    """The app's entries (without the chain's lifecycle records)."""
    audit = AppAudit.of(app)
    audit.writer.flush()
    with audit.engine().connect() as connection:
        query = select(audit_log).where(RECORDED).order_by(audit_log.c.chain_id, audit_log.c.seq)
        return [dict(row._mapping) for row in connection.execute(query)]


# -- the seed functions -------------------------------------------------------------------


def test_every_seed_function_records(audit_app: tuple[Flask, Resilience]) -> None:
    app, _ = audit_app
    with app.app_context():
        create_audit_log({"event_type": AuditEventType.EXPORT, "resource": "report", "resource_id": "r1"})
        create_audit_log(AuditEntry(event_type=AuditEventType.IMPORT, message="bulk import"))
        log_auth_event(AuditEventType.LOGIN, user_id=7, email="ana@example.com")
        log_auth_event(AuditEventType.LOGIN_FAILED, email="eve@example.com", status=AuditStatus.FAILURE)
        log_data_change(AuditEventType.UPDATE, "booking", 42, {"seats": {"old": 1, "new": 2}}, user_id="7")
        log_security_alert("too many failed logins", details={"ip": "10.0.0.1"})
        stats = get_audit_stats()
        assert (stats["total"], stats["success"], stats["failure"]) == (6, 4, 2)
        assert stats["by_user"] == {"7": 2}
        assert stats["by_event_type"]["LOGIN"] == 1
        assert stats["by_resource"] == {"report": 1, "booking": 1}
        reset_audit_stats()
        assert get_audit_stats()["total"] == 0
        with pytest.raises(TypeError, match="unknown"):
            create_audit_log({"event_type": "CREATE", "colour": "red"})
    stored = rows(app)
    assert [row["event_type"] for row in stored] == [
        "EXPORT", "IMPORT", "LOGIN", "LOGIN_FAILED", "UPDATE", "SECURITY_ALERT",
    ]  # fmt: skip
    login = stored[2]
    assert (login["user_id"], login["user_email"], login["status"]) == ("7", "ana@example.com", "SUCCESS")
    assert stored[4]["changes"] == {"seats": {"old": 1, "new": 2}}
    assert stored[5]["severity"] == "WARNING"
    assert [row["seq"] for row in stored] == [2, 3, 4, 5, 6, 7]  # seq 1: CHAIN_OPENED
    assert len({row["chain_id"] for row in stored}) == 1


def test_security_alerts_are_written_at_once(audit_app: tuple[Flask, Resilience]) -> None:
    app, _ = audit_app
    with app.app_context():
        log_security_alert("token reuse detected")
        engine = AppAudit.of(app).engine()
        with engine.connect() as connection:  # no flush: it must already be there
            assert connection.execute(select(audit_log.c.event_type).where(RECORDED)).scalars().all() == [
                "SECURITY_ALERT"
            ]


def test_start_and_stop_flushing(audit_app: tuple[Flask, Resilience]) -> None:
    app, _ = audit_app
    with app.app_context():
        start_audit_log_flushing()
        log_auth_event(AuditEventType.LOGOUT, user_id=1)
        stop_audit_log_flushing()
        engine = AppAudit.of(app).engine()
        with engine.connect() as connection:
            assert connection.execute(select(audit_log.c.event_type).where(RECORDED)).scalars().all() == [
                "LOGOUT"
            ]


def test_request_fields_are_filled_in(audit_app: tuple[Flask, Resilience]) -> None:
    app, extension = audit_app

    @extension.principal_loader
    def user() -> str:
        return "u-9"

    @app.post("/bookings/<booking_id>")
    def book(booking_id: str) -> ResponseReturnValue:
        log_data_change(AuditEventType.CREATE, "booking", booking_id, {"seat": "12A"})
        return "", 201

    app.test_client().post("/bookings/b-1", headers={"X-Request-ID": "req-77", "User-Agent": "pytest-agent"})
    (row,) = rows(app)
    assert (row["user_id"], row["method"], row["path"], row["endpoint"]) == (
        "u-9",
        "POST",
        "/bookings/b-1",
        "book",
    )
    assert (row["request_id"], row["user_agent"], row["ip"]) == ("req-77", "pytest-agent", "127.0.0.1")


# -- view decorators ---------------------------------------------------------------------------


def test_audited_records_status_body_query_and_exceptions(audit_app: tuple[Flask, Resilience]) -> None:
    app, _ = audit_app
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.post("/payments/<payment_id>")
    @audited(
        AuditEventType.PAYMENT_PROCESSED,
        resource="payment",
        resource_id_from="payment_id",
        include_body=True,
        include_query=True,
    )
    def pay(payment_id: str) -> ResponseReturnValue:
        if payment_id == "missing":
            abort(404)
        if payment_id == "crash":
            raise RuntimeError("gateway exploded")
        return jsonify(paid=True)

    client = app.test_client()
    client.post("/payments/p1?source=web", json={"amount": 10, "card_number": "4111 1111 1111 1111"})
    client.post("/payments/missing")
    client.post("/payments/crash")
    ok, missing, crash = rows(app)
    assert (ok["status"], ok["http_status"], ok["resource"], ok["resource_id"]) == (
        "SUCCESS",
        200,
        "payment",
        "p1",
    )
    assert ok["details"] == {
        "query": {"source": ["web"]},
        "body": {"amount": 10, "card_number": "[REDACTED]"},
    }
    assert (missing["status"], missing["http_status"]) == ("FAILURE", 404)
    assert (crash["status"], crash["http_status"], crash["severity"]) == ("FAILURE", 500, "ERROR")
    assert crash["details"] == {"error": "RuntimeError"}


def test_large_and_non_json_bodies_are_recorded_by_size(make_app: MakeApp, database_url: str) -> None:
    app, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=database_url, RESILIENCE_AUDIT_MAX_BODY_BYTES=64)

    @app.post("/upload")
    @audited(AuditEventType.IMPORT, include_body=True)
    def upload() -> ResponseReturnValue:
        return "", 204

    client = app.test_client()
    client.post("/upload", json={"data": "x" * 200})
    client.post("/upload", data=b"\x89PNG....", content_type="image/png")
    big, png = rows(app)
    assert big["details"]["body_omitted"]["reason"] == "too large"
    assert png["details"]["body_omitted"] == {"bytes": 8, "content_type": "image/png", "reason": "not JSON"}


def test_audited_async_views_record_their_outcome(audit_app: tuple[Flask, Resilience]) -> None:
    app, _ = audit_app

    @app.post("/async/<int:number>")
    @audited(AuditEventType.CREATE, resource="thing", resource_id_from="number")
    async def create(number: int) -> ResponseReturnValue:
        if number == 0:
            abort(403)
        return jsonify(created=number), 201

    client = app.test_client()
    assert client.post("/async/7").status_code == 201
    assert client.post("/async/0").status_code == 403
    created, refused = rows(app)
    assert (created["resource_id"], created["http_status"], created["status"]) == ("7", 201, "SUCCESS")
    assert (refused["http_status"], refused["status"]) == (403, "FAILURE")


def test_audit_blueprint_records_every_view(audit_app: tuple[Flask, Resilience]) -> None:
    app, _ = audit_app
    admin = Blueprint("admin", __name__, url_prefix="/api/admin")

    @admin.post("/users")
    def create_user() -> ResponseReturnValue:
        return jsonify(created=True), 201

    @admin.get("/users")
    def list_users() -> ResponseReturnValue:
        return jsonify([])

    app.register_blueprint(audit_blueprint(admin))

    @app.get("/public")
    def public() -> ResponseReturnValue:
        return "hi"

    client = app.test_client()
    client.post("/api/admin/users?notify=1", json={"email": "new@example.com", "password": "hunter2"})
    client.get("/api/admin/users")
    client.get("/public")
    created, listed = rows(app)
    assert (created["event_type"], created["http_status"], created["path"]) == (
        "ADMIN",
        201,
        "/api/admin/users",
    )
    assert created["details"]["body"] == {"email": "new@example.com", "password": "[REDACTED]"}
    assert created["details"]["query"] == {"notify": ["1"]}
    assert listed["method"] == "GET"


def test_audit_by_url_prefix(audit_app: tuple[Flask, Resilience]) -> None:
    app, extension = audit_app
    extension.audit_blueprint("/api/admin", AuditEventType.SETTINGS_CHANGED, include_body=False)

    @app.put("/api/admin/settings")
    def settings() -> ResponseReturnValue:
        return "", 204

    @app.get("/api/administrators")
    def not_under_the_prefix() -> ResponseReturnValue:
        return "", 204

    client = app.test_client()
    client.put("/api/admin/settings", json={"theme": "dark"})
    client.get("/api/administrators")
    (row,) = rows(app)
    assert (row["event_type"], row["http_status"], row["details"]) == ("SETTINGS_CHANGED", 204, None)
    with pytest.raises(ValueError, match="prefix"):
        extension.audit_blueprint("api/admin")


def test_audit_logging_can_be_switched_off(
    make_app: MakeApp, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENABLE_AUDIT_LOGGING", "false")
    app, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=database_url)
    with app.app_context():
        assert log_auth_event(AuditEventType.LOGIN, user_id=1) is None
    assert rows(app) == []


def test_circuit_changes_are_audited(audit_app: tuple[Flask, Resilience]) -> None:
    app, extension = audit_app
    breaker = extension.circuit_breaker("partner", failure_threshold=1)

    def fail() -> None:
        raise OSError("down")

    with pytest.raises(OSError, match="down"):
        breaker.call(fail)
    breaker.reset()
    opened, closed = rows(app)
    assert (opened["event_type"], opened["resource_id"], opened["severity"]) == (
        "CIRCUIT_OPENED",
        "partner",
        "WARNING",
    )
    assert closed["event_type"] == "CIRCUIT_CLOSED"


def test_shared_circuit_changes_are_audited_once_by_the_deciding_process(
    make_app: MakeApp, database_url: str, redis_url: str, key_prefix: str
) -> None:
    app, extension = make_app(
        RESILIENCE_AUDIT_DATABASE_URI=database_url,
        RESILIENCE_REDIS_URL=redis_url,
        RESILIENCE_KEY_PREFIX=key_prefix,
        RESILIENCE_BREAKER_STORAGE="redis",
    )
    breaker = extension.circuit_breaker("shared-partner", failure_threshold=1)

    def fail() -> None:
        raise OSError("down")

    with pytest.raises(OSError, match="down"):
        breaker.call(fail)
    breaker.reset()
    assert [row["event_type"] for row in rows(app)] == ["CIRCUIT_OPENED", "CIRCUIT_CLOSED"]


# -- buffering ------------------------------------------------------------------------------------


def test_flush_when_the_buffer_is_full(make_app: MakeApp, database_url: str) -> None:
    app, _ = make_app(
        RESILIENCE_AUDIT_DATABASE_URI=database_url,
        RESILIENCE_AUDIT_BUFFER_SIZE=5,
        RESILIENCE_AUDIT_FLUSH_INTERVAL=600_000,
    )
    audit = AppAudit.of(app)
    with app.app_context():
        for user in range(3):
            log_auth_event(AuditEventType.LOGIN, user_id=user)
        assert audit.writer.queue_size() == 4  # the chain's CHAIN_OPENED waits with them
        log_auth_event(AuditEventType.LOGIN, user_id=5)
    assert eventually(lambda: audit.writer.counts()["written"] == 5)


def test_flush_on_the_interval(make_app: MakeApp, database_url: str) -> None:
    app, _ = make_app(
        RESILIENCE_AUDIT_DATABASE_URI=database_url,
        RESILIENCE_AUDIT_BUFFER_SIZE=1000,
        RESILIENCE_AUDIT_FLUSH_INTERVAL=50,
    )
    audit = AppAudit.of(app)
    with app.app_context():
        log_auth_event(AuditEventType.LOGIN, user_id=1)
    # Far below the buffer size: only the interval can have flushed it.
    assert eventually(lambda: audit.writer.counts()["written"] == 2)  # and CHAIN_OPENED
    assert audit.writer.queue_size() == 0


# -- endpoints -----------------------------------------------------------------------------------


def test_audit_endpoints(audit_app: tuple[Flask, Resilience]) -> None:
    app, _ = audit_app
    with app.app_context():
        log_auth_event(AuditEventType.LOGIN, user_id="alice")
        log_auth_event(AuditEventType.LOGIN, user_id="bob")
        log_data_change(AuditEventType.DELETE, "trip", 3, None, user_id="alice")
    client = app.test_client()
    assert client.get("/api/health/audit").status_code == 401
    stats = client.get("/api/health/audit", headers=ADMIN).json
    assert stats is not None and stats["by_user"] == {"alice": 2, "bob": 1}
    assert client.get("/api/health/audit/entries").status_code == 401
    page = client.get("/api/health/audit/entries?user_id=alice&limit=1", headers=ADMIN).json
    assert page is not None and len(page["entries"]) == 1 and page["next_until"] is not None
    newest = page["entries"][0]
    assert newest["event_type"] == "DELETE"
    rest = client.get(
        f"/api/health/audit/entries?user_id=alice&until={page['next_until']}", headers=ADMIN
    ).json
    assert rest is not None and [entry["event_type"] for entry in rest["entries"]] == ["LOGIN"]
    assert client.get("/api/health/audit/entries?limit=0", headers=ADMIN).status_code == 400
    assert client.get("/api/health/audit/entries?since=yesterday", headers=ADMIN).status_code == 400
    assert client.post("/api/health/audit/reset").status_code == 401
    assert client.post("/api/health/audit/reset", headers=ADMIN).json == {"reset": True}
    dashboard = client.get("/api/health/dashboard", headers=ADMIN).json
    assert dashboard is not None and dashboard["features"]["audit"]["total"] == 0


def test_public_audit_stats_hide_users(make_app: MakeApp, database_url: str) -> None:
    app, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=database_url, RESILIENCE_HEALTH_PUBLIC=True)
    with app.app_context():
        log_auth_event(AuditEventType.LOGIN, user_id="alice")
    body = app.test_client().get("/api/health/audit").json
    assert body is not None and body["total"] == 1 and "by_user" not in body


# -- storage fallbacks and migrations -------------------------------------------------------------------


def test_sqlite_in_the_instance_folder_when_nothing_is_configured(make_app: MakeApp) -> None:
    app, _ = make_app()
    with app.app_context():
        log_auth_event(AuditEventType.LOGIN, user_id=1)
        engine = AppAudit.of(app).engine()
    assert str(engine.url).endswith("instance/resilience-audit.db")
    assert [row["event_type"] for row in rows(app)] == ["LOGIN"]


@pytest.mark.parametrize("database", ["sqlite_url", "postgres_url", "mysql_url"])
def test_migrations_up_and_down(request: pytest.FixtureRequest, database: str, tmp_path: Any) -> None:
    url: str = request.getfixturevalue(database)
    engine = sqlalchemy.create_engine(url)
    try:
        if table_exists(engine):  # the session's PostgreSQL schema is migrated for other tests
            downgrade(engine)
        assert not table_exists(engine)
        upgrade(engine)
        assert table_exists(engine)
        indexes = {index["name"] for index in sqlalchemy.inspect(engine).get_indexes("resilience_audit_log")}
        assert {"ix_resilience_audit_occurred_at", "ix_resilience_audit_request_id"} <= indexes
        downgrade(engine)
        assert not table_exists(engine)
    finally:
        if database == "postgres_url":
            upgrade(engine)
        engine.dispose()


def test_entries_round_trip_through_mariadb(make_app: MakeApp, mysql_url: str) -> None:
    engine = sqlalchemy.create_engine(mysql_url)
    upgrade(engine)
    try:
        app, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=mysql_url)
        with app.app_context():
            log_data_change(AuditEventType.UPDATE, "fare", 1, {"price": {"old": 10, "new": 12}}, user_id=1)
        (row,) = rows(app)
        assert row["changes"] == {"price": {"old": 10, "new": 12}}
        runner = app.test_cli_runner()
        result = runner.invoke(args=["resilience", "audit", "verify"])
        assert result.exit_code == 0, result.output
    finally:
        downgrade(engine)
        engine.dispose()


def test_cli_on_a_database_without_the_table(make_app: MakeApp, tmp_path: Any) -> None:
    app, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=f"sqlite:///{tmp_path / 'empty.db'}")
    result = app.test_cli_runner().invoke(args=["resilience", "audit", "verify"])
    assert result.exit_code == 1
    assert "run 'flask resilience db upgrade'" in result.output
    fresh, _ = make_app()  # the instance-folder fallback creates its table itself
    result = fresh.test_cli_runner().invoke(args=["resilience", "audit", "verify"])
    assert result.exit_code == 0, result.output
    assert "0 chains checked" in result.output


def test_export_formats(audit_app: tuple[Flask, Resilience]) -> None:
    app, _ = audit_app
    with app.app_context():
        log_auth_event(AuditEventType.LOGIN, user_id=1)
        log_auth_event(AuditEventType.LOGOUT, user_id=1)
    runner = app.test_cli_runner()
    jsonl = runner.invoke(args=["resilience", "audit", "export", "--format", "jsonl"])
    assert jsonl.exit_code == 0, jsonl.output
    exported = [json.loads(line)["event_type"] for line in jsonl.output.splitlines()]
    assert exported == ["CHAIN_OPENED", "LOGIN", "LOGOUT"]
    csv_out = runner.invoke(args=["resilience", "audit", "export", "--format", "csv", "--since", "1d"])
    lines = csv_out.output.splitlines()
    assert lines[0].startswith("id,chain_id,seq")
    assert len(lines) == 4


def test_mariadb_with_a_latin1_default_keeps_any_text(make_app: MakeApp, mysql_url: str) -> None:
    """A database created with a latin1 default (MySQL 5.7's, many hosted
    MariaDBs') must not quarantine an entry whose text is not latin1."""
    url = sqlalchemy.engine.make_url(mysql_url)
    database = f"{url.database}_latin1"
    admin = sqlalchemy.create_engine(url)
    with admin.begin() as connection:
        connection.execute(
            text(f"CREATE DATABASE `{database}` CHARACTER SET latin1 COLLATE latin1_swedish_ci")
        )
    latin1_url = url.set(database=database).render_as_string(hide_password=False)
    engine = sqlalchemy.create_engine(latin1_url)
    try:
        upgrade(engine)
        app, extension = make_app(RESILIENCE_AUDIT_DATABASE_URI=latin1_url)
        words = "Zoë → 東京 😀 \u0394"
        with app.app_context():
            log_data_change(
                AuditEventType.UPDATE, "fare", 1, {"note": {"old": "a", "new": words}}, user_id=words
            )
        (row,) = rows(app)
        assert row["changes"] == {"note": {"old": "a", "new": words}}
        assert row["user_id"] == words
        result = app.test_cli_runner().invoke(args=["resilience", "audit", "verify"])
        assert result.exit_code == 0, result.output
        assert "quarantined" not in result.output
        extension.shutdown()  # its closing entries go to this database, dropped below
    finally:
        engine.dispose()
        with admin.begin() as connection:
            connection.execute(text(f"DROP DATABASE `{database}`"))
        admin.dispose()
