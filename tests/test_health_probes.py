"""Health a load balancer can use: /live, /ready, the summary, critical dependencies, app checks."""

from __future__ import annotations

import logging
import multiprocessing
import threading
from typing import Any

import pytest
from flask import Flask

from flask_resilience import Resilience, __version__, idempotent
from flask_resilience.health.checks import default_critical
from flask_resilience.state import get_state
from tests.clock import eventually
from tests.conftest import MakeApp
from tests.services import free_port

TOKEN = "probes-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def _dead_redis() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def test_live_answers_200_with_every_dependency_down(make_app: MakeApp) -> None:
    dead_db = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"
    app, _ = make_app(
        RESILIENCE_REDIS_URL=_dead_redis(),
        RESILIENCE_AUDIT_DATABASE_URI=dead_db,
        RESILIENCE_HEALTH_CRITICAL="redis,database",
    )
    response = app.test_client().get("/api/health/live")
    assert (response.status_code, response.json) == (200, {"status": "ok"})
    assert response.headers["Cache-Control"] == "no-store"


def test_a_non_critical_redis_down_is_degraded_not_503(make_app: MakeApp, sqlite_url: str) -> None:
    app, _ = make_app(
        RESILIENCE_REDIS_URL=_dead_redis(),
        RESILIENCE_AUDIT_DATABASE_URI=sqlite_url,
        RESILIENCE_HEALTH_CRITICAL="",
    )
    client = app.test_client()
    ready = client.get("/api/health/ready")
    assert ready.status_code == 200
    assert ready.json is not None
    assert ready.json["status"] == "ready"
    assert ready.json["checks"]["redis"]["status"] == "down"
    assert ready.json["checks"]["redis"]["critical"] is False
    assert ready.json["checks"]["database"]["status"] == "up"
    assert ready.json["checks"]["database"]["latency_ms"] >= 0
    summary = client.get("/api/health")
    assert summary.status_code == 200
    assert summary.json is not None
    assert (summary.json["status"], summary.json["failing"]) == ("degraded", ["redis"])


def test_a_critical_dependency_down_makes_ready_503(make_app: MakeApp, sqlite_url: str) -> None:
    app, _ = make_app(
        RESILIENCE_REDIS_URL=_dead_redis(),
        RESILIENCE_AUDIT_DATABASE_URI=sqlite_url,
        RESILIENCE_HEALTH_CRITICAL=["redis"],
    )
    ready = app.test_client().get("/api/health/ready")
    assert ready.status_code == 503
    assert ready.json is not None
    assert (ready.json["status"], ready.json["failing"]) == ("unavailable", ["redis"])
    assert "detail" not in ready.json["checks"]["redis"]  # failure details are admin-only


def test_the_database_is_critical_by_default_only_without_a_spill_file(
    make_app: MakeApp, sqlite_url: str
) -> None:
    app, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=sqlite_url)
    assert "database" not in default_critical(get_state(app))
    app, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=sqlite_url, RESILIENCE_AUDIT_SPILL_PATH="off")
    assert "database" in default_critical(get_state(app))


def test_redis_is_critical_by_default_once_fail_closed_idempotency_is_used(
    make_app: MakeApp, redis_url: str
) -> None:
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url)

    @app.post("/pay")
    @idempotent()
    def pay() -> str:
        return "paid"

    assert "redis" in default_critical(get_state(app))
    no_redis, _ = make_app()
    assert "redis" not in default_critical(get_state(no_redis))


def _ready_status_in_a_fresh_process(redis_url: str) -> tuple[int, bool]:
    app = Flask("fresh")
    app.config.update(RESILIENCE_REDIS_URL=redis_url, RESILIENCE_AUDIT_SPILL_PATH="off")
    app.config["RESILIENCE_AUDIT_DATABASE_URI"] = "sqlite://"
    extension = Resilience(app)
    try:
        response = app.test_client().get("/api/health/ready")
        body: Any = response.json
        return response.status_code, body["checks"]["redis"]["critical"]
    finally:
        extension.shutdown()


def test_without_fail_closed_idempotency_redis_is_not_critical_by_default() -> None:
    # A process of its own: declaring @idempotent anywhere in this one marks it in use.
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        status, critical = pool.apply(_ready_status_in_a_fresh_process, (_dead_redis(),))
    assert (status, critical) == (200, False)


def test_the_apps_own_check_and_its_criticality(make_app: MakeApp) -> None:
    extension = Resilience()
    payments_up = {"value": True}

    @extension.health_check("payments-db", critical=True)
    def payments_db() -> bool:
        if not payments_up["value"]:
            raise ConnectionError("payments db refused the connection")
        return True

    @extension.health_check("search")
    def search() -> str:
        return "degraded"

    app, _ = make_app(extension, RESILIENCE_ADMIN_TOKEN=TOKEN)
    client = app.test_client()
    ready = client.get("/api/health/ready")
    assert ready.status_code == 200
    assert ready.json is not None
    assert ready.json["checks"]["payments-db"]["status"] == "up"
    assert ready.json["checks"]["search"] == {
        "status": "degraded",
        "critical": False,
        "latency_ms": ready.json["checks"]["search"]["latency_ms"],
    }
    assert client.get("/api/health").json["status"] == "degraded"  # type: ignore[index]
    payments_up["value"] = False
    down = client.get("/api/health/ready")
    assert down.status_code == 503
    assert down.json is not None and down.json["failing"] == ["payments-db"]
    admin = client.get("/api/health/ready", headers=ADMIN).json
    assert admin is not None and "refused" in admin["checks"]["payments-db"]["detail"]


def test_an_admin_check_that_raises_for_anonymous_callers_does_not_break_the_probes(
    make_app: MakeApp,
) -> None:
    # A common admin check (current_user.is_admin on Flask-Login's anonymous
    # user) raises for the load balancer's probe. The probes only ask it when
    # a dependency is down, so a Redis blip turned /ready into a 500 for the
    # whole fleet.
    extension = Resilience()

    @extension.admin_check
    def anonymous_has_no_role() -> bool:
        raise AttributeError("'AnonymousUserMixin' object has no attribute 'is_admin'")

    @extension.health_check("search")
    def search() -> bool:
        raise ConnectionError("search cluster unreachable")

    app, _ = make_app(extension)
    client = app.test_client()
    ready = client.get("/api/health/ready")
    assert ready.status_code == 200, ready.data
    assert ready.json is not None and "detail" not in ready.json["checks"]["search"]
    summary = client.get("/api/health")
    assert summary.status_code == 200 and summary.json is not None
    assert summary.json["status"] == "degraded" and "version" not in summary.json


def test_a_hanging_dependency_is_reported_down_after_the_check_timeout(make_app: MakeApp) -> None:
    # A database behind a black hole holds a connect for minutes: every probe
    # held a worker that long, and the probes piled up until the app stopped
    # answering. A check that takes longer than the timeout is down.
    extension = Resilience()
    released = threading.Event()

    @extension.health_check("payments-db", critical=True)
    def payments_db() -> bool:
        released.wait(30)
        return True

    @extension.health_check("search")
    def search() -> bool:
        return True

    app, _ = make_app(extension, RESILIENCE_HEALTH_CHECK_TIMEOUT=0.2)
    client = app.test_client()
    try:
        for _ in range(3):  # the hung check of an earlier probe must not hold later ones
            ready = client.get("/api/health/ready")
            assert ready.status_code == 503 and ready.json is not None
            assert ready.json["checks"]["payments-db"]["status"] == "down"
            assert ready.json["checks"]["payments-db"]["error"] == "TimeoutError"
            assert ready.json["checks"]["search"]["status"] == "up"
    finally:
        released.set()
    assert eventually(lambda: client.get("/api/health/ready").status_code == 200)


def test_the_apps_check_of_a_built_in_name_replaces_the_built_in(make_app: MakeApp, sqlite_url: str) -> None:
    # Both ran under one name: the report showed one of them while the other
    # decided the status, and "failing" could name the check twice.
    extension = Resilience()

    @extension.health_check("database", critical=True)
    def reporting_replica() -> bool:
        raise ConnectionError("replica lag over 10 minutes")

    app, _ = make_app(extension, RESILIENCE_AUDIT_DATABASE_URI=sqlite_url)
    ready = app.test_client().get("/api/health/ready")
    assert ready.status_code == 503 and ready.json is not None
    assert ready.json["failing"] == ["database"]
    assert ready.json["checks"]["database"]["status"] == "down"
    summary = app.test_client().get("/api/health").json
    assert summary is not None and summary["failing"] == ["database"]


def test_a_critical_name_that_matches_no_check_is_logged(
    make_app: MakeApp, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A typo ("databse") silently left every dependency non-critical.
    app, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=sqlite_url, RESILIENCE_HEALTH_CRITICAL="databse")
    client = app.test_client()
    with caplog.at_level(logging.WARNING, logger="flask_resilience.health"):
        for _ in range(3):
            assert client.get("/api/health/ready").status_code == 200
    warnings = [record.getMessage() for record in caplog.records if "databse" in record.getMessage()]
    assert len(warnings) == 1 and "database" in warnings[0]


def test_the_version_is_public_only_when_configured(make_app: MakeApp) -> None:
    app, _ = make_app(RESILIENCE_ADMIN_TOKEN=TOKEN)
    client = app.test_client()
    assert "version" not in client.get("/api/health").json  # type: ignore[operator]
    assert client.get("/api/health", headers=ADMIN).json["version"] == __version__  # type: ignore[index]
    shown, _ = make_app(RESILIENCE_HEALTH_SHOW_VERSION=True)
    assert shown.test_client().get("/api/health").json["version"] == __version__  # type: ignore[index]


def test_health_check_names_are_validated() -> None:
    extension = Resilience()
    for bad in ("", "has space", "x" * 65):
        try:
            extension.health_check(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")


def test_the_public_dashboard_hides_the_version(make_app: MakeApp) -> None:
    app, _ = make_app(RESILIENCE_ADMIN_TOKEN=TOKEN, RESILIENCE_HEALTH_PUBLIC=True)
    client = app.test_client()
    assert "version" not in client.get("/api/health/dashboard").json  # type: ignore[operator]
    assert client.get("/api/health/dashboard", headers=ADMIN).json["version"] == __version__  # type: ignore[index]
