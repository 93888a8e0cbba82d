"""``Problem`` is an HTTP error: Flask, the app's handlers and the decorators treat it like abort()."""

from __future__ import annotations

import concurrent.futures
import copy
import itertools
import multiprocessing

import pytest
import sqlalchemy
from flask import Response, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from werkzeug.exceptions import HTTPException

from flask_resilience import Problem, audited, idempotent
from flask_resilience.audit.migrate import upgrade
from flask_resilience.audit.service import AppAudit
from flask_resilience.audit.table import audit_log
from flask_resilience.problems import PROBLEM_CONTENT_TYPE, TYPE_PREFIX
from tests.conftest import MakeApp


def _forbidden() -> Problem:
    return Problem(403, "no-entry", "Forbidden", "Not for you.", headers={"X-Why": "policy"})


def test_problem_is_an_http_exception_rendering_problem_json(make_app: MakeApp) -> None:
    problem = _forbidden()
    assert isinstance(problem, HTTPException)
    assert (problem.code, problem.status) == (403, 403)
    app, _ = make_app()

    @app.get("/refuse")
    def refuse() -> ResponseReturnValue:
        raise _forbidden()

    response = app.test_client().get("/refuse")
    assert response.status_code == 403
    assert response.content_type == PROBLEM_CONTENT_TYPE
    assert response.headers["X-Why"] == "policy"
    body = response.json
    assert body is not None
    assert (body["status"], body["type"]) == (403, "urn:flask-resilience:problem:no-entry")
    assert body["request_id"]


def test_the_apps_own_http_exception_handler_sees_a_problem(make_app: MakeApp) -> None:
    app, _ = make_app()
    seen: list[int | None] = []

    @app.errorhandler(HTTPException)
    def on_http_error(error: HTTPException) -> ResponseReturnValue:
        seen.append(error.code)
        return jsonify(handled=True), error.code or 500

    @app.get("/refuse")
    def refuse() -> ResponseReturnValue:
        raise _forbidden()

    response = app.test_client().get("/refuse")
    assert (response.status_code, response.json, seen) == (403, {"handled": True}, [403])


def test_audited_records_a_problem_as_the_answer_it_is(make_app: MakeApp, sqlite_url: str) -> None:
    engine = sqlalchemy.create_engine(sqlite_url)
    upgrade(engine)
    engine.dispose()
    app, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=sqlite_url, PROPAGATE_EXCEPTIONS=False)

    @app.post("/guarded")
    @audited("DATA_UPDATED")
    def guarded() -> ResponseReturnValue:
        raise _forbidden()

    response = app.test_client().post("/guarded")
    assert response.status_code == 403
    audit = AppAudit.of(app)
    audit.writer.flush()
    with audit.engine().connect() as connection:
        # the one entry (its chain's CHAIN_OPENED aside)
        (row,) = [
            dict(r._mapping)
            for r in connection.execute(select(audit_log).where(audit_log.c.event_type == "DATA_UPDATED"))
        ]
    assert (row["http_status"], row["status"], row["severity"]) == (403, "FAILURE", "INFO")


def test_idempotent_stores_and_replays_a_problem(make_app: MakeApp) -> None:
    app, _ = make_app(PROPAGATE_EXCEPTIONS=False)
    runs = itertools.count(1)

    @app.post("/orders")
    @idempotent()
    def order() -> Response:
        raise Problem(403, "no-entry", "Forbidden", f"refusal number {next(runs)}")

    client = app.test_client()
    first = client.post("/orders", headers={"Idempotency-Key": "k-1"})
    second = client.post("/orders", headers={"Idempotency-Key": "k-1"})
    assert (first.status_code, second.status_code) == (403, 403)
    assert second.headers["X-Idempotency-Replayed"] == "true"
    assert second.data == first.data
    assert next(runs) == 2  # the view ran once


def test_unknown_urls_and_methods_under_the_health_prefix_answer_problem_json(make_app: MakeApp) -> None:
    app, _ = make_app()

    @app.get("/elsewhere")
    def elsewhere() -> str:
        return "ok"

    client = app.test_client()
    missing = client.get("/api/health/no-such-thing")
    assert (missing.status_code, missing.content_type) == (404, PROBLEM_CONTENT_TYPE)
    wrong_method = client.delete("/api/health")
    assert (wrong_method.status_code, wrong_method.content_type) == (405, PROBLEM_CONTENT_TYPE)
    assert "GET" in wrong_method.headers["Allow"]
    # Outside the prefix the app keeps Flask's own pages.
    assert client.get("/nowhere").content_type.startswith("text/html")
    assert client.delete("/elsewhere").content_type.startswith("text/html")


@pytest.mark.parametrize("path", ["/api/health//live", "/api/health/cache/"])
def test_a_redirect_under_the_health_prefix_answers_json_not_html(make_app: MakeApp, path: str) -> None:
    """werkzeug redirects repeated or trailing slashes (308) with an HTML body."""
    app, _ = make_app()
    answer = app.test_client().get(path)
    assert answer.status_code in (308, 404), answer.status_code
    assert answer.content_type == PROBLEM_CONTENT_TYPE, answer.data[:80]
    if answer.status_code == 308:
        assert answer.headers["Location"].endswith(path.replace("//", "/").rstrip("/"))
        assert answer.get_json()["status"] == 308


def _refuse_in_a_worker() -> None:
    raise Problem(403, "quota-exceeded", "Quota exceeded", "No more bookings today.", extra={"limit": 5})


def test_a_problem_crosses_process_boundaries_and_copies() -> None:
    # An exception raised in a process pool (or copied) is rebuilt from its
    # pickle; Problem's own constructor signature made that a TypeError.
    spawn = multiprocessing.get_context("spawn")
    with (
        concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool,
        pytest.raises(Problem) as raised,
    ):
        pool.submit(_refuse_in_a_worker).result(timeout=60)
    problem = raised.value
    assert (problem.code, problem.type) == (403, TYPE_PREFIX + "quota-exceeded")
    assert problem.detail == "No more bookings today."
    assert problem.extra == {"limit": 5}
    copied = copy.copy(Problem(429, "slow-down", "Slow down", "Later.", headers={"Retry-After": "5"}))
    assert (copied.status, copied.headers) == (429, {"Retry-After": "5"})
