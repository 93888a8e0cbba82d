"""Logging an operator can tune: one logger per feature, request ids, no SQL parameters."""

from __future__ import annotations

import importlib
import io
import logging
import logging.config
import pkgutil

import pytest
import sqlalchemy
from flask import Flask

import flask_resilience
from flask_resilience import Resilience
from flask_resilience.state import get_state
from tests.conftest import MakeApp

FEATURES = ("breaker", "cache", "audit", "idempotency", "health", "stores")


def _feature_modules_with_a_logger() -> list[tuple[str, str]]:
    """Every module of a feature package that logs, with its feature's logger name."""
    found = []
    for feature in FEATURES:
        package = importlib.import_module(f"flask_resilience.{feature}")
        for info in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
            if isinstance(getattr(importlib.import_module(info.name), "logger", None), logging.Logger):
                found.append((info.name, f"flask_resilience.{feature}"))
    return found


@pytest.mark.parametrize(("module", "logger_name"), _feature_modules_with_a_logger())
def test_each_feature_logs_through_its_own_child_logger(module: str, logger_name: str) -> None:
    logger = importlib.import_module(module).logger
    assert logger.name == logger_name
    assert logger.parent is logging.getLogger("flask_resilience")


def test_a_circuit_transition_is_logged_by_the_breaker_logger(caplog: pytest.LogCaptureFixture) -> None:
    extension = Resilience()
    breaker = extension.circuit_breaker("logged", failure_threshold=1)
    with caplog.at_level(logging.INFO, logger="flask_resilience"):
        breaker.force_open()
    assert [record.name for record in caplog.records] == ["flask_resilience.breaker"]


def test_request_id_filter_adds_the_request_id(make_app: MakeApp) -> None:
    app, _ = make_app()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(flask_resilience.RequestIdFilter())
    handler.setFormatter(logging.Formatter("%(request_id)s %(message)s"))
    logger = logging.getLogger("tests.request_ids")
    logger.addHandler(handler)
    logger.propagate = False
    try:

        @app.get("/work")
        def work() -> str:
            logger.warning("inside")
            return "ok"

        response = app.test_client().get("/work", headers={"X-Request-ID": "req-abc-123"})
        logger.warning("outside")
    finally:
        logger.removeHandler(handler)
    assert response.headers["X-Request-ID"] == "req-abc-123"
    assert stream.getvalue().splitlines() == ["req-abc-123 inside", "- outside"]


def test_the_readme_dict_config_example_works() -> None:
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {"request_id": {"()": "flask_resilience.RequestIdFilter"}},
            "handlers": {
                "console": {
                    "class": "logging.StreamHandler",
                    "filters": ["request_id"],
                    "formatter": "plain",
                }
            },
            "formatters": {
                "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"}
            },
            "loggers": {
                "flask_resilience": {"handlers": ["console"], "level": "INFO", "propagate": False},
                "flask_resilience.cache": {"level": "WARNING"},
            },
        }
    )
    try:
        assert logging.getLogger("flask_resilience.cache").getEffectiveLevel() == logging.WARNING
        assert logging.getLogger("flask_resilience.breaker").getEffectiveLevel() == logging.INFO
    finally:
        root = logging.getLogger("flask_resilience")
        root.handlers.clear()
        root.propagate = True
        root.setLevel(logging.NOTSET)
        logging.getLogger("flask_resilience.cache").setLevel(logging.NOTSET)


def test_sql_errors_never_carry_bind_parameters(make_app: MakeApp, postgres_url: str) -> None:
    app, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=postgres_url)
    with app.app_context():
        engine = get_state(app).database.engine()
        assert engine is not None
        statement = sqlalchemy.text("SELECT * FROM no_such_table WHERE email = :email")
        with pytest.raises(sqlalchemy.exc.DBAPIError) as failed, engine.connect() as connection:
            connection.execute(statement, {"email": "alice@example.com"})
    assert "no_such_table" in str(failed.value)
    assert "alice@example.com" not in str(failed.value)


def test_the_missing_redis_warning_is_logged_once_per_process(
    caplog: pytest.LogCaptureFixture, make_app: MakeApp
) -> None:
    make_app()  # whatever an earlier test logged, the process has been warned by now
    with caplog.at_level(logging.WARNING, logger="flask_resilience"):
        for _ in range(3):
            app = Flask("quiet")
            Resilience(app).shutdown()
    assert not [record for record in caplog.records if "RESILIENCE_REDIS_URL" in record.getMessage()]
